"""The site cache: base blobs and pinned manifests of ``blobs = "cache"`` routes, kept near the runtimes.

A base blob of a cache route is fetched from the upstream once. The fetch is
written to a temporary file under ``[cache]`` staging while every runtime that
asked for the blob meanwhile reads that growing file (a fan-out: one upstream
request, all get the bytes as they arrive). The blob is published to the store
(wave_grpc/stores/cachestores.py) only after its digest and length matched; a
mismatch or a cut upstream publishes nothing, and the readers' streams end in
an error, which the gateway's blob handler turns into a cut connection, never a
wrong blob. The fetch belongs to the cache, not to the first runtime: one that
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
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from pathlib import Path

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.metrics import Metrics
from wave_grpc.registry.blobs import STREAM_CHUNK, BlobAnswer, LocalFile, Stream, upstream_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.cachestores import CacheStore

log = logging.getLogger(__name__)


class _Fill:
    """One upstream fetch of one blob into a temporary file that readers follow as it grows."""

    def __init__(self, digest: Digest, path: Path) -> None:
        self.digest = digest
        self.path = path
        self.written = 0
        self.verified = False
        self.failure: WaveError | None = None
        # The upstream's Content-Length (None: not given), once its headers arrived.
        self.length: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._progress = asyncio.Event()

    def advanced(self) -> None:
        progress, self._progress = self._progress, asyncio.Event()
        progress.set()

    def failed(self, failure: WaveError) -> None:
        self.failure = failure
        if not self.length.done():
            self.length.set_exception(failure)
            self.length.exception()  # retrieved here: a fill nobody follows is not an error to log
        self.advanced()

    def reader(self, label: str) -> tuple[AsyncGenerator[bytes, None], Callable[[], Awaitable[None]]]:
        """The blob's bytes as they are written, and how to release them. The file is opened
        now: once the fetch ends it is renamed or removed, and an open file outlives both."""
        fd = os.open(self.path, os.O_RDONLY)
        chunks = self._follow(fd, label)

        async def close() -> None:
            await chunks.aclose()
            os.close(fd)

        return chunks, close

    async def _follow(self, fd: int, label: str) -> AsyncGenerator[bytes, None]:
        """Ends only once the whole blob was verified and published; raises if the fetch failed first."""
        offset = 0
        while True:
            progress = self._progress
            if offset < self.written:
                chunk = os.pread(fd, min(STREAM_CHUNK, self.written - offset), offset)
                offset += len(chunk)
                yield chunk
                continue
            if self.verified:
                return
            if self.failure is not None:
                raise WaveError(self.failure.kind, f"{label}: {self.failure.message}")
            await progress.wait()


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
        return Stream(chunks=chunks, close=close, label=label, length=length)

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
            await self.store.publish(fill.digest, fill.path, fill.written)
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
            self._metrics.blob_cache_filled_bytes.inc(fill.written)
        finally:
            if self._fills.get(fill.digest) is fill:
                del self._fills[fill.digest]
            fill.path.unlink(missing_ok=True)

    async def _fetch(self, fill: _Fill, client: RegistryClient, registry: str, repository: str, label: str) -> None:
        """The upstream's bytes into the fill's file, each chunk announced to readers; then checked."""
        answer = await upstream_blob(client, registry, repository, fill.digest, "GET")
        if not isinstance(answer, Stream) or answer.partial:
            raise WaveError(Errors.UPSTREAM_UNAVAILABLE, f"{label}: registry {registry} gave no whole blob to keep")
        hasher = hashlib.sha256()
        try:
            fill.length.set_result(answer.length)
            fd = os.open(fill.path, os.O_WRONLY)
            try:
                async for chunk in answer.chunks:
                    os.write(fd, chunk)
                    hasher.update(chunk)
                    fill.written += len(chunk)
                    fill.advanced()
            finally:
                os.close(fd)
        finally:
            await answer.close()
        if answer.length is not None and fill.written != answer.length:
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE,
                f"{label}: registry {registry} sent {fill.written} of {answer.length} bytes",
            )
        if hasher.hexdigest() != fill.digest.hex:
            raise WaveError(
                Errors.DIGEST_INVALID,
                f"{label}: registry {registry} sent bytes of another digest (sha256:{hasher.hexdigest()})",
            )
