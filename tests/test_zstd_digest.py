"""The zstd digesting path, on bytes: the compression is told by the magic, the tar
digest is the decompressed stream's however it is chunked or framed, a truncated or
foreign stream and a bomb are refused as gzip ones are, and packing in zstd is
reproducible."""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import tarfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from wave_grpc.image.compression import Compression, ZstdFrameError, ZstdFrames, sniff
from wave_grpc.image.layers import LayerDigester, LayerFormatError, LayerLimits, digest_layer, pack_directory
from wave_grpc.image.tarcheck import TarCheckError

SKIPPABLE = b"\x5e\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"toc"


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _zstd_frames(data: bytes, frames: int, level: int = 3, checksum: bool = True) -> bytes:
    cuts = [len(data) * i // frames for i in range(frames + 1)]
    compressor = zstandard.ZstdCompressor(level=level, write_checksum=checksum)
    return b"".join(compressor.compress(data[a:b]) for a, b in itertools.pairwise(cuts))


def _digest_in_chunks(data: bytes, sizes: list[int], limits: LayerLimits | None = None) -> LayerDigester:
    digester = LayerDigester(limits)
    position = 0
    for size in sizes:
        digester.update(data[position : position + size])
        position += size
    digester.update(data[position:])
    return digester


def test_the_magic_tells_the_compression() -> None:
    assert sniff(b"\x28\xb5\x2f\xfd\x00") is Compression.ZSTD
    assert sniff(b"\x28\xb5") is None  # could still be zstd
    assert sniff(b"\x1f\x8b\x08") is Compression.GZIP
    assert sniff(b"PK\x03\x04") is Compression.GZIP  # refused by the gzip reader, as always
    assert Compression.of_record("") is Compression.GZIP
    assert Compression.of_record("zstd") is Compression.ZSTD


@settings(max_examples=60, deadline=None)
@given(
    files=st.dictionaries(st.from_regex(r"[a-z]{1,12}", fullmatch=True), st.binary(max_size=3000), max_size=4),
    frames=st.integers(1, 4),
    level=st.integers(1, 12),
    checksum=st.booleans(),
    skippable=st.booleans(),
    sizes=st.lists(st.integers(0, 700), max_size=12),
)
def test_zstd_digests_are_the_decompressed_streams_however_chunked_or_framed(
    files: dict[str, bytes], frames: int, level: int, checksum: bool, skippable: bool, sizes: list[int]
) -> None:
    tar = _tar(files)
    data = _zstd_frames(tar, frames, level, checksum) + (SKIPPABLE if skippable else b"")
    digester = _digest_in_chunks(data, sizes, LayerLimits())
    digests = digester.finish()
    digester.check_tar()
    assert digests.compression is Compression.ZSTD
    assert str(digests.gzip_digest) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digests.gzip_size == len(data)
    assert str(digests.tar_digest) == "sha256:" + hashlib.sha256(tar).hexdigest()
    assert digest_layer(data) == digests


@settings(max_examples=60, deadline=None)
@given(payload=st.binary(min_size=1, max_size=4000), cut=st.integers(1, 10_000), sizes=st.lists(st.integers(0, 300)))
def test_a_truncated_zstd_stream_is_refused_however_chunked(payload: bytes, cut: int, sizes: list[int]) -> None:
    data = _zstd_frames(payload, 1)
    # Past the magic: shorter heads are read as gzip, as any stream that is not zstd is.
    truncated = data[: 4 + cut % (len(data) - 4)]
    with pytest.raises(LayerFormatError, match=r"truncated|not a zstd stream"):
        _digest_in_chunks(truncated, sizes).finish()


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(st.binary(max_size=2000), min_size=1, max_size=3), sizes=st.lists(st.integers(1, 300)))
def test_the_frame_follower_is_on_a_boundary_exactly_between_frames(parts: list[bytes], sizes: list[int]) -> None:
    compressor = zstandard.ZstdCompressor(write_checksum=True)
    pieces = [compressor.compress(part) for part in parts] + [SKIPPABLE]
    # Where each frame ends, by construction.
    boundaries = {sum(len(piece) for piece in pieces[: i + 1]) for i in range(len(pieces))}
    stream = b"".join(pieces)
    frames = ZstdFrames()
    position = 0
    for size in [*sizes, len(stream)]:
        frames.feed(stream[position : position + size])
        position = min(position + size, len(stream))
        assert frames.offset == position
        assert frames.at_boundary == (position in boundaries)
    assert frames.frames == len(parts)


def test_bytes_that_are_no_zstd_frame_are_named() -> None:
    with pytest.raises(ZstdFrameError, match="no zstd frame starts at byte 0"):
        ZstdFrames().feed(b"not zstd at all")
    valid = _zstd_frames(b"x", 1)
    with pytest.raises(LayerFormatError, match=r"not a zstd stream .*no zstd frame starts at byte"):
        digest_layer(valid + b"garbage!")


def test_a_zstd_bomb_ends_early_as_a_gzip_one_does() -> None:
    zeros = b"\0" * (96 << 20)
    limits = LayerLimits(max_inflated_size=64 << 20)
    for compressed in (zstandard.ZstdCompressor(level=19).compress(zeros), gzip.compress(zeros, 9, mtime=0)):
        digester = LayerDigester(limits)
        with pytest.raises(LayerFormatError, match=r"\[layers\].max_inflated_size"):
            digester.update(compressed)
    ratio = LayerLimits(max_inflation_ratio=200)
    with pytest.raises(LayerFormatError, match=r"\[layers\].max_inflation_ratio"):
        LayerDigester(ratio).update(zstandard.ZstdCompressor(level=19).compress(zeros))


def test_a_zstd_non_tar_is_refused_by_the_tar_check() -> None:
    digester = LayerDigester(LayerLimits())
    digester.update(zstandard.ZstdCompressor().compress(b"plain text that is not a tar archive\n" * 50))
    digester.finish()
    with pytest.raises(TarCheckError, match="is not a tar archive"):
        digester.check_tar()


def test_packing_in_zstd_is_reproducible_and_verifies(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr" / "bin").mkdir(parents=True)
    (root / "usr" / "bin" / "hello").write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    outputs = []
    for name in ("a", "b"):
        with (tmp_path / name).open("wb") as out:
            outputs.append(pack_directory(root, out, compression=Compression.ZSTD))
    assert outputs[0] == outputs[1]
    assert outputs[0].compression is Compression.ZSTD
    data = (tmp_path / "a").read_bytes()
    assert data.startswith(b"\x28\xb5\x2f\xfd")
    assert digest_layer(data) == outputs[0]
    with (tmp_path / "g").open("wb") as out:
        gzipped = pack_directory(root, out)
    assert gzipped.tar_digest == outputs[0].tar_digest
    assert gzipped.compression is Compression.GZIP
