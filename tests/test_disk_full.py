"""A full disk names the store that is full and its key, and leaves nothing half-written.

The stores are put on a real, small tmpfs (``mount -t tmpfs -o size=...``); where the
sandbox gives no mount privilege the real-disk tests are skipped and the injected
``OSError`` test still runs.
"""

from __future__ import annotations

import errno
import gzip
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from tests import components
from wave_grpc.errors import Errors, WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.stores.layers import ExpectedLayer, FileLayerStore
from wave_grpc.stores.sqlite import SqliteTokenStore


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted (by its path) when the test ends."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        # CI runs as root, like the machines this suite is for: a missing privilege is a failure.
        components.missing_component(f"a 1 MiB tmpfs for the disk-full tests (mount, as root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _big_layer() -> bytes:
    # Random bytes do not compress: the gzip is as big as the tar, bigger than the disk.
    return gzip.compress(os.urandom(3 << 20), compresslevel=1)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 256 << 10):
        yield data[start : start + (256 << 10)]


def _leftovers(root: Path) -> list[Path]:
    return [path for folder in ("tmp", "blobs", "tar-digests") for path in (root / folder).rglob("*") if path.is_file()]


async def test_a_full_layer_store_is_named_with_its_key_and_keeps_nothing(small_disk: Path) -> None:
    store = FileLayerStore(small_disk / "layers")
    try:
        with pytest.raises(WaveError) as caught:
            await store.put(_chunks(_big_layer()), ExpectedLayer("layers[0]"))
    finally:
        await store.close()
    assert caught.value.kind is Errors.STORE_FULL
    assert caught.value.kind.grpc_status is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"the layer store ([layers].store = file://{small_disk / 'layers'}) is full" in caught.value.message
    assert _leftovers(small_disk / "layers") == []


async def test_a_full_token_store_is_named_with_its_key(small_disk: Path) -> None:
    store = SqliteTokenStore(small_disk / "wave.db")
    record = pb.ContainerRecord(owner="alice", container_image="docker.io/library/alpine:latest")
    record.expiration.FromSeconds(4_000_000_000)
    record.container_config.env.extend(["X=" + "y" * 4000] * 16)
    with pytest.raises(WaveError) as caught:
        await _fill(store, record)
    await store.close()
    assert caught.value.kind is Errors.STORE_FULL
    assert f"the token store ([service].store = sqlite:///{small_disk / 'wave.db'}) is full" in caught.value.message


async def _fill(store: SqliteTokenStore, record: pb.ContainerRecord) -> None:
    for number in range(10_000):
        record.container_token = f"t{number:011d}"
        assert await store.put(record)


class _FullDisk(FileLayerStore):
    """A layer store whose tar-digest write finds the disk full (after the blob's bytes were written)."""

    def _meta_path(self, digest: object) -> Path:
        raise OSError(errno.EDQUOT, "Disk quota exceeded")


async def test_a_quota_hit_names_the_staging_store_and_removes_its_temporary_file(tmp_path: Path) -> None:
    store = _FullDisk(tmp_path / "staging", name="the layer staging directory ([layers].staging = /stage)")
    layer = gzip.compress(bytes(10240))  # an empty tar: its end-of-archive blocks
    try:
        with pytest.raises(WaveError) as caught:
            await store.put(_chunks(layer), ExpectedLayer("layers[1]"))
    finally:
        await store.close()
    assert caught.value.kind is Errors.STORE_FULL
    assert caught.value.message.startswith("the layer staging directory ([layers].staging = /stage) is full")
    assert _leftovers(tmp_path / "staging") == []
