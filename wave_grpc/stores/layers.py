"""Content-addressed storage of injected layers.

The seam is split by who needs it. The gateway only serves blobs: a
:class:`LayerReader` answers how a blob is served (wave_grpc/registry/blobs.py)
and its size. The service writes: a :class:`LayerStore` puts a verified stream,
records the tar digest, references and collects, on top of the reader.
The file store is the embedded default; a stored blob is written to a temporary
file, verified, then renamed into place, so a reader never sees a half-written
or unverified blob and a failed upload leaves nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from wave_grpc.errors import Errors, WaveError, disk_full, store_full
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigester, LayerDigests, LayerFormatError, LayerLimits, check_layer_digests
from wave_grpc.image.tarcheck import TarCheckError
from wave_grpc.registry.blobs import BlobAnswer, LocalFile

log = logging.getLogger(__name__)

STORE_SCHEME = "wave-layer-store:"
# A temporary file of another start untouched this long is an orphan: an upload in flight
# writes it continuously, and its verification takes seconds after the last byte.
TEMP_GRACE = 15 * 60.0


def store_location(digest: Digest) -> str:
    return f"{STORE_SCHEME}{digest}"


@dataclass(frozen=True, slots=True)
class ExpectedLayer:
    """What the caller claims; empty values are not checked."""

    field: str
    gzip_digest: str = ""
    gzip_size: int = 0
    tar_digest: str = ""


class LayerReader(Protocol):
    """What the gateway needs of a layer store: serve a stored blob. A reader never writes.

    Opening one costs nothing (no directories made, no threads, no scan), so every
    gateway worker opens only this (wave_grpc/stores/open.open_layer_reader).
    """

    async def size(self, digest: Digest) -> int | None:
        """The stored blob's size; None if it is absent."""
        ...

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        """How the gateway serves the blob (a local file, a redirect or a stream); BLOB_UNKNOWN if absent."""
        ...


class LayerStore(LayerReader, Protocol):
    """What the service needs: the writer (verify and put, reference, collect), built on the reader."""

    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        """Verify and store; answer the digests and whether the blob is new."""
        ...

    async def tar_digest(self, digest: Digest) -> Digest | None:
        """The verified uncompressed digest recorded when the blob was stored."""
        ...

    def read(self, digest: Digest) -> AsyncIterator[bytes]:
        """The stored bytes, in chunks (a freeze copies them); BLOB_UNKNOWN if absent."""
        ...

    async def reference(self, digest: Digest) -> bool:
        """A creation is about to reference the blob: mark it referenced now; False if it is gone.

        Against a concurrent collection this either wins (the blob is kept) or sees the
        blob gone (the creation fails cleanly): a token never references a removed layer.
        """
        ...

    async def collect(self, referenced: set[Digest], grace: float, *, dry_run: bool = False) -> Collection | None:
        """Remove what no live token references and nothing marked for ``grace`` seconds.

        ``referenced`` are the stored layers of live tokens (marked referenced now).
        None when another collector holds the store.
        """
        ...

    async def close(self) -> None:
        """Release what the writer holds (its verification threads); the service calls it at shutdown."""
        ...


@dataclass(frozen=True, slots=True)
class Collection:
    """What one collection removed (or, with ``dry_run``, would remove)."""

    removed: tuple[tuple[Digest, int], ...]
    kept: int

    @property
    def freed(self) -> int:
        return sum(size for _, size in self.removed)


class FileLayerReader:
    """Reads blobs under ``root/blobs``; makes nothing, so a missing root is only absent blobs."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _blob_path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    async def size(self, digest: Digest) -> int | None:
        try:
            return self._blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def staged_path(self, digest: Digest) -> Path | None:
        """The local file holding the blob, if it is here (the OCI store pushes it from there)."""
        path = self._blob_path(digest)
        return path if path.exists() else None

    async def answer(self, digest: Digest, method: str, range_header: str = "") -> BlobAnswer:
        path = self.staged_path(digest)
        if path is None:
            raise WaveError(Errors.BLOB_UNKNOWN, f"layer {digest} is missing from the layer store")
        return LocalFile(path)


class FileLayerStore(FileLayerReader):
    """The writer: blobs under ``root/blobs``, their verified tar digests under ``root/tar-digests``.

    Verification (hashing, inflating, the tar check) runs on a small pool of its
    own, so a burst of big or hostile uploads cannot starve the default executor
    that token lookups and file serving use; :meth:`close` shuts it down.
    Temporary files carry the id of the store's start (random, made when it opens):
    at startup, and at every collection, those of other starts that have not been
    written to for :data:`TEMP_GRACE` (a ``kill -9`` mid-upload) are removed. Process
    ids would not do: in a container the service is PID 1 at every start, and PID 1
    always looks alive. The grace spares another process's upload in flight (a
    replica sharing the directory, ``wave-grpc gc`` run beside the service).
    """

    def __init__(
        self, root: Path, limits: LayerLimits | None = None, *, verify_workers: int = 2, name: str = ""
    ) -> None:
        super().__init__(root)
        # Named when its disk is full, with the key that places it.
        self.name = name or f"the layer store ([layers].store = file://{root})"
        self._limits = limits or LayerLimits()
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        (root / "tar-digests" / "sha256").mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=verify_workers, thread_name_prefix="layer-verify")
        self.start_id = secrets.token_hex(8)
        self.swept = self._sweep_orphans()
        # Kept current by put (and garbage collection), so a scrape costs nothing.
        self.stored_bytes = sum(path.stat().st_size for path in (root / "blobs" / "sha256").iterdir())

    async def close(self) -> None:
        # Waits for a verification in flight (the server has stopped taking calls by now).
        await asyncio.to_thread(self._pool.shutdown)

    def _temp_name(self) -> str:
        return f"{self.start_id}-{uuid.uuid4().hex}.part"

    def _sweep_orphans(self) -> int:
        """Remove the temporary files other starts left and no longer write; answer how many."""
        removed = 0
        stale_before = time.time() - TEMP_GRACE
        for folder in (self.root / "tmp", self.root / "tar-digests" / "sha256"):
            for path in folder.glob("*.part"):
                # "<start>-<uuid>.part", or "<hex>.<start>-<uuid>.part" for a tar digest being written.
                writer = path.name.removesuffix(".part").rsplit(".", 1)[-1].split("-", 1)[0]
                try:
                    written = path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if writer == self.start_id or written > stale_before:
                    continue
                _unlink_if_present(path)
                removed += 1
        if removed:
            log.info("layer store %s: removed %d temporary file(s) left by stopped writers", self.root, removed)
        return removed

    async def put(self, chunks: AsyncIterator[bytes], expected: ExpectedLayer) -> tuple[LayerDigests, bool]:
        temp = self.root / "tmp" / self._temp_name()
        meta_temp: Path | None = None
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
                if await self.reference(digests.gzip_digest):
                    return digests, False
                # Only a verified blob that is kept is worth the fsync.
                await asyncio.to_thread(sync, handle)
            # The tar digest is written first: a blob that exists always has one.
            # Temp names are unique, so concurrent uploads of one blob do not collide.
            meta = self._meta_path(digests.gzip_digest)
            meta_temp = meta.with_name(f"{meta.name}.{self._temp_name()}")
            await asyncio.to_thread(meta_temp.write_text, str(digests.tar_digest))
            os.replace(meta_temp, meta)
            meta_temp = None
            with self._locked("refs.lock", fcntl.LOCK_SH):
                os.replace(temp, final)  # a new file: its mtime is now, fresh for gc_grace
            self.stored_bytes += digests.gzip_size
            return digests, True
        except LayerFormatError as exc:
            raise WaveError(Errors.INVALID_ARGUMENT, f"{expected.field}: {exc}") from None
        except OSError as exc:
            if disk_full(exc):
                raise store_full(self.name) from None
            raise
        finally:
            await asyncio.shield(asyncio.to_thread(_unlink_if_present, temp))
            if meta_temp is not None:
                await asyncio.shield(asyncio.to_thread(_unlink_if_present, meta_temp))

    def _meta_path(self, digest: Digest) -> Path:
        return self.root / "tar-digests" / digest.algorithm / digest.hex

    async def tar_digest(self, digest: Digest) -> Digest | None:
        try:
            return Digest.parse(self._meta_path(digest).read_text().strip())
        except FileNotFoundError:
            return None

    def discard(self, digest: Digest) -> None:
        """Drop a blob (a staging store does, once the blob is safely elsewhere)."""
        path = self._blob_path(digest)
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            self.stored_bytes -= size
        _unlink_if_present(self._meta_path(digest))

    # -- garbage collection ----------------------------------------------------------
    #
    # A blob's mtime is when it was last seen referenced (or uploaded). Creations mark
    # under a shared flock on "refs.lock", the sweep decides and removes under an
    # exclusive one: a mark either lands before the sweep looks (the blob is fresh and
    # kept) or after it (the blob is gone, and the creation is told to upload again).

    def _locked(self, name: str, mode: int) -> contextlib.AbstractContextManager[bool]:
        return file_lock(self.root / name, mode)

    def _mark(self, digest: Digest) -> bool:
        with self._locked("refs.lock", fcntl.LOCK_SH):
            try:
                os.utime(self._blob_path(digest))
            except FileNotFoundError:
                return False
            return True

    async def reference(self, digest: Digest) -> bool:
        return await asyncio.to_thread(self._mark, digest)

    def _collect(self, referenced: set[Digest], grace: float, dry_run: bool) -> Collection | None:
        with self._locked("collect.lock", fcntl.LOCK_EX | fcntl.LOCK_NB) as alone:
            if not alone:
                return None
            if not dry_run:
                self.swept += self._sweep_orphans()  # a crash's leftovers, without waiting for a restart
            blobs = self.root / "blobs" / "sha256"
            removed: list[tuple[Digest, int]] = []
            kept = 0
            now = time.time()
            for path in sorted(blobs.iterdir()):
                try:
                    digest = Digest("sha256", path.name)
                except ValueError:
                    continue
                if digest in referenced:
                    if not dry_run:
                        self._mark(digest)
                    kept += 1
                    continue
                with self._locked("refs.lock", fcntl.LOCK_EX):
                    try:
                        stat = path.stat()
                    except FileNotFoundError:
                        continue
                    if stat.st_mtime + grace > now:
                        kept += 1
                        continue
                    if not dry_run:
                        self.discard(digest)
                removed.append((digest, stat.st_size))
            return Collection(tuple(removed), kept)

    async def collect(self, referenced: set[Digest], grace: float, *, dry_run: bool = False) -> Collection | None:
        return await asyncio.to_thread(self._collect, referenced, grace, dry_run)

    async def read(self, digest: Digest) -> AsyncIterator[bytes]:
        path = self.staged_path(digest)
        if path is None:
            raise WaveError(Errors.BLOB_UNKNOWN, f"layer {digest} is missing from the layer store")
        async for chunk in file_chunks(path):
            yield chunk


READ_CHUNK = 1 << 20


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    """A file's bytes, read off the event loop a chunk at a time (flat memory)."""
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk


@contextlib.contextmanager
def file_lock(path: Path, mode: int) -> Iterator[bool]:
    """``flock`` ``path`` with ``mode``; yields False when ``LOCK_NB`` found it held elsewhere."""
    with path.open("a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), mode)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _unlink_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


async def iterate_bytes(data: bytes, chunk_size: int = 4 << 20) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk_size):
        yield data[start : start + chunk_size]
