"""The site cache: base blobs and pinned manifests of ``blobs = "cache"`` routes, kept near the runtimes.

A base blob of a cache route is fetched from the upstream once. The fetch is
written to a temporary file under ``[cache]`` staging while every runtime that
asked for the blob meanwhile follows it (a fan-out: one upstream request, all get
the bytes as they arrive, from memory while they keep up, else from that growing
file). The fetch hashes the blob once; the blob is published to the store
(wave_grpc/stores/cachestores.py) only after its digest and length matched; a
mismatch or a cut upstream publishes nothing, and the readers' streams end in
an error, which the gateway's blob handler turns into a cut connection, never a
wrong blob (the handler holds each chunk back until the next one, or the end,
has come, so it does not hash these streams again). The fetch belongs to the cache, not to the first runtime: one that
hangs up does not stop it for the others.

Later pulls are served from the store: sendfile for a ``file://`` store, the
store registry's answer (a redirect when it needs no credential) for ``oci://``.
Manifests and configs are kept by digest through the registry client's seam
(wave_grpc/registry/site.py), so a restarted replica needs no upstream for them.

Single flight is per process; gateway worker processes or replicas may each
fetch a blob once, after which all of them find it stored.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import threading
import uuid
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.metrics import Metrics
from wave_grpc.registry.blobs import STREAM_CHUNK, BlobAnswer, LocalFile, Stream, upstream_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.cachestores import CacheStore

log = logging.getLogger(__name__)


# Chunks already on disk that a fill still keeps in memory, for readers a little behind the fetch.
RETAINED_BYTES = 4 << 20


class _Fill:
    """One upstream fetch of one blob into a temporary file that readers follow as it grows.

    Readers that keep up are served the chunks from memory as they arrive; one that fell
    behind (or joined late) reads the file. A chunk leaves memory only once it is in the
    file, and only when the chunks kept exceed ``RETAINED_BYTES``: so at any time a fill
    holds the larger of ``RETAINED_BYTES`` and its unwritten bytes (at most ``SPOOL_DEPTH
    + 1`` batches of ``SPOOL_BATCH`` and a chunk, see _Spool), plus a chunk: about 13 MiB,
    whatever the blob's size or the disk's speed. A disk slower than the upstream slows
    the fetch (and the readers that keep up) to the disk's pace rather than growing that.
    """

    def __init__(self, digest: Digest, path: Path) -> None:
        self.digest = digest
        self.path = path
        self.received = 0  # bytes from the upstream so far, in memory or in the file
        self.written = 0  # bytes in the file
        self.verified = False
        self.failure: WaveError | None = None
        # The latest chunks as (offset, bytes): every unwritten one, and written ones up to RETAINED_BYTES.
        self._recent: deque[tuple[int, bytes]] = deque()
        self._recent_bytes = 0
        # The upstream's Content-Length (None: not given), once its headers arrived.
        self.length: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()

    def advanced(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def arrived(self, chunk: bytes) -> None:
        self._recent.append((self.received, chunk))
        self._recent_bytes += len(chunk)
        self.received += len(chunk)
        self.advanced()

    def stored(self, size: int) -> None:
        """``size`` more bytes are in the file: written chunks leave memory beyond the retained amount."""
        self.written += size
        recent = self._recent
        while recent and self._recent_bytes > RETAINED_BYTES:
            offset, chunk = recent[0]
            if offset + len(chunk) > self.written:
                break
            recent.popleft()
            self._recent_bytes -= len(chunk)

    def failed(self, failure: WaveError) -> None:
        self.failure = failure
        if not self.length.done():
            self.length.set_exception(failure)
            self.length.exception()  # retrieved here: a fill nobody follows is not an error to log
        self.advanced()

    def reader(self, label: str) -> tuple[AsyncGenerator[bytes, None], Callable[[], Awaitable[None]]]:
        """The blob's bytes as they arrive, and how to release them. The file is opened
        now: once the fetch ends it is renamed or removed, and an open file outlives both."""
        fd = os.open(self.path, os.O_RDONLY)
        chunks = self._follow(fd, label)

        async def close() -> None:
            await chunks.aclose()
            os.close(fd)

        return chunks, close

    def _in_memory(self, offset: int) -> bytes | None:
        for start, chunk in self._recent:
            if start <= offset < start + len(chunk):
                # A reader that never fell behind is always at a chunk's start: no copy.
                return chunk if start == offset else chunk[offset - start :]
        return None

    async def _follow(self, fd: int, label: str) -> AsyncGenerator[bytes, None]:
        """Ends only once the whole blob was verified and published; raises if the fetch failed first."""
        offset = 0
        while True:
            progress = self._progress
            if offset < self.received:
                chunk = self._in_memory(offset)
                if chunk is None:  # behind every chunk in memory, so it is in the file
                    chunk = os.pread(fd, min(STREAM_CHUNK, self.written - offset), offset)
                offset += len(chunk)
                yield chunk
                continue
            if self.verified:
                return
            if self.failure is not None:
                raise WaveError(self.failure.kind, f"{label}: {self.failure.message}")
            await progress.wait()


# A fill's file is written this many bytes at a time, by a worker thread.
SPOOL_BATCH = 4 << 20
# At most this many batches are being written at a time.
SPOOL_DEPTH = 2


@functools.cache
def _spool_executor() -> concurrent.futures.ThreadPoolExecutor:
    # Apart from the loop's default executor: a disk that stalls these writes must not
    # queue the fsyncs and store calls made there behind them.
    return concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="site-cache")


def _write_all(fd: int, chunks: list[bytes], offset: int) -> int:
    views = [memoryview(chunk) for chunk in chunks]
    total = sum(len(view) for view in views)
    while views:
        done = os.pwritev(fd, views, offset)
        offset += done
        while views and done >= len(views[0]):
            done -= len(views.pop(0))
        if done:
            views[0] = views[0][done:]
    return total


class _Spool:
    """A fill's file: each chunk hashed on arrival, the chunks written in batches by worker threads.

    The hash runs on the loop while the chunk is still in this core's cache. The writes go
    to threads ``SPOOL_BATCH`` bytes at a time, at most ``SPOOL_DEPTH`` batches in flight,
    so a disk that stalls holds the fetch back and never the loop. Batches are big and
    several are in flight because a worker thread needs the GIL back after each write,
    and a busy loop hands it over only every ``sys.getswitchinterval()`` (5 ms): with one
    2 MiB batch at a time the fetch spent 2.2 s of a 3.3 s GiB waiting for that.
    Unwritten bytes are at most ``SPOOL_DEPTH + 1`` batches and a chunk.
    """

    def __init__(self, path: Path) -> None:
        self._fd = os.open(path, os.O_WRONLY)
        self._hasher = hashlib.sha256()
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._offset = 0  # where the batch goes in the file
        self._pending: deque[concurrent.futures.Future[int]] = deque()

    async def add(self, chunk: bytes) -> int:
        """Take ``chunk``; answers how many more bytes are now in the file, in order from its start."""
        self._hasher.update(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= SPOOL_BATCH:
            self._submit()
        return await self._settled(SPOOL_DEPTH)

    async def finish(self) -> int:
        """Write what is left; answers the bytes added to the file since the last answer."""
        self._submit()
        return await self._settled(0)

    def _submit(self) -> None:
        if self._batch:
            batch, offset = self._batch, self._offset
            self._batch, self._offset, self._batch_bytes = [], offset + self._batch_bytes, 0
            self._pending.append(_spool_executor().submit(_write_all, self._fd, batch, offset))

    async def _settled(self, in_flight: int) -> int:
        """Bytes of the batches done (the oldest first), waiting until at most ``in_flight`` remain."""
        written, pending = 0, self._pending
        while pending and (len(pending) > in_flight or pending[0].done()):
            if not pending[0].done():
                await asyncio.wrap_future(pending[0])
            written += pending.popleft().result()
        return written

    def hexdigest(self) -> str:
        return self._hasher.hexdigest()

    def close(self) -> None:
        """Close the file once no thread writes to it (after a cancellation some may still):
        closed before, the descriptor's number could be reused and a write land elsewhere."""
        fd, running = self._fd, [future for future in self._pending if not future.done()]
        if not running:
            os.close(fd)
            return
        remaining, lock = [len(running)], threading.Lock()

        def one_done(_: concurrent.futures.Future[int]) -> None:
            with lock:
                remaining[0] -= 1
                last = remaining[0] == 0
            if last:
                os.close(fd)

        for future in running:
            future.add_done_callback(one_done)


class SiteCache:
    """The site cache's front: serves base blobs of cache routes and keeps pinned content by digest.

    Installed on a :class:`RegistryClient` with ``use_site_cache``; it satisfies the
    client's ``PinnedContent`` seam and ``registry.blobs.BlobSite``.
    """

    def __init__(self, store: CacheStore, staging: Path, metrics: Metrics | None = None) -> None:
        self.store = store
        self._staging = staging
        self._metrics = metrics or Metrics()
        self._fills: dict[Digest, _Fill] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Stop fetches under way (their partial files are removed)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- pinned content (the registry client's seam) ---------------------------------

    async def stored(self, digest: Digest, limit: int) -> bytes | None:
        try:
            data = await self.store.read(digest, limit)
        except WaveError as exc:
            log.warning("%s: %s; asking the upstream", self.store.label, exc.message)
            return None
        if data is None:
            return None
        if Digest.of(data) != digest:
            log.error("%s: the stored %s does not hash to its digest; asking the upstream", self.store.label, digest)
            return None
        return data

    async def keep(self, digest: Digest, data: bytes) -> None:
        try:
            await self.store.put_bytes(digest, data)
        except (WaveError, OSError) as exc:
            log.warning("%s: could not keep %s: %s", self.store.label, digest, getattr(exc, "message", exc))

    # -- base blobs -----------------------------------------------------------------

    async def serve(
        self, client: RegistryClient, registry: str, repository: str, digest: Digest, method: str, range_header: str
    ) -> BlobAnswer:
        """A base blob of a cache route: from the store, else from the one fetch of it under way or started."""
        stored = await self._stored_answer(digest, method, range_header)
        if stored is not None:
            return stored
        if method == "HEAD":
            # Nothing to keep from a HEAD: the registry's own answer (headers only).
            return await upstream_blob(client, registry, repository, digest, method)
        self._metrics.blob_cache_requests.labels("miss").inc()
        fill = self._fills.get(digest)
        joined = fill is not None
        if fill is None:
            fill = self._start(client, registry, repository, digest)
        label = f"blob {registry}/{repository}@{digest} (site cache fill)"
        # Opened before the wait: the fetch may end (and its file move) meanwhile.
        chunks, close = fill.reader(label)
        try:
            # A Range on a miss is ignored, as HTTP allows: the whole blob comes from the one fetch.
            length = await asyncio.shield(fill.length)
        except BaseException:
            await close()
            raise
        if joined:
            self._metrics.blob_cache_saved_bytes.inc(length or 0)
        return Stream(chunks=chunks, close=close, label=label, length=length, verified=True)

    async def _stored_answer(self, digest: Digest, method: str, range_header: str) -> BlobAnswer | None:
        try:
            answer = await self.store.answer(digest, method, range_header)
        except WaveError as exc:
            log.warning("%s: %s; fetching from the upstream", self.store.label, exc.message)
            return None
        if answer is not None and method == "GET":
            self._metrics.blob_cache_requests.labels("hit").inc()
            if isinstance(answer, LocalFile):
                with contextlib.suppress(FileNotFoundError):
                    size = answer.path.stat().st_size
                    self._metrics.blob_cache_served_bytes.inc(size)
                    self._metrics.blob_cache_saved_bytes.inc(size)
        return answer

    def _start(self, client: RegistryClient, registry: str, repository: str, digest: Digest) -> _Fill:
        self._staging.mkdir(parents=True, exist_ok=True)
        path = self._staging / f"{digest.hex}.{uuid.uuid4().hex}.partial"
        path.touch()
        fill = _Fill(digest, path)
        self._fills[digest] = fill
        task = asyncio.create_task(self._fill(fill, client, registry, repository), name=f"site cache fill {digest}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return fill

    async def _fill(self, fill: _Fill, client: RegistryClient, registry: str, repository: str) -> None:
        label = f"blob {registry}/{repository}@{fill.digest}"
        try:
            await self._fetch(fill, client, registry, repository, label)
            # Published before the readers' streams end: a runtime that got the whole blob
            # can count on it being stored (its next pull, a restart, another replica).
            await self.store.publish(fill.digest, fill.path, fill.received)
            fill.verified = True
            fill.advanced()
        except WaveError as exc:
            log.warning("%s: %s; nothing kept", self.store.label, exc.message)
            fill.failed(exc)
        except asyncio.CancelledError:
            fill.failed(WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: the fetch was stopped (shutdown)"))
            raise
        except Exception as exc:
            log.exception("%s: fetching %s failed; nothing kept", self.store.label, label)
            fill.failed(WaveError(Errors.INTERNAL, f"{label}: the site cache failed ({type(exc).__name__})"))
        else:
            self._metrics.blob_cache_requests.labels("fill").inc()
            self._metrics.blob_cache_filled_bytes.inc(fill.received)
        finally:
            if self._fills.get(fill.digest) is fill:
                del self._fills[fill.digest]
            fill.path.unlink(missing_ok=True)

    async def _fetch(self, fill: _Fill, client: RegistryClient, registry: str, repository: str, label: str) -> None:
        """The upstream's bytes into the fill's file, each chunk announced to readers; then checked."""
        answer = await upstream_blob(client, registry, repository, fill.digest, "GET")
        if not isinstance(answer, Stream) or answer.partial:
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {registry} gave no whole blob to keep")
        try:
            fill.length.set_result(answer.length)
            spool = _Spool(fill.path)
            try:
                async for chunk in answer.chunks:
                    fill.arrived(chunk)
                    fill.stored(await spool.add(chunk))
                fill.stored(await spool.finish())
            finally:
                spool.close()
        finally:
            await answer.close()
        if answer.length is not None and fill.received != answer.length:
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {registry} sent {fill.received} of {answer.length} bytes",
            )
        if spool.hexdigest() != fill.digest.hex:
            raise WaveError(
                Errors.DIGEST_INVALID,
                f"{label}: registry {registry} sent bytes of another digest (sha256:{spool.hexdigest()})",
            )
