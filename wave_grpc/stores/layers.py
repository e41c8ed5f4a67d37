"""Content-addressed storage of injected layers.

The seam is small (:class:`LayerStore`): put a verified stream, ask for a size
and the tar digest, and answer how a blob is served (wave_grpc/registry/blobs.py).
The file store is the embedded default; a stored blob is written to a temporary
file, verified, then renamed into place, so a reader never sees a half-written
or unverified blob and a failed upload leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigester, LayerDigests, LayerFormatError, LayerLimits, check_layer_digests
from wave_grpc.image.tarcheck import TarCheckError
from wave_grpc.registry.blobs import BlobAnswer, LocalFile

log = logging.getLogger(__name__)

STORE_SCHEME = "wave-layer-store:"


def store_location(digest: Digest) -> str:
    return f"{STORE_SCHEME}{digest}"


@dataclass(frozen=True, slots=True)
class ExpectedLayer:
    """What the caller claims; empty values are not checked."""

    field: str
    gzip_digest: str = ""
    gzip_size: int = 0
    tar_digest: str = ""


class LayerStore(Protocol):
    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        """Verify and store; answer the digests and whether the blob is new."""
        ...

    async def size(self, digest: Digest) -> int | None: ...

    async def tar_digest(self, digest: Digest) -> Digest | None:
        """The verified uncompressed digest recorded when the blob was stored."""
        ...

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        """How the gateway serves the blob (a local file, a redirect or a stream); BLOB_UNKNOWN if absent."""
        ...


class FileLayerStore:
    """Blobs under ``root/blobs``, their verified tar digests under ``root/tar-digests``.

    Verification (hashing, inflating, the tar check) runs on a small pool of its
    own, so a burst of big or hostile uploads cannot starve the default executor
    that token lookups and file serving use. Temporary files carry the writing
    process's id: at startup, those of processes that no longer run (a ``kill
    -9`` mid-upload) are removed, and nobody else's upload in flight is touched.
    """

    def __init__(self, root: Path, limits: LayerLimits | None = None, *, verify_workers: int = 2) -> None:
        self.root = root
        self._limits = limits or LayerLimits()
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        (root / "tar-digests" / "sha256").mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=verify_workers, thread_name_prefix="layer-verify")
        self.swept = self._sweep_orphans()
        # Kept current by put (and garbage collection), so a scrape costs nothing.
        self.stored_bytes = sum(path.stat().st_size for path in (root / "blobs" / "sha256").iterdir())

    def _temp_name(self) -> str:
        return f"{os.getpid()}-{uuid.uuid4().hex}.part"

    def _sweep_orphans(self) -> int:
        """Remove the temporary files of writers that are gone; answer how many."""
        removed = 0
        for folder in (self.root / "tmp", self.root / "tar-digests" / "sha256"):
            for path in folder.glob("*.part"):
                # "<pid>-<uuid>.part", or "<hex>.<pid>-<uuid>.part" for a tar digest being written.
                writer = path.name.removesuffix(".part").rsplit(".", 1)[-1].split("-", 1)[0]
                if writer.isdigit() and _process_alive(int(writer)):
                    continue
                _unlink_if_present(path)
                removed += 1
        if removed:
            log.info("layer store %s: removed %d temporary file(s) left by stopped writers", self.root, removed)
        return removed

    def _blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        temp = self.root / "tmp" / self._temp_name()
        digester = LayerDigester(self._limits)
        loop = asyncio.get_running_loop()

        def write(handle: BinaryIO, chunk: bytes) -> None:
            digester.update(chunk)
            handle.write(chunk)

        def sync(handle: BinaryIO) -> None:
            handle.flush()
            os.fsync(handle.fileno())

        try:
            # Every blocking file call runs in a worker thread: a big layer's
            # fsync or unlink must not stall the other RPCs on this event loop.
            with await asyncio.to_thread(temp.open, "wb") as handle:
                async for chunk in chunks:
                    # Hashing and inflating are CPU work: keep them off the event loop too.
                    await loop.run_in_executor(self._pool, write, handle, chunk)
                try:
                    digests = digester.finish()
                except LayerFormatError as exc:
                    raise WaveError(Errors.INVALID_ARGUMENT, f"{expected.field}: {exc}") from None
                check_layer_digests(
                    expected.field, digests, expected.gzip_digest, expected.gzip_size, expected.tar_digest
                )
                try:
                    digester.check_tar()
                except TarCheckError as exc:
                    raise WaveError(Errors.INVALID_ARGUMENT, f"{expected.field}: the layer {exc}") from None
                final = self._blob_path(digests.gzip_digest)
                if final.exists():
                    return digests, False
                # Only a verified blob that is kept is worth the fsync.
                await asyncio.to_thread(sync, handle)
            # The tar digest is written first: a blob that exists always has one.
            # Temp names are unique, so concurrent uploads of one blob do not collide.
            meta = self._meta_path(digests.gzip_digest)
            meta_temp = meta.with_name(f"{meta.name}.{self._temp_name()}")
            meta_temp.write_text(str(digests.tar_digest))
            os.replace(meta_temp, meta)
            os.replace(temp, final)
            self.stored_bytes += digests.gzip_size
            return digests, True
        except LayerFormatError as exc:
            raise WaveError(Errors.INVALID_ARGUMENT, f"{expected.field}: {exc}") from None
        finally:
            await asyncio.shield(asyncio.to_thread(_unlink_if_present, temp))

    def _meta_path(self, digest: Digest) -> Path:
        return self.root / "tar-digests" / digest.algorithm / digest.hex

    async def tar_digest(self, digest: Digest) -> Digest | None:
        try:
            return Digest.parse(self._meta_path(digest).read_text().strip())
        except FileNotFoundError:
            return None

    async def size(self, digest: Digest) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def staged_path(self, digest: Digest) -> Path | None:
        """The local file holding the blob, if it is here (the OCI store pushes it from there)."""
        path = self._blob_path(digest)
        return path if path.exists() else None

    def discard(self, digest: Digest) -> None:
        """Drop a blob (a staging store does, once the blob is safely elsewhere)."""
        path = self._blob_path(digest)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self.stored_bytes -= size
        _unlink_if_present(self._meta_path(digest))

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        path = self.staged_path(digest)
        if path is None:
            raise WaveError(Errors.BLOB_UNKNOWN, f"layer {digest} is missing from the layer store")
        return LocalFile(path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, owned by someone else
    return True


def _unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def iterate_bytes(data: bytes, chunk_size: int = 4 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]
