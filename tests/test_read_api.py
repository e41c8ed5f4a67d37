"""The read-only corners of the registry API: referrers, and names asked for without a token.

Against a real gateway and service (tests/stack.py) over a real registry; the
referrers answers follow the OCI distribution spec 1.1 ("Listing Referrers").
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.image.manifest import MediaType
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

OCI_INDEX = str(MediaType.OCI_INDEX)
EMPTY_INDEX = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
UNKNOWN_TOKEN = "abcdefabcdef"  # noqa: S105 - a well-formed token no service handed out


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("read-api"), registries=[registry_route(registry)]).start() as wave:
        yield wave


@pytest.fixture(scope="module")
def created(stack: WaveStack, base_images: components.BaseImages) -> pb.CreateContainerResponse:
    return stack.create(base_images.ref("latest"))


def repository_path(created: pb.CreateContainerResponse) -> str:
    """``/v2/wt/<token>/<image path>``: the target image without its host and tag."""
    return "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]


def oci_error(resp: components.HttpResponse) -> tuple[int, str, str]:
    entry = resp.json()["errors"][0]
    return resp.status, entry["code"], entry["message"]


def test_referrers_of_the_manifest_are_an_empty_index(stack: WaveStack, created: pb.CreateContainerResponse) -> None:
    path = f"{repository_path(created)}/referrers/{created.target_digest}"
    get = stack.http("GET", path)
    assert get.status == 200, get.body
    assert get.header("Content-Type") == OCI_INDEX
    assert get.json() == EMPTY_INDEX
    assert get.header("Content-Length") == str(len(get.body))
    assert get.header("Docker-Distribution-API-Version") == "registry/2.0"
    assert get.header("OCI-Filters-Applied") is None  # no filter was asked for

    head = stack.http("HEAD", path)
    assert (head.status, head.body) == (200, b"")
    for header in ("Content-Type", "Content-Length", "Docker-Distribution-API-Version"):
        assert head.header(header) == get.header(header), header


def test_referrers_of_a_digest_the_image_lacks_are_an_empty_index(
    stack: WaveStack, created: pb.CreateContainerResponse
) -> None:
    # A referrer may be pushed before its subject, so the spec answers any digest.
    resp = stack.http("GET", f"{repository_path(created)}/referrers/sha256:{'0' * 64}")
    assert (resp.status, resp.json()) == (200, EMPTY_INDEX)


def test_artifact_type_filter_is_reported_applied(stack: WaveStack, created: pb.CreateContainerResponse) -> None:
    path = f"{repository_path(created)}/referrers/{created.target_digest}"
    filtered = stack.http("GET", f"{path}?artifactType=application/vnd.example.sbom.v1")
    assert filtered.status == 200, filtered.body
    assert filtered.header("OCI-Filters-Applied") == "artifactType"
    assert filtered.header("Content-Type") == OCI_INDEX
    assert filtered.json() == EMPTY_INDEX
    head = stack.http("HEAD", f"{path}?artifactType=application/vnd.example.sbom.v1")
    assert (head.status, head.header("OCI-Filters-Applied")) == (200, "artifactType")
    # An empty value names no artifact type: nothing was filtered on.
    assert stack.http("GET", f"{path}?artifactType=").header("OCI-Filters-Applied") is None


@pytest.mark.parametrize("digest", ["latest", "sha256:abc", f"md5:{'0' * 32}", f"sha256:{'A' * 64}"])
def test_referrers_of_a_bad_digest_is_digest_invalid(
    stack: WaveStack, created: pb.CreateContainerResponse, digest: str
) -> None:
    resp = stack.http("GET", f"{repository_path(created)}/referrers/{digest}")
    status, code, message = oci_error(resp)
    assert (status, code) == (400, "DIGEST_INVALID")
    assert message.startswith("digest: "), message


def test_unknown_token_answers_as_the_manifests_route(stack: WaveStack, created: pb.CreateContainerResponse) -> None:
    image_path = created.target_image.split("/", 3)[3].rsplit(":", 1)[0]
    for token, name in ((UNKNOWN_TOKEN, image_path), (created.container_token, "library/alpine")):
        repository = f"/v2/wt/{token}/{name}"
        manifest = stack.http("GET", f"{repository}/manifests/latest")
        referrers = stack.http("GET", f"{repository}/referrers/{created.target_digest}")
        assert oci_error(referrers) == oci_error(manifest)
        assert oci_error(referrers)[:2] == (404, "NAME_UNKNOWN")
    # The token is looked up first, as on the manifests route: a bad digest does not change the answer.
    unknown = stack.http("GET", f"/v2/wt/{UNKNOWN_TOKEN}/{image_path}/referrers/not-a-digest")
    assert oci_error(unknown)[:2] == (404, "NAME_UNKNOWN")


@pytest.mark.parametrize(
    "path",
    [
        "/v2/library/busybox/manifests/latest",
        f"/v2/library/busybox/blobs/sha256:{'0' * 64}",
        "/v2/library/busybox/tags/list",
        f"/v2/library/busybox/referrers/sha256:{'0' * 64}",
    ],
)
def test_a_name_without_a_token_is_told_so(stack: WaveStack, path: str) -> None:
    status, code, message = oci_error(stack.http("GET", path))
    assert (status, code) == (404, "NAME_UNKNOWN")
    assert "'library/busybox' has no token" in message, message
    assert "/v2/wt/<token>/<image path>" in message
    assert "CreateContainer" in message
    assert "wave-grpc augment" in message
    head = stack.http("HEAD", path)
    assert (head.status, head.body) == (404, b"")


def test_a_token_inside_an_untokened_name_is_not_echoed(stack: WaveStack) -> None:
    # The message is logged too, and tokens never reach a log: the name is echoed redacted.
    status, code, message = oci_error(stack.http("GET", f"/v2/mirror/wt/{UNKNOWN_TOKEN}/busybox/manifests/latest"))
    assert (status, code) == (404, "NAME_UNKNOWN")
    assert "has no token" in message
    assert UNKNOWN_TOKEN not in message


def test_a_malformed_path_is_not_said_to_lack_a_token(stack: WaveStack) -> None:
    # An upper-case name is not a repository name at all, with or without a token.
    for path in ("/v2/Library/BusyBox/manifests/latest", f"/v2/wt/{UNKNOWN_TOKEN}/Library/manifests/latest"):
        status, code, message = oci_error(stack.http("GET", path))
        assert (status, code) == (404, "NAME_UNKNOWN")
        assert "has no token" not in message, (path, message)
