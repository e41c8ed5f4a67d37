"""The config blob under a token honours one byte range, as a stored layer does.

OCI distribution-spec, "Pulling blobs": a registry SHOULD support ``Range``
(RFC 9110 section 14). The config is served from memory, an injected layer from
a file (sendfile); for the same ``Range`` both answer alike: one ``bytes=`` range
is a ``206`` with the slice and ``Content-Range: bytes first-last/size`` (a
suffix longer than the blob, or a last byte past its end, is cut to the blob),
an unsatisfiable one is a ``416`` with ``Content-Range: bytes */size``, and what
is not honoured (several ranges, another unit, a malformed value, a HEAD) gets
the whole blob with ``200``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

MANIFEST_ACCEPT = [("Accept", components.OCI_MANIFEST), ("Accept", components.DOCKER_MANIFEST)]


def _layer() -> bytes:
    """A small valid gzip layer of incompressible bytes: a few KiB, so ranges have room."""
    payload = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(200))
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("opt/ranges/payload.bin")
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), mtime=0)


@dataclass(frozen=True)
class Blob:
    kind: str
    digest: str
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass(frozen=True)
class Served:
    stack: WaveStack
    name: str  # /v2/wt/<token>/<repository>
    blobs: dict[str, Blob]

    def get(self, kind: str, headers: list[tuple[str, str]], method: str = "GET") -> components.HttpResponse:
        return self.stack.http(method, f"{self.name}/blobs/{self.blobs[kind].digest}", headers)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, base_images: components.BaseImages
) -> Iterator[Served]:
    layer = _layer()
    config = pb.ContainerConfig(
        env=["RANGES=honoured"], layers=[pb.ContainerLayer(location="data:" + base64.b64encode(layer).decode())]
    )
    with WaveStack(tmp_path_factory.mktemp("config-range"), registries=[registry_route(registry)]).start() as wave:
        created = wave.create(base_images.ref("latest"), container_config=config)
        name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        manifest = json.loads(wave.http("GET", f"{name}/manifests/latest", MANIFEST_ACCEPT).body)
        blobs = {}
        for kind, digest in (("config", manifest["config"]["digest"]), ("injected", manifest["layers"][-1]["digest"])):
            whole = wave.http("GET", f"{name}/blobs/{digest}")
            assert whole.status == 200, (kind, whole.status)
            assert components.sha256_digest(whole.body) == digest
            blobs[kind] = Blob(kind, digest, whole.body)
        assert blobs["injected"].data == layer
        yield Served(wave, name, blobs)


# Each case: a Range header made from the blob's size, and the [first, last] bytes of the 206.
SATISFIABLE: dict[str, Callable[[int], tuple[str, tuple[int, int]]]] = {
    "first bytes": lambda n: (f"bytes=0-{n // 4}", (0, n // 4)),
    "open-ended": lambda n: (f"bytes={n // 2}-", (n // 2, n - 1)),
    "suffix": lambda n: (f"bytes=-{n // 3}", (n - n // 3, n - 1)),
    "suffix longer than the blob": lambda n: (f"bytes=-{2 * n}", (0, n - 1)),
    "last byte past the end": lambda n: (f"bytes={n - 10}-{3 * n}", (n - 10, n - 1)),
    "the last byte": lambda n: (f"bytes={n - 1}-{n - 1}", (n - 1, n - 1)),
}
UNSATISFIABLE: dict[str, Callable[[int], str]] = {
    "starts at the end": lambda n: f"bytes={n}-",
    "entirely past the end": lambda n: f"bytes={2 * n}-{3 * n}",
    "last before first": lambda n: f"bytes={n // 2}-{n // 4}",
}
IGNORED: dict[str, Callable[[int], str]] = {
    "several ranges": lambda n: "bytes=0-1,4-5",
    "another unit": lambda n: "items=0-5",
    "malformed": lambda n: "bytes=one-two",
}


@pytest.mark.parametrize("kind", ["config", "injected"])
@pytest.mark.parametrize("case", list(SATISFIABLE))
def test_one_range_is_206_with_the_slice(served: Served, kind: str, case: str) -> None:
    blob = served.blobs[kind]
    header, (first, last) = SATISFIABLE[case](blob.size)
    resp = served.get(kind, [("Range", header)])
    assert resp.status == 206, (header, resp.status, resp.headers)
    assert resp.body == blob.data[first : last + 1]
    assert resp.header("Content-Length") == str(last - first + 1)
    assert resp.header("Content-Range") == f"bytes {first}-{last}/{blob.size}"
    assert resp.header("Docker-Content-Digest") == blob.digest


@pytest.mark.parametrize("kind", ["config", "injected"])
@pytest.mark.parametrize("case", list(UNSATISFIABLE))
def test_an_unsatisfiable_range_is_416_with_the_size(served: Served, kind: str, case: str) -> None:
    blob = served.blobs[kind]
    header = UNSATISFIABLE[case](blob.size)
    resp = served.get(kind, [("Range", header)])
    assert resp.status == 416, (header, resp.status, resp.headers)
    assert resp.header("Content-Range") == f"bytes */{blob.size}"
    assert blob.data not in resp.body


@pytest.mark.parametrize("kind", ["config", "injected"])
def test_a_range_of_no_bytes_is_416(served: Served, kind: str) -> None:
    resp = served.get(kind, [("Range", "bytes=-0")])
    assert resp.status == 416
    assert json.loads(resp.body)["errors"][0]["code"] == "RANGE_INVALID"


@pytest.mark.parametrize("kind", ["config", "injected"])
@pytest.mark.parametrize("case", list(IGNORED))
def test_a_range_not_honoured_gets_the_whole_blob(served: Served, kind: str, case: str) -> None:
    blob = served.blobs[kind]
    resp = served.get(kind, [("Range", IGNORED[case](blob.size))])
    assert resp.status == 200, (case, resp.status, resp.headers)
    assert resp.body == blob.data
    assert resp.header("Content-Range") is None


@pytest.mark.parametrize("kind", ["config", "injected"])
def test_head_with_a_range_describes_the_whole_blob(served: Served, kind: str) -> None:
    blob = served.blobs[kind]
    resp = served.get(kind, [("Range", "bytes=0-9")], method="HEAD")
    assert (resp.status, resp.body) == (200, b"")
    assert resp.header("Content-Length") == str(blob.size)
    assert resp.header("Content-Range") is None
    assert resp.header("Docker-Content-Digest") == blob.digest


def test_slices_put_together_are_the_config(served: Served) -> None:
    """A runtime resuming a download asks for the rest: the pieces are the blob, digest and all."""
    blob = served.blobs["config"]
    cut = blob.size // 3
    head = served.get("config", [("Range", f"bytes=0-{cut - 1}")])
    rest = served.get("config", [("Range", f"bytes={cut}-")])
    assert (head.status, rest.status) == (206, 206)
    assert components.sha256_digest(head.body + rest.body) == blob.digest
