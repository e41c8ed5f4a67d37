"""A layer store in an OCI registry repository, shared by every replica.

Why a registry: every deployment already runs one, it stores blobs by digest
(dedup for free), it is built to serve them at scale (and can hand them to a
CDN by redirect), and replicas need no shared disk. The layer goes in as an
ordinary blob, pushed once by digest; a small OCI artifact manifest tagged
``sha256-<hex>`` references it, which (a) records the verified uncompressed
digest the config's ``diff_ids`` need and (b) keeps the blob referenced so the
registry's garbage collector does not delete it.

Bytes are verified on local disk (a staging file store) before anything is
pushed, so the registry never holds an unverified or half-written layer.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urljoin

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigests
from wave_grpc.image.manifest import MediaType
from wave_grpc.registry.blobs import BlobAnswer, registry_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.layers import ExpectedLayer, FileLayerStore

ARTIFACT_TYPE = "application/vnd.wave-grpc.layer.v1"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
TAR_DIGEST_ANNOTATION = "dev.wave-grpc.layer.tar-digest"


def parse_store_url(url: str) -> tuple[str, str]:
    """``oci://<registry>/<repository>`` -> (registry, repository)."""
    rest = url[len("oci://") :]
    registry, _, repository = rest.partition("/")
    if not registry or not repository:
        raise ValueError(f"{url!r} must be oci://<registry host[:port]>/<repository>")
    return registry, repository


def _tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


class RegistryLayerStore:
    def __init__(self, client: RegistryClient, registry: str, repository: str, staging: FileLayerStore) -> None:
        self.client = client
        self.registry = registry
        self.repository = repository
        self._staging = staging

    @property
    def _label(self) -> str:
        return f"layer store {self.registry}/{self.repository}"

    async def _exists(self, digest: Digest) -> int | None:
        try:
            async with self.client.request(
                self.registry,
                self.repository,
                "HEAD",
                f"blobs/{digest}",
                not_found=Errors.BLOB_UNKNOWN,
                what=f"{self._label}@{digest}",
            ) as resp:
                return resp.content_length
        except WaveError as exc:
            if exc.kind is Errors.BLOB_UNKNOWN:
                return None
            raise

    async def _push_blob(self, digest: Digest, size: int, source: Path | bytes) -> None:
        what = f"{self._label}@{digest}"
        async with self.client.request(
            self.registry, self.repository, "POST", "blobs/uploads/", actions="pull,push", what=what
        ) as resp:
            location = resp.headers.get("Location", "")
            if resp.status != 202 or not location:
                raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{what}: the registry did not start an upload")
            upload = urljoin(str(resp.url), location)
        separator = "&" if "?" in upload else "?"

        def body() -> object:
            return source.open("rb") if isinstance(source, Path) else source

        async with self.client.request(
            self.registry,
            self.repository,
            "PUT",
            "",
            url=f"{upload}{separator}digest={digest}",
            actions="pull,push",
            body=body,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            what=what,
        ) as resp:
            if resp.status != 201:
                raise WaveError(
                    Errors.UPSTREAM_UNAVAILABLE, f"{what}: the registry answered {resp.status} to the upload"
                )

    async def _push_record(self, digests: LayerDigests) -> None:
        config_digest = Digest.of(EMPTY_CONFIG)
        if await self._exists(config_digest) is None:
            await self._push_blob(config_digest, len(EMPTY_CONFIG), EMPTY_CONFIG)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": str(MediaType.OCI_MANIFEST),
                "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": str(config_digest), "size": len(EMPTY_CONFIG)},
                "layers": [
                    {
                        "mediaType": str(MediaType.OCI_LAYER_GZIP),
                        "digest": str(digests.gzip_digest),
                        "size": digests.gzip_size,
                    }
                ],
                "annotations": {TAR_DIGEST_ANNOTATION: str(digests.tar_digest)},
            },
            separators=(",", ":"),
        ).encode()
        async with self.client.request(
            self.registry,
            self.repository,
            "PUT",
            f"manifests/{_tag(digests.gzip_digest)}",
            actions="pull,push",
            body=lambda: manifest,
            headers={"Content-Type": str(MediaType.OCI_MANIFEST)},
            what=f"{self._label}:{_tag(digests.gzip_digest)}",
        ) as resp:
            if resp.status not in (200, 201):
                raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{self._label}: manifest push answered {resp.status}")

    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        digests, _ = await self._staging.put(chunks, expected)
        try:
            if await self.tar_digest(digests.gzip_digest) == digests.tar_digest:
                return digests, False
            path = self._staging.staged_path(digests.gzip_digest)
            if path is None:
                raise WaveError(Errors.INTERNAL, f"{self._label}: staged layer {digests.gzip_digest} vanished")
            if await self._exists(digests.gzip_digest) is None:
                await self._push_blob(digests.gzip_digest, digests.gzip_size, path)
            await self._push_record(digests)
            return digests, True
        finally:
            # The registry is the store; the staging copy was only for verifying.
            self._staging.discard(digests.gzip_digest)

    async def size(self, digest: Digest) -> int | None:
        return await self._exists(digest)

    async def tar_digest(self, digest: Digest) -> Digest | None:
        try:
            manifest = await self.client.get_manifest(self.registry, self.repository, _tag(digest))
        except WaveError as exc:
            if exc.kind in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        annotations = json.loads(manifest.data).get("annotations") or {}
        value = annotations.get(TAR_DIGEST_ANNOTATION)
        return Digest.parse(value) if isinstance(value, str) else None

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        # The layer lives in a registry repository: served like a base layer from there.
        return await registry_blob(self.client, self.registry, self.repository, digest, method, range_header)
