"""The OCI distribution-spec conformance suite's pull checks, read-only, as tests against real tokens.

The redesigned suite (``conformance/`` of opencontainers/distribution-spec, a Go
program) cannot be built here, so each check it makes of a read-only registry is
a test of ours, against a real gateway and service (tests/stack.py) over a real
``docker-registry``. A read-only run of the suite would be configured with
``OCI_REPO1=wt/<token>/library/busybox``, ``OCI_API_PUSH=false``, deletes
disabled, ``OCI_VERSION=1.1+dev`` (a ``Docker-Content-Digest`` is then required
on manifests and blobs, as the spec's MUST says) and the preloaded data::

    OCI_RO_DATA_TAGS       the token's tag
    OCI_RO_DATA_MANIFESTS  the top-level manifest and, for an index, each child
    OCI_RO_DATA_BLOBS      the config, the base layers, the injected layer
    OCI_RO_DATA_REFERRERS  each manifest digest

That data is what ``served`` collects for four tokens, one per kind of source
(``latest`` OCI manifest, ``multi`` OCI index, ``v2s2`` Docker schema 2,
``dockerlist`` Docker manifest list; the two indexes for linux/amd64 and
linux/arm64). Every token carries an injected ``data:`` layer, so blobs of all
three kinds are checked: the config (served from memory), a base layer
(answered ``307`` to the source registry; followed as a client does) and the
injected layer (served from the layer store).

Suite check (its results tree, under "OCI Conformance Test/") -> test here:

Run by the suite in read-only mode:

* ``ping``                                    -> test_ping
* ``empty/tag list``                          -> test_tag_list
* ``empty/referrers``                         -> test_referrers_of_an_unknown_subject
* ``<read-only data>/tag-list``               -> test_tag_list (the preloaded tag is listed)
* ``<read-only data>/head/manifest-head-by-tag``    -> test_manifest_head_by_tag
* ``<read-only data>/head/manifest-head-by-digest`` -> test_manifest_head_by_digest
* ``<read-only data>/head/blob-head``         -> test_blob_head (one blob of each kind),
  test_every_preloaded_blob_is_served (every blob of every manifest)
* ``<read-only data>/pull/manifest-by-tag``   -> test_manifest_get_by_tag
* ``<read-only data>/pull/manifest-by-digest``-> test_manifest_get_by_digest
* ``<read-only data>/pull/blob-get``          -> test_blob_get, test_every_preloaded_blob_is_served
* ``<read-only data>/referrers``              -> test_referrers_of_each_manifest
* ``missing-manifest/by-digest``              -> test_missing_manifest_by_digest
* ``missing-manifest/by-tag``                 -> test_missing_manifest_by_tag
* ``invalid-digest-format/manifest-get``      -> test_invalid_digest_format

Run by the suite only in branches that also push (skipped in read-only mode), held
here against the preloaded blobs and tag, since the spec asks them of any registry:

* ``sha256 blobs/get-missing``, ``sha512 blobs/get-missing`` -> test_blob_get_missing
* ``sha256 blobs/range requests/range 500-1499``, ``range 500-``, ``range -500``,
  ``range 2000-5000``, ``range 500-0``, ``range 5000-10000``  -> test_blob_range
  (same shapes, offsets scaled to each blob's size; the suite's blob is 2048 bytes)
* ``<data>/referrers`` filtered by ``artifactType`` -> test_referrers_artifact_type_filter
* ``<data>/tag-list`` with ``last`` (only with two tags or more) -> test_tag_list_pagination
  (with the spec's ``n`` too)

What the suite does not check but the spec's "Error Codes" asks of the same
answers: every 404 above carries ``{"errors": [{"code", "message", ...}]}`` with
the spec's code (``MANIFEST_UNKNOWN``, ``BLOB_UNKNOWN``; ``oci_error_codes``), and a
repository the registry does not know is ``NAME_UNKNOWN``
(test_unknown_repository_is_name_unknown).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import http.client
import io
import json
import re
import tarfile
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

pytestmark = pytest.mark.components

TAGS = ("latest", "multi", "v2s2", "dockerlist")
KINDS = ("config", "base", "injected")
#: What the suite sends on every manifest request: two Accept headers.
SUITE_ACCEPT = [("Accept", components.OCI_INDEX), ("Accept", components.OCI_MANIFEST)]
#: The suite's artifact type (mtExampleConf1).
ARTIFACT_TYPE = "application/vnd.example.oci.conformance.v1"
#: The spec's table of error codes ("Error Codes").
SPEC_ERROR_CODES = frozenset(
    {
        "BLOB_UNKNOWN",
        "BLOB_UPLOAD_INVALID",
        "BLOB_UPLOAD_UNKNOWN",
        "DIGEST_INVALID",
        "MANIFEST_BLOB_UNKNOWN",
        "MANIFEST_INVALID",
        "MANIFEST_UNKNOWN",
        "NAME_INVALID",
        "NAME_UNKNOWN",
        "SIZE_INVALID",
        "UNAUTHORIZED",
        "DENIED",
        "UNSUPPORTED",
        "TOOMANYREQUESTS",
    }
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
UNKNOWN_TOKEN = "c0ffeec0ffee"  # noqa: S105 - a well-formed token no service handed out


def _pseudo_random(size: int, seed: bytes) -> bytes:
    out = b""
    block = seed
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return out[:size]


def _injected_layer() -> bytes:
    """A small valid layer whose gzip does not shrink (incompressible payload), so ranges have room."""
    raw = io.BytesIO()
    payload = _pseudo_random(6000, b"wave-grpc conformance layer")
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("opt/conformance/payload.bin")
        info.size, info.mode, info.mtime = len(payload), 0o644, 0
        tar.addfile(info, io.BytesIO(payload))
    return gzip.compress(raw.getvalue(), mtime=0)


LAYER = _injected_layer()
LAYER_DIGEST = components.sha256_digest(LAYER)


@dataclass(frozen=True)
class Blob:
    kind: str  # config | base | injected
    digest: str
    size: int


@dataclass(frozen=True)
class Served:
    """One token's read-only data, as an operator would list it for the suite's OCI_RO_DATA_*."""

    tag: str
    repository: str  # wt/<token>/library/busybox
    top: str  # the digest the tag names
    manifests: dict[str, bytes]  # digest -> bytes, the top-level first
    blobs: dict[str, Blob]  # kind -> a blob of that kind (of the first image manifest)
    all_blobs: tuple[Blob, ...] = field(default=())

    def path(self, tail: str) -> str:
        return f"/v2/{self.repository}/{tail}"


def _request(method: str, url: str, headers: Sequence[tuple[str, str]]) -> components.HttpResponse:
    """``http_request``, except that an error answer shorter than its Content-Length keeps what came.

    Only for the source registry a redirect leads to: docker-registry 2.8 answers a
    ``416`` with the blob's Content-Length and a one-line body. That is its quirk, not
    the gateway's; the status is what the suite's range check reads.
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname is not None
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
    try:
        conn.putrequest(method, parts.path + (f"?{parts.query}" if parts.query else ""), skip_accept_encoding=True)
        for key, value in headers:
            conn.putheader(key, value)
        conn.endheaders()
        resp = conn.getresponse()
        try:
            data = resp.read()
        except http.client.IncompleteRead as exc:
            if resp.status < 400:
                raise
            data = exc.partial
        return components.HttpResponse(resp.status, list(resp.getheaders()), data)
    finally:
        conn.close()


def follow(
    stack: WaveStack, method: str, path: str, headers: Sequence[tuple[str, str]] = ()
) -> tuple[components.HttpResponse, list[int]]:
    """A request as the suite's Go client sends it: redirects followed (same method, same headers).

    Answers the final response and the redirect statuses met on the way. The
    gateway's own answers are read strictly (``http_request``).
    """
    url = f"{stack.gateway_url}{path}"
    hops: list[int] = []
    for _ in range(10):
        if urllib.parse.urlsplit(url).netloc == stack.gateway_host:
            resp = components.http_request(method, url, headers=headers)
        else:
            resp = _request(method, url, headers)
        location = resp.header("Location")
        if resp.status not in REDIRECT_STATUSES or location is None:
            return resp, hops
        hops.append(resp.status)
        url = urllib.parse.urljoin(url, location)
    raise AssertionError(f"{method} {path}: more than 10 redirects")


def detect_media_type(body: bytes) -> str:
    """What the suite expects in Content-Type: the manifest's ``mediaType``, else an OCI image manifest."""
    media_type = json.loads(body).get("mediaType")
    return media_type if isinstance(media_type, str) and media_type else components.OCI_MANIFEST


def oci_error_codes(resp: components.HttpResponse) -> list[str]:
    """The codes of a spec-shaped error body (spec "Error Codes"); fails on any other shape."""
    try:
        body = json.loads(resp.body)
    except ValueError:
        raise AssertionError(f"{resp.status} body is not JSON: {resp.body[:200]!r}") from None
    assert isinstance(body, dict), body
    errors = body.get("errors")
    assert isinstance(errors, list), body
    assert errors, body
    codes: list[str] = []
    for entry in errors:
        assert isinstance(entry, dict), entry
        code = entry.get("code")
        assert isinstance(code, str), entry
        assert re.fullmatch(r"[A-Z_]+", code), entry
        assert code in SPEC_ERROR_CODES, entry
        if "message" in entry:
            assert isinstance(entry["message"], str), entry
        codes.append(code)
    return codes


def assert_not_found(resp: components.HttpResponse, code: str) -> None:
    assert resp.status == 404, (resp.status, resp.body[:300])
    assert code in oci_error_codes(resp), resp.body


def sha256_of(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    with WaveStack(tmp_path_factory.mktemp("conformance"), registries=[registry_route(registry)]).start() as wave:
        yield wave


def _discover(stack: WaveStack, tag: str, created: pb.CreateContainerResponse) -> Served:
    """The token's read-only data, read with every manifest type accepted (as an operator would)."""
    repository = created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    accept = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]

    def get(ref: str) -> bytes:
        resp = stack.http("GET", f"/v2/{repository}/manifests/{ref}", accept)
        assert resp.status == 200, (ref, resp.body[:300])
        return resp.body

    top_body = get(tag)
    top = components.sha256_digest(top_body)
    manifests = {top: top_body}
    doc = json.loads(top_body)
    images = [doc]
    if "manifests" in doc:
        images = []
        for child in doc["manifests"]:
            body = get(child["digest"])
            assert components.sha256_digest(body) == child["digest"]
            manifests[child["digest"]] = body
            images.append(json.loads(body))
    all_blobs: dict[str, Blob] = {}
    first: dict[str, Blob] = {}
    for i, image in enumerate(images):
        layers = image["layers"]
        assert layers[-1]["digest"] == LAYER_DIGEST, "the injected layer is the last one"
        found = [Blob("config", image["config"]["digest"], image["config"]["size"])]
        found += [Blob("base", d["digest"], d["size"]) for d in layers[:-1]]
        found.append(Blob("injected", layers[-1]["digest"], layers[-1]["size"]))
        for blob in found:
            all_blobs.setdefault(blob.digest, blob)
            if i == 0:
                first.setdefault(blob.kind, blob)
    return Served(tag, repository, top, manifests, first, tuple(all_blobs.values()))


@pytest.fixture(scope="module")
def served_by_tag(stack: WaveStack, base_images: components.BaseImages) -> dict[str, Served]:
    layer = pb.ContainerLayer(location="data:" + base64.b64encode(LAYER).decode())
    out: dict[str, Served] = {}
    for tag in TAGS:
        platform = "linux/amd64,linux/arm64" if base_images.by_tag(tag).is_index else ""
        created = stack.create(
            base_images.ref(tag),
            container_platform=platform,
            container_config=pb.ContainerConfig(layers=[layer]),
        )
        out[tag] = _discover(stack, tag, created)
    return out


@pytest.fixture(params=TAGS)
def served(request: pytest.FixtureRequest, served_by_tag: dict[str, Served]) -> Served:
    tag: str = request.param
    return served_by_tag[tag]


# --- ping -------------------------------------------------------------------------------------------


def test_ping(stack: WaveStack) -> None:
    """``ping``: ``GET /v2/``; spec "Determining Support": 200 means the registry implements the spec."""
    resp = stack.http("GET", "/v2/")
    assert resp.status == 200, resp.body


# --- tags -------------------------------------------------------------------------------------------


def test_tag_list(stack: WaveStack, served: Served) -> None:
    """``empty/tag list`` (200 and a tag list) and ``<read-only data>/tag-list`` (the preloaded tag is in it)."""
    resp = stack.http("GET", served.path("tags/list"))
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["name"] == served.repository
    assert served.tag in body["tags"]
    assert body["tags"] == sorted(body["tags"])  # lexical order
    assert body == {"name": served.repository, "tags": [served.tag]}


def test_tag_list_pagination(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/tag-list`` with ``last`` (the suite asks it with two tags or more) and the spec's ``n``."""

    def tags(query: str) -> tuple[list[str], str | None]:
        resp = stack.http("GET", served.path(f"tags/list?{query}"))
        assert resp.status == 200, (query, resp.body)
        listed: list[str] = resp.json()["tags"]
        return listed, resp.header("Link")

    # "last": up to n tags after it, itself excluded.
    assert tags(f"last={served.tag}")[0] == []
    assert tags("last=0")[0] == [served.tag]  # "0" sorts before any lower-case tag
    assert tags(f"n=1&last={served.tag}")[0] == []
    # "n": when n is zero, an empty list and no Link header.
    assert tags("n=0") == ([], None)
    assert tags("n=1")[0] == [served.tag]
    # Fewer than n only because the repository has fewer tags.
    assert tags("n=5")[0] == [served.tag]


# --- referrers --------------------------------------------------------------------------------------


def _assert_empty_referrers(resp: components.HttpResponse) -> dict[str, Any]:
    assert resp.status == 200, resp.body
    # The suite compares the header value as a whole.
    assert resp.header("Content-Type") == components.OCI_INDEX
    index: dict[str, Any] = resp.json()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == components.OCI_INDEX
    assert index["manifests"] == []  # nothing can push a referrer to an ephemeral name
    return index


def test_referrers_of_an_unknown_subject(stack: WaveStack, served: Served) -> None:
    """``empty/referrers``: a subject nobody pushed still answers 200 and an (empty) OCI index."""
    _assert_empty_referrers(stack.http("GET", served.path(f"referrers/{sha256_of('no such subject')}")))


def test_referrers_of_each_manifest(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/referrers``: the referrers of each preloaded manifest are a valid OCI index."""
    for digest in served.manifests:
        _assert_empty_referrers(stack.http("GET", served.path(f"referrers/{digest}")))


def test_referrers_artifact_type_filter(stack: WaveStack, served: Served) -> None:
    """``<data>/referrers`` filtered: ``?artifactType=`` applied is reported in ``OCI-Filters-Applied``."""
    resp = stack.http("GET", served.path(f"referrers/{served.top}?artifactType={ARTIFACT_TYPE}"))
    index = _assert_empty_referrers(resp)
    applied = [f.strip() for f in (resp.header("OCI-Filters-Applied") or "").split(",")]
    assert "artifactType" in applied
    assert all(d.get("artifactType") == ARTIFACT_TYPE for d in index["manifests"])


# --- manifests --------------------------------------------------------------------------------------


def _assert_manifest_headers(resp: components.HttpResponse, digest: str, body: bytes) -> None:
    """What the suite checks of a manifest it knows, and the spec's MUSTs for GET and HEAD."""
    assert resp.status == 200, resp.body[:300]
    assert resp.header("Docker-Content-Digest") == digest
    assert resp.header("Content-Type") == detect_media_type(body)
    assert resp.header("Content-Length") == str(len(body))


def test_manifest_get_by_tag(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/pull/manifest-by-tag``: 200, the manifest the tag names, its digest and type."""
    resp = stack.http("GET", served.path(f"manifests/{served.tag}"), SUITE_ACCEPT)
    assert resp.status == 200, resp.body[:300]
    assert components.sha256_digest(resp.body) == served.top
    assert resp.body == served.manifests[served.top]
    _assert_manifest_headers(resp, served.top, resp.body)


def test_manifest_head_by_tag(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/head/manifest-head-by-tag``: 200, no body, digest and size in the headers."""
    resp = stack.http("HEAD", served.path(f"manifests/{served.tag}"), SUITE_ACCEPT)
    assert resp.body == b""
    _assert_manifest_headers(resp, served.top, served.manifests[served.top])


def test_manifest_get_by_digest(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/pull/manifest-by-digest``: each preloaded manifest, byte for byte."""
    for digest, body in served.manifests.items():
        resp = stack.http("GET", served.path(f"manifests/{digest}"), SUITE_ACCEPT)
        assert resp.status == 200, (digest, resp.body[:300])
        assert components.sha256_digest(resp.body) == digest
        assert resp.body == body
        _assert_manifest_headers(resp, digest, body)


def test_manifest_head_by_digest(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/head/manifest-head-by-digest``: each preloaded manifest exists."""
    for digest, body in served.manifests.items():
        resp = stack.http("HEAD", served.path(f"manifests/{digest}"), SUITE_ACCEPT)
        assert resp.body == b"", digest
        _assert_manifest_headers(resp, digest, body)


def test_missing_manifest_by_digest(stack: WaveStack, served: Served) -> None:
    """``missing-manifest/by-digest``: 404 (spec "Pulling manifests"), MANIFEST_UNKNOWN."""
    path = served.path(f"manifests/{sha256_of('no such manifest')}")
    assert_not_found(stack.http("GET", path, SUITE_ACCEPT), "MANIFEST_UNKNOWN")
    head = stack.http("HEAD", path, SUITE_ACCEPT)
    assert (head.status, head.body) == (404, b"")


def test_missing_manifest_by_tag(stack: WaveStack, served: Served) -> None:
    """``missing-manifest/by-tag``: a tag the repository lacks is 404, MANIFEST_UNKNOWN."""
    path = served.path("manifests/missing-a1b2c3d4e5f6g7h8i9j0")
    assert_not_found(stack.http("GET", path, SUITE_ACCEPT), "MANIFEST_UNKNOWN")
    head = stack.http("HEAD", path, SUITE_ACCEPT)
    assert (head.status, head.body) == (404, b"")


def test_invalid_digest_format(stack: WaveStack, served: Served) -> None:
    """``invalid-digest-format/manifest-get``: ``sha256:baddigeststring`` is 404 or 400, a spec error body."""
    resp = stack.http("GET", served.path("manifests/sha256:baddigeststring"), SUITE_ACCEPT)
    assert resp.status in (400, 404), resp.body
    codes = oci_error_codes(resp)
    assert {"DIGEST_INVALID", "MANIFEST_UNKNOWN"} & set(codes), codes


# --- blobs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_blob_head(stack: WaveStack, served: Served, kind: str) -> None:
    """``<read-only data>/head/blob-head``: 200 (after redirects), no body, digest and size in the headers."""
    blob = served.blobs[kind]
    resp, hops = follow(stack, "HEAD", served.path(f"blobs/{blob.digest}"))
    assert hops == ([307] if kind == "base" else [])
    assert resp.status == 200, resp.body[:300]
    assert resp.body == b""
    assert resp.header("Docker-Content-Digest") == blob.digest
    assert resp.header("Content-Length") == str(blob.size)


@pytest.mark.parametrize("kind", KINDS)
def test_blob_get(stack: WaveStack, served: Served, kind: str) -> None:
    """``<read-only data>/pull/blob-get``: 200 (after redirects), the bytes of the digest, its headers."""
    blob = served.blobs[kind]
    resp, hops = follow(stack, "GET", served.path(f"blobs/{blob.digest}"))
    assert hops == ([307] if kind == "base" else [])
    assert resp.status == 200, resp.body[:300]
    assert components.sha256_digest(resp.body) == blob.digest
    assert len(resp.body) == blob.size
    assert resp.header("Docker-Content-Digest") == blob.digest
    assert resp.header("Content-Length") == str(blob.size)


def test_every_preloaded_blob_is_served(stack: WaveStack, served: Served) -> None:
    """``<read-only data>/head/blob-head`` and ``pull/blob-get`` over the whole OCI_RO_DATA_BLOBS list."""
    for blob in served.all_blobs:
        head, _ = follow(stack, "HEAD", served.path(f"blobs/{blob.digest}"))
        assert (head.status, head.header("Content-Length")) == (200, str(blob.size)), blob
        get, _ = follow(stack, "GET", served.path(f"blobs/{blob.digest}"))
        assert get.status == 200, blob
        assert components.sha256_digest(get.body) == blob.digest, blob


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param(sha256_of("no such blob"), id="sha256"),
        pytest.param("sha512:" + hashlib.sha512(b"no such blob").hexdigest(), id="sha512"),
    ],
)
def test_blob_get_missing(stack: WaveStack, served: Served, digest: str) -> None:
    """``sha256 blobs/get-missing`` and ``sha512 blobs/get-missing``: 404 (spec "Pulling blobs"), BLOB_UNKNOWN."""
    path = served.path(f"blobs/{digest}")
    assert_not_found(stack.http("GET", path), "BLOB_UNKNOWN")
    head = stack.http("HEAD", path)
    assert (head.status, head.body) == (404, b"")


@dataclass(frozen=True)
class RangeCase:
    """One of the suite's range requests, scaled to a blob of ``size`` bytes."""

    name: str

    def request(self, size: int) -> tuple[str, tuple[int, int] | None]:
        """The Range header, and the [first, last] bytes of a 206 (None: 416 expected)."""
        quarter = size // 4
        if self.name == "range 500-1499":  # inside the blob
            return f"bytes={quarter}-{2 * quarter}", (quarter, 2 * quarter)
        if self.name == "range 500-":  # open-ended
            return f"bytes={quarter}-", (quarter, size - 1)
        if self.name == "range -500":  # a suffix
            return f"bytes=-{quarter}", (size - quarter, size - 1)
        if self.name == "range 2000-5000":  # runs past the end: cut at the end
            first = size - size // 8
            return f"bytes={first}-{size + size // 2}", (first, size - 1)
        if self.name == "range 500-0":  # last before first
            return f"bytes={quarter}-{quarter // 2}", None
        if self.name == "range 5000-10000":  # entirely past the end
            return f"bytes={size + size // 2}-{3 * size}", None
        raise AssertionError(self.name)


RANGE_CASES = [
    RangeCase(n)
    for n in ("range 500-1499", "range 500-", "range -500", "range 2000-5000", "range 500-0", "range 5000-10000")
]


@pytest.mark.parametrize("case", RANGE_CASES, ids=[c.name.replace(" ", "_") for c in RANGE_CASES])
@pytest.mark.parametrize("kind", KINDS)
def test_blob_range(stack: WaveStack, served_by_tag: dict[str, Served], kind: str, case: RangeCase) -> None:
    """``sha256 blobs/range requests/<case>``: a satisfiable range is 206 with the slice, its Content-Length
    and ``Content-Range: bytes first-last/size`` (or ``/*``); an unsatisfiable one is 416.

    The suite passes only those answers (a 200 with the whole blob is reported
    "range request unsupported"); spec "Pulling blobs": a registry SHOULD support
    ``Range`` per RFC 9110 section 14.
    """
    served = served_by_tag["latest"]
    blob = served.blobs[kind]
    path = served.path(f"blobs/{blob.digest}")
    whole, _ = follow(stack, "GET", path)
    assert whole.status == 200
    header, expect = case.request(blob.size)
    resp, _ = follow(stack, "GET", path, [("Range", header)])
    if resp.status == 200 and resp.body == whole.body:
        raise AssertionError(f"{header} on the {kind} blob: range ignored, 200 with the whole blob")
    if expect is None:
        assert resp.status == 416, (header, resp.status, resp.headers)
        return
    first, last = expect
    assert resp.status == 206, (header, resp.status, resp.headers)
    assert resp.body == whole.body[first : last + 1], header
    assert resp.header("Content-Length") == str(last - first + 1), header
    assert resp.header("Content-Range") in (f"bytes {first}-{last}/{blob.size}", f"bytes {first}-{last}/*"), (
        header,
        resp.headers,
    )


# --- names ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tail",
    ["manifests/latest", f"manifests/{sha256_of('x')}", f"blobs/{sha256_of('x')}", "tags/list"],
)
def test_unknown_repository_is_name_unknown(stack: WaveStack, tail: str) -> None:
    """Spec "Error Codes": a repository the registry does not know is NAME_UNKNOWN (here: a token nobody holds)."""
    path = f"/v2/wt/{UNKNOWN_TOKEN}/library/busybox/{tail}"
    assert_not_found(stack.http("GET", path, SUITE_ACCEPT), "NAME_UNKNOWN")
    head = stack.http("HEAD", path, SUITE_ACCEPT)
    assert (head.status, head.body) == (404, b"")
