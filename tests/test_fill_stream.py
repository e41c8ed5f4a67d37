"""The site cache's fill, in process: readers served from memory, bounded memory, a wrong last chunk never completed.

The upstream is a fake ``Stream`` (no registry): these check how the fill moves bytes
(wave_grpc/stores/blobcache.py); tests/test_site_cache.py checks it against a real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import pytest

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.blobs import Stream
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores import blobcache
from wave_grpc.stores.blobcache import RETAINED_BYTES, SPOOL_BATCH, SPOOL_DEPTH, SiteCache
from wave_grpc.stores.cachestores import FileCacheStore

CHUNK = 256 << 10
# What a fill may hold in memory (its docstring): the retained bytes or the unwritten ones, plus a chunk.
MEMORY_BOUND = max(RETAINED_BYTES, (SPOOL_DEPTH + 1) * SPOOL_BATCH + CHUNK) + CHUNK


def blob_chunks(count: int) -> list[bytes]:
    return [os.urandom(CHUNK) for _ in range(count)]


def fake_upstream(chunks: list[bytes], site: SiteCache, digest: Digest, seen: list[int]) -> Any:
    """An ``upstream_blob`` that streams ``chunks``, noting the fill's bytes in memory before each."""

    async def upstream_blob(*_: object, **__: object) -> Stream:
        async def body() -> AsyncGenerator[bytes, None]:
            for chunk in chunks:
                fill = site._fills.get(digest)
                if fill is not None:
                    seen.append(fill._recent_bytes)
                yield chunk
                await asyncio.sleep(0)  # a network read in between

        async def close() -> None:
            return None

        return Stream(chunks=body(), close=close, label="fake", length=sum(map(len, chunks)))

    return upstream_blob


def cache_of(tmp_path: Path) -> tuple[SiteCache, FileCacheStore]:
    store = FileCacheStore(tmp_path / "cache")
    return SiteCache(store, tmp_path / "staging"), store


async def read_all(stream: Stream) -> tuple[list[bytes], WaveError | None]:
    got: list[bytes] = []
    try:
        async for chunk in stream.chunks:
            got.append(chunk)
    except WaveError as exc:
        return got, exc
    finally:
        await stream.close()
    return got, None


NO_CLIENT = cast(RegistryClient, object())


async def test_a_reader_that_keeps_up_gets_the_arriving_chunks_and_memory_stays_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = blob_chunks(96)  # 24 MiB: about twice what a fill may keep in memory
    data = b"".join(chunks)
    digest = Digest.of(data)
    site, store = cache_of(tmp_path)
    seen: list[int] = []
    monkeypatch.setattr(blobcache, "upstream_blob", fake_upstream(chunks, site, digest, seen))
    answer = await site.serve(NO_CLIENT, "r.example", "repo", digest, "GET", "")
    assert isinstance(answer, Stream)
    assert answer.verified
    got, failure = await read_all(answer)
    assert failure is None
    assert b"".join(got) == data
    # Served from memory as they arrived: the very objects the upstream gave, not copies from the file.
    assert sum(any(chunk is given for given in chunks) for chunk in got) == len(chunks)
    assert max(seen) <= MEMORY_BOUND
    assert (store.root / "blobs" / "sha256" / digest.hex).read_bytes() == data


async def test_a_late_reader_reads_what_left_memory_from_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = blob_chunks(96)
    data = b"".join(chunks)
    digest = Digest.of(data)
    site, _ = cache_of(tmp_path)
    monkeypatch.setattr(blobcache, "upstream_blob", fake_upstream(chunks, site, digest, []))
    first = await site.serve(NO_CLIENT, "r.example", "repo", digest, "GET", "")
    second = await site.serve(NO_CLIENT, "r.example", "repo", digest, "GET", "")
    assert isinstance(first, Stream)
    assert isinstance(second, Stream)
    fast = asyncio.create_task(read_all(first))
    await fast
    # The second reader starts only after the fill ended: the head of the blob left memory long ago.
    got, failure = await read_all(second)
    assert failure is None
    assert b"".join(got) == data


async def test_a_corrupt_last_chunk_fails_the_readers_and_publishes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = blob_chunks(20)
    digest = Digest.of(b"".join(chunks))
    last = bytearray(chunks[-1])
    last[-1] ^= 1
    chunks[-1] = bytes(last)
    site, store = cache_of(tmp_path)
    monkeypatch.setattr(blobcache, "upstream_blob", fake_upstream(chunks, site, digest, []))
    answer = await site.serve(NO_CLIENT, "r.example", "repo", digest, "GET", "")
    assert isinstance(answer, Stream)
    got, failure = await read_all(answer)
    # The stream raised instead of ending: the gateway's relay, which holds each chunk
    # back until the next arrives or the stream ends, cuts before the last byte goes out.
    assert failure is not None
    assert failure.kind == Errors.DIGEST_INVALID
    assert len(b"".join(got)) <= sum(map(len, chunks))
    assert not store.entries()
    assert not list((tmp_path / "staging").glob("*"))


def test_write_all_finishes_short_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.pwritev

    def short(fd: int, buffers: list[memoryview], offset: int) -> int:
        return real(fd, [buffers[0][:1000]], offset)  # a disk that takes 1000 bytes a call

    monkeypatch.setattr(os, "pwritev", short)
    chunks = [os.urandom(2500), os.urandom(10), os.urandom(4096)]
    path = tmp_path / "spool"
    path.write_bytes(b"x" * 7)
    fd = os.open(path, os.O_WRONLY)
    try:
        assert blobcache._write_all(fd, chunks, 7) == 6606
    finally:
        os.close(fd)
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(b"x" * 7 + b"".join(chunks)).digest()


async def test_a_spool_closed_mid_write_closes_its_file_only_after_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real = blobcache._write_all

    def slow(fd: int, chunks: list[bytes], offset: int) -> int:
        release.wait(10)
        return real(fd, chunks, offset)

    monkeypatch.setattr(blobcache, "_write_all", slow)
    path = tmp_path / "spool"
    path.touch()
    spool = blobcache._Spool(path)
    fd = spool._fd
    await spool.add(os.urandom(SPOOL_BATCH))  # one batch handed to a thread, which waits
    spool.close()  # as after a cancellation: the write is still under way
    os.fstat(fd)  # still open: its number cannot be reused under the write
    release.set()
    for _ in range(200):
        try:
            os.fstat(fd)
        except OSError:
            break
        await asyncio.sleep(0.01)
    else:
        pytest.fail("the spool's file stayed open after its last write")
    assert path.stat().st_size == SPOOL_BATCH
