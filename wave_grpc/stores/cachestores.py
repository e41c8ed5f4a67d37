"""Where the site cache keeps verified blobs: a directory, or a registry repository.

Both hold content by digest only, and only content whose digest was checked
before it was published: a file appears by an atomic rename of a verified
temporary file; a registry blob by an upload the registry completes only
after the digest matched. So an entry is never half-written or wrong (the
lesson of a cache that once kept a 0-byte object as complete, after which
every pull of that layer failed for good).

The front that fills them, single flight and fan-out: wave_grpc/stores/blobcache.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.blobs import BlobAnswer, LocalFile, upstream_blob
from wave_grpc.registry.client import RegistryClient
from wave_grpc.registry.push import Repository
from wave_grpc.stores.layers import Collection

log = logging.getLogger(__name__)

# In a file:// store's root: digest -> until when (epoch seconds) a token needed it (FileCacheStore.protect).
REFERENCED_FILE = "referenced.json"


class CacheStore(Protocol):
    """What the site cache needs of where it keeps blobs."""

    label: str

    async def answer(self, digest: Digest, method: str, range_header: str) -> BlobAnswer | None:
        """How a stored blob is served (a local file, or the store registry's answer); None if absent."""
        ...

    async def read(self, digest: Digest, limit: int) -> bytes | None:
        """A small stored blob's bytes (a manifest, a config), unverified; None if absent or over ``limit``."""
        ...

    async def publish(self, digest: Digest, verified: Path, size: int) -> None:
        """Make the verified file ``verified`` the stored blob ``digest`` (moved or uploaded; gone afterwards)."""
        ...

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        """Store small verified bytes."""
        ...

    async def protect(self, referenced: Mapping[Digest, float], grace: float, *, dry_run: bool = False) -> set[Digest]:
        """What eviction must keep: ``referenced`` (each digest a live token needs, with the latest
        expiry, epoch seconds, of the tokens needing it) and whatever a token that expired less than
        ``grace`` seconds ago needed. ``dry_run`` remembers nothing new."""
        ...

    async def evict(self, max_size: int, keep: set[Digest], *, dry_run: bool = False) -> Collection:
        """Remove least recently used blobs not in ``keep`` until at most ``max_size`` bytes are stored."""
        ...


@dataclass(frozen=True, slots=True)
class _Entry:
    digest: Digest
    path: Path
    size: int
    used: float  # mtime: set when stored and on every hit


class FileCacheStore:
    """Blobs under ``root/blobs/sha256/<hex>``; a blob's mtime is when it was last served (LRU)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.label = f"site cache {root}"

    def _path(self, digest: Digest) -> Path:
        return self.root / "blobs" / digest.algorithm / digest.hex

    def _touch(self, path: Path) -> int | None:
        try:
            os.utime(path)
            return path.stat().st_size
        except FileNotFoundError:
            return None

    async def answer(self, digest: Digest, method: str, range_header: str) -> BlobAnswer | None:
        path = self._path(digest)
        return LocalFile(path) if self._touch(path) is not None else None

    async def read(self, digest: Digest, limit: int) -> bytes | None:
        path = self._path(digest)
        size = self._touch(path)
        if size is None or size > limit:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # evicted meanwhile
            return None

    async def publish(self, digest: Digest, verified: Path, size: int) -> None:
        final = self._path(digest)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Durable before it is visible: a crash must not leave a named, short file.
        await asyncio.to_thread(_fsync, verified)
        os.replace(verified, final)

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        final = self._path(digest)
        if final.exists():
            self._touch(final)
            return
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{digest.hex}.{uuid.uuid4().hex}.tmp")
        try:
            temporary.write_bytes(data)
            await self.publish(digest, temporary, len(data))
        finally:
            temporary.unlink(missing_ok=True)

    def entries(self) -> list[_Entry]:
        found = []
        for path in (self.root / "blobs" / "sha256").glob("*"):
            if path.name.startswith("."):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append(_Entry(Digest("sha256", path.name), path, stat.st_size, stat.st_mtime))
        return found

    @property
    def stored_bytes(self) -> int:
        return sum(entry.size for entry in self.entries())

    @property
    def _marks_path(self) -> Path:
        return self.root / REFERENCED_FILE

    def _read_marks(self) -> dict[Digest, float]:
        try:
            marks = json.loads(self._marks_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            # Losing the marks only shortens the grace of expired tokens' blobs; live ones are marked again now.
            log.warning("%s: cannot read %s (%s); starting it afresh", self.label, self._marks_path, exc)
            return {}
        if not isinstance(marks, dict):
            return {}
        return {
            Digest.parse(key): float(until)
            for key, until in marks.items()
            if Digest.is_digest(key) and isinstance(until, int | float)
        }

    async def protect(self, referenced: Mapping[Digest, float], grace: float, *, dry_run: bool = False) -> set[Digest]:
        # An expired token is gone from the token store (Redis drops it at once), so what live
        # tokens needed, and until when, is remembered here between collections. A digest needed
        # now takes its live tokens' expiry (a revoked token's later one is forgotten then).
        now = time.time()
        marks = self._read_marks()
        marks.update(referenced)
        marks = {digest: until for digest, until in marks.items() if until + grace > now}
        if not dry_run:
            self.root.mkdir(parents=True, exist_ok=True)
            temporary = self._marks_path.with_name(f".{REFERENCED_FILE}.{uuid.uuid4().hex}.tmp")
            try:
                remembered = {str(digest): until for digest, until in marks.items()}
                temporary.write_text(json.dumps(remembered, sort_keys=True))
                os.replace(temporary, self._marks_path)
            finally:
                temporary.unlink(missing_ok=True)
        return {*referenced, *marks}

    async def evict(self, max_size: int, keep: set[Digest], *, dry_run: bool = False) -> Collection:
        entries = sorted(self.entries(), key=lambda entry: entry.used)
        total = sum(entry.size for entry in entries)
        removed: list[tuple[Digest, int]] = []
        for entry in entries:
            if not max_size or total <= max_size:
                break
            if entry.digest in keep:
                continue
            if not dry_run:
                entry.path.unlink(missing_ok=True)
            removed.append((entry.digest, entry.size))
            total -= entry.size
        if total > max_size > 0:
            log.warning(
                "%s holds %d bytes, over [cache].max_size = %d, all of them referenced by live tokens",
                self.label,
                total,
                max_size,
            )
        return Collection(tuple(removed), len(entries) - len(removed))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RegistryCacheStore:
    """Blobs in a registry repository shared by every replica; runtimes are sent there as for
    the oci:// layer store (a redirect when it needs no credential, else a stream)."""

    def __init__(self, client: RegistryClient, registry: str, repository: str) -> None:
        self._repository = Repository(client, registry, repository)
        self.client = client
        self.label = f"site cache {registry}/{repository}"

    async def answer(self, digest: Digest, method: str, range_header: str) -> BlobAnswer | None:
        repository = self._repository
        if await repository.blob_size(digest) is None:
            return None
        return await upstream_blob(self.client, repository.registry, repository.name, digest, method, range_header)

    async def read(self, digest: Digest, limit: int) -> bytes | None:
        repository = self._repository
        try:
            return await self.client.get_blob(repository.registry, repository.name, digest, limit)
        except WaveError as exc:
            if exc.kind in (Errors.BLOB_UNKNOWN, Errors.NAME_UNKNOWN):
                return None
            raise

    async def publish(self, digest: Digest, verified: Path, size: int) -> None:
        try:
            if await self._repository.blob_size(digest) is None:
                # The registry completes the upload only once the bytes hash to ``digest``.
                await self._repository.push_blob(digest, size, verified)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(verified)

    async def put_bytes(self, digest: Digest, data: bytes) -> None:
        if await self._repository.blob_size(digest) is None:
            await self._repository.push_blob(digest, len(data), data)

    async def protect(self, referenced: Mapping[Digest, float], grace: float, *, dry_run: bool = False) -> set[Digest]:
        return set(referenced)  # nothing is evicted here (below)

    async def evict(self, max_size: int, keep: set[Digest], *, dry_run: bool = False) -> Collection:
        # A registry's blobs have no last-use time the API shows; its own retention and
        # garbage collection bound it (README, "Site cache").
        return Collection((), 0)


def sweep_partial(staging: Path, older_than: float) -> int:
    """Remove partial fetches a stopped process left behind; answers how many."""
    removed = 0
    cutoff = time.time() - older_than
    for path in staging.glob("*.partial"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
    return removed
