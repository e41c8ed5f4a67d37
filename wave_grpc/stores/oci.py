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

import fcntl
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.compression import Compression
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigests
from wave_grpc.image.manifest import MediaType, layer_media_type
from wave_grpc.registry.blobs import BlobAnswer, registry_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.push import Repository
from wave_grpc.stores.layers import Collection, ExpectedLayer, FileLayerStore, file_lock

ARTIFACT_TYPE = "application/vnd.wave-grpc.layer.v1"
EMPTY_CONFIG = b"{}"
EMPTY_CONFIG_TYPE = "application/vnd.oci.empty.v1+json"
TAR_DIGEST_ANNOTATION = "dev.wave-grpc.layer.tar-digest"
REFERENCED_ANNOTATION = "dev.wave-grpc.layer.referenced-at"
TAGS_PAGE = 1000
MAX_TAGS_PAGE_BYTES = 4 << 20
_LAYER_TAG = re.compile(r"sha256-[0-9a-f]{64}")


def _tag(digest: Digest) -> str:
    return f"{digest.algorithm}-{digest.hex}"


class RegistryLayerReader:
    """Serves layers from the repository as base layers are served; pushes nothing."""

    def __init__(self, client: RegistryClient, registry: str, repository: str) -> None:
        self.client = client
        self.registry = registry
        self.repository = repository

    @property
    def _label(self) -> str:
        return f"layer store {self.registry}/{self.repository}"

    @property
    def _repository(self) -> Repository:
        return Repository(self.client, self.registry, self.repository)

    async def _exists(self, digest: Digest) -> int | None:
        return await self._repository.blob_size(digest)

    async def size(self, digest: Digest) -> int | None:
        return await self._exists(digest)

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        # The layer lives in a registry repository: served like a base layer from there.
        return await registry_blob(self.client, self.registry, self.repository, digest, method, range_header)


class RegistryLayerStore(RegistryLayerReader):
    """The writer: verifies on a local staging file store, then pushes the blob and its record."""

    def __init__(
        self,
        client: RegistryClient,
        registry: str,
        repository: str,
        staging: FileLayerStore,
        gc_grace: float = 6 * 3600.0,
    ) -> None:
        super().__init__(client, registry, repository)
        self._gc_grace = gc_grace
        self._staging = staging

    async def close(self) -> None:
        await self._staging.close()

    async def _push_record(self, digests: LayerDigests, referenced_at: float | None = None) -> None:
        config_digest = Digest.of(EMPTY_CONFIG)
        if await self._exists(config_digest) is None:
            await self._repository.push_blob(config_digest, len(EMPTY_CONFIG), EMPTY_CONFIG)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": str(MediaType.OCI_MANIFEST),
                "artifactType": ARTIFACT_TYPE,
                "config": {"mediaType": EMPTY_CONFIG_TYPE, "digest": str(config_digest), "size": len(EMPTY_CONFIG)},
                "layers": [
                    {
                        "mediaType": str(layer_media_type(digests.compression, docker=False)),
                        "digest": str(digests.gzip_digest),
                        "size": digests.gzip_size,
                    }
                ],
                "annotations": {
                    TAR_DIGEST_ANNOTATION: str(digests.tar_digest),
                    # When a token last referenced the layer (or it was uploaded): garbage
                    # collection keeps it for [layers].gc_grace from then.
                    REFERENCED_ANNOTATION: f"{time.time() if referenced_at is None else referenced_at:.0f}",
                },
            },
            separators=(",", ":"),
        ).encode()
        await self._repository.put_manifest(_tag(digests.gzip_digest), manifest, str(MediaType.OCI_MANIFEST))

    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        digests, _ = await self._staging.put(chunks, expected)
        try:
            if await self.tar_digest(digests.gzip_digest) == digests.tar_digest and await self.reference(
                digests.gzip_digest
            ):
                return digests, False
            path = self._staging.staged_path(digests.gzip_digest)
            if path is None:
                raise WaveError(Errors.INTERNAL, f"{self._label}: staged layer {digests.gzip_digest} vanished")
            if await self._exists(digests.gzip_digest) is None:
                await self._repository.push_blob(digests.gzip_digest, digests.gzip_size, path)
            await self._push_record(digests)
            return digests, True
        finally:
            # The registry is the store; the staging copy was only for verifying.
            self._staging.discard(digests.gzip_digest)

    async def _record(self, digest: Digest) -> tuple[Digest, dict[str, Any]] | None:
        """The artifact manifest that keeps ``digest``: its own digest and its document."""
        try:
            manifest = await self.client.get_manifest(self.registry, self.repository, _tag(digest))
        except WaveError as exc:
            if exc.kind in (Errors.MANIFEST_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise
        document = json.loads(manifest.data)
        return (manifest.digest, document) if isinstance(document, dict) else None

    async def tar_digest(self, digest: Digest) -> Digest | None:
        record = await self._record(digest)
        if record is None:
            return None
        value = (record[1].get("annotations") or {}).get(TAR_DIGEST_ANNOTATION)
        return Digest.parse(value) if isinstance(value, str) else None

    # -- garbage collection ----------------------------------------------------------
    #
    # The last-referenced time is an annotation of the artifact manifest. A creation
    # re-pushes a manifest whose time is stale; collection deletes a stale manifest by
    # its own digest, so a re-push made meanwhile (a new manifest, a new digest, the
    # same tag) is never deleted with it, and the registry keeps the blob it references.

    async def reference(self, digest: Digest) -> bool:
        record = await self._record(digest)
        if record is None:
            return False
        _, document = record
        if time.time() - _referenced_at(document) > self._gc_grace / 2:
            await self._push_record(_digests_of(digest, document))
        return True

    async def _tags(self) -> list[str]:
        tags: list[str] = []
        last = ""
        while True:
            path = f"tags/list?n={TAGS_PAGE}" + (f"&last={last}" if last else "")
            try:
                async with self.client.request(
                    self.registry, self.repository, "GET", path, not_found=Errors.NAME_UNKNOWN, what=self._label
                ) as resp:
                    raw = bytearray()
                    async for chunk in self.client.iter_body(resp, self.registry, self._label):
                        raw += chunk
                        if len(raw) > MAX_TAGS_PAGE_BYTES:
                            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{self._label}: a tags page is too big")
            except WaveError as exc:
                if exc.kind is Errors.NAME_UNKNOWN:
                    return tags  # nothing was ever pushed
                raise
            page = json.loads(raw).get("tags") or []
            tags.extend(t for t in page if isinstance(t, str))
            if len(page) < TAGS_PAGE:
                return tags
            last = page[-1]

    async def collect(self, referenced: set[Digest], grace: float, *, dry_run: bool = False) -> Collection | None:
        with file_lock(self._staging.root / "collect.lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as alone:
            if not alone:
                return None
            removed: list[tuple[Digest, int]] = []
            kept = 0
            now = time.time()
            for tag in await self._tags():
                if not _LAYER_TAG.fullmatch(tag):
                    continue
                digest = Digest("sha256", tag.removeprefix("sha256-"))
                if digest in referenced:
                    if not dry_run:
                        await self.reference(digest)
                    kept += 1
                    continue
                record = await self._record(digest)
                if record is None:
                    continue
                manifest_digest, document = record
                if not _referenced_at(document):
                    # Pushed before last-referenced times were kept: start its grace now.
                    if not dry_run:
                        await self._push_record(_digests_of(digest, document))
                    kept += 1
                    continue
                if _referenced_at(document) + grace > now:
                    kept += 1
                    continue
                if not dry_run:
                    await self._delete_manifest(manifest_digest)
                removed.append((digest, _digests_of(digest, document).gzip_size))
            return Collection(tuple(removed), kept)

    async def _delete_manifest(self, manifest: Digest) -> None:
        """Untag the layer; the registry's own garbage collection then frees the blob."""
        async with self.client.request(
            self.registry,
            self.repository,
            "DELETE",
            f"manifests/{manifest}",
            actions="pull,push,delete",
            not_found=Errors.MANIFEST_UNKNOWN,
            what=f"{self._label}@{manifest}",
        ) as resp:
            if resp.status not in (200, 202):
                raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{self._label}: manifest delete answered {resp.status}")

    async def read(self, digest: Digest) -> AsyncIterator[bytes]:
        what = f"{self._label}@{digest}"
        async with self.client.request(
            self.registry, self.repository, "GET", f"blobs/{digest}", not_found=Errors.BLOB_UNKNOWN, what=what
        ) as resp:
            async for chunk in self.client.iter_body(resp, self.registry, what, chunk_size=1 << 20):
                yield chunk


def _referenced_at(document: dict[str, Any]) -> float:
    value = (document.get("annotations") or {}).get(REFERENCED_ANNOTATION)
    try:
        return float(value) if isinstance(value, str) else 0.0
    except ValueError:
        return 0.0


def _digests_of(digest: Digest, document: dict[str, Any]) -> LayerDigests:
    layers = document.get("layers") or [{}]
    tar = (document.get("annotations") or {}).get(TAR_DIGEST_ANNOTATION)
    zstd = layers[0].get("mediaType") == MediaType.OCI_LAYER_ZSTD
    return LayerDigests(
        digest,
        int(layers[0].get("size") or 0),
        Digest.parse(str(tar)),
        Compression.ZSTD if zstd else Compression.GZIP,
    )
