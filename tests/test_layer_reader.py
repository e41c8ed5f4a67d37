"""The gateway opens only a layer reader; the service's writer releases its threads on close."""

from __future__ import annotations

from pathlib import Path

import pytest

from wave_grpc.config import parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.registry.blobs import LocalFile
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.layers import FileLayerReader, FileLayerStore
from wave_grpc.stores.oci import RegistryLayerReader
from wave_grpc.stores.open import open_layer_reader

ABSENT = Digest.of(b"never stored")


async def test_a_file_reader_makes_nothing_and_answers_absent_blobs_unknown(tmp_path: Path) -> None:
    root = tmp_path / "layers"
    config = parse_config({"layers": {"store": f"file://{root}"}}, "<test>")
    reader = open_layer_reader(config, RegistryClient(config))
    assert isinstance(reader, FileLayerReader)
    assert not isinstance(reader, FileLayerStore)
    assert not root.exists()  # no directories, no sweep, no walk of the blobs
    assert await reader.size(ABSENT) is None
    with pytest.raises(WaveError) as raised:
        await reader.answer(ABSENT, "GET")
    assert raised.value.kind is Errors.BLOB_UNKNOWN


async def test_a_reader_serves_what_the_writer_stored(tmp_path: Path) -> None:
    writer = FileLayerStore(tmp_path)
    path = tmp_path / "blobs" / "sha256" / ABSENT.hex
    path.write_bytes(b"never stored")
    reader = FileLayerReader(tmp_path)
    assert await reader.size(ABSENT) == len(b"never stored")
    assert await reader.answer(ABSENT, "GET") == LocalFile(path)
    await writer.close()
    assert writer._pool._shutdown  # the verification threads are released


def test_an_oci_store_is_read_through_the_registry_client(tmp_path: Path) -> None:
    config = parse_config({"layers": {"store": "oci://registry.example.com/wave/layers"}}, "<test>")
    reader = open_layer_reader(config, RegistryClient(config))
    assert isinstance(reader, RegistryLayerReader)
    assert (reader.registry, reader.repository) == ("registry.example.com", "wave/layers")
