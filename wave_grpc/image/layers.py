"""Layer bytes: streaming verification, ``data:`` locations, reproducible packing."""

from __future__ import annotations

import binascii
import hashlib
import os
import stat
import struct
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, cast

import zstandard

from wave_grpc.errors import invalid_argument, shown
from wave_grpc.image.compression import Compression, ZstdFrameError, ZstdFrames, sniff
from wave_grpc.image.digest import Digest
from wave_grpc.image.tarcheck import TarChecker, TarPolicy

# Bound on bytes inflated per zlib call: a small gzip member can expand
# enormously, and the verifier must keep memory flat whatever it is fed.
_INFLATE_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class LayerDigests:
    """A layer's digests; ``gzip_digest`` and ``gzip_size`` (Wave's names) are of the
    compressed bytes, whichever their ``compression``."""

    gzip_digest: Digest
    gzip_size: int
    tar_digest: Digest
    compression: Compression = Compression.GZIP


class LayerFormatError(ValueError):
    """The bytes are not a complete gzip or zstd stream, or inflate past a limit."""


# Below this inflated size the ratio is not judged: small layers of zeros are ordinary.
RATIO_FLOOR = 64 << 20


@dataclass(frozen=True, slots=True)
class LayerLimits:
    """What a layer may inflate to, and what its tar may hold (``[layers]`` in the config)."""

    max_inflated_size: int = 32 << 30
    max_inflation_ratio: int = 200
    allow_devices: bool = False

    @property
    def tar_policy(self) -> TarPolicy:
        return TarPolicy(allow_devices=self.allow_devices)


class _Sink:
    """What the zstd decompressor writes its output to, a bounded piece at a time."""

    def __init__(self, take: Callable[[bytes], None]) -> None:
        self._take = take

    def write(self, data: bytes) -> int:
        self._take(bytes(data))
        return len(data)


class _ZstdInflater:
    """zstd bytes in; tar bytes out to ``take`` in pieces of at most ``_INFLATE_STEP``.

    The decompressor's own window limit (128 MiB, as ``zstd -d`` without ``--memory``)
    bounds its memory; a bomb is stopped by ``take`` raising mid-write.
    """

    def __init__(self, take: Callable[[bytes], None]) -> None:
        self._frames = ZstdFrames()
        # The writer only ever calls the sink's write(); zstandard types it as a whole file.
        sink = cast(IO[bytes], _Sink(take))
        self._writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=_INFLATE_STEP, closefd=False)

    def feed(self, data: bytes) -> None:
        try:
            self._frames.feed(data)
            self._writer.write(data)
        except (ZstdFrameError, zstandard.ZstdError) as exc:
            raise LayerFormatError(f"not a zstd stream ({exc})") from None

    @property
    def complete(self) -> bool:
        return self._frames.frames > 0 and self._frames.at_boundary


class LayerDigester:
    """Feed tar.gz or tar.zst bytes in chunks; get the compressed digest and size, the
    tar digest and the compression (known by the first bytes' magic).

    Handles multi-member gzip (as ``gzip -d`` does) and trailing zero padding, and
    multi-frame zstd (skippable frames included, as zstd:chunked writes them).
    Memory stays flat: inflated output is hashed in bounded steps and dropped.

    With ``limits``, the same pass also checks the tar a runtime will unpack
    (wave_grpc/image/tarcheck.py) and ends a decompression bomb early: past
    ``max_inflated_size``, or past ``max_inflation_ratio`` times the compressed
    bytes read so far, :meth:`update` raises at once. Tar problems are reported
    by :meth:`check_tar` after the digests, so a caller who sent other bytes than
    they claimed hears that first.
    """

    def __init__(self, limits: LayerLimits | None = None) -> None:
        self._gzip = hashlib.sha256()
        self._tar = hashlib.sha256()
        self._size = 0
        self._inflated = 0
        self._inflater: zlib._Decompress | None = None
        self._members = 0
        # Until the first bytes tell the compression, they wait here.
        self._head = b""
        self._compression: Compression | None = None
        self._zstd: _ZstdInflater | None = None
        self._limits = limits
        self._checker = TarChecker(limits.tar_policy) if limits is not None else None

    def _inflated_bytes(self, out: bytes) -> None:
        self._tar.update(out)
        if self._checker is not None:
            self._checker.feed(out)
        self._inflated += len(out)
        limits = self._limits
        if limits is None:
            return
        if self._inflated > limits.max_inflated_size:
            raise LayerFormatError(
                f"inflates past {limits.max_inflated_size} bytes, the limit of [layers].max_inflated_size"
            )
        ratio = limits.max_inflation_ratio
        if ratio and self._inflated > RATIO_FLOOR and self._inflated > ratio * self._size:
            raise LayerFormatError(
                f"inflates more than {ratio} times its compressed size "
                f"({self._inflated} bytes from {self._size}), the limit of [layers].max_inflation_ratio"
            )

    @property
    def size(self) -> int:
        return self._size

    def update(self, chunk: bytes) -> None:
        self._gzip.update(chunk)
        self._size += len(chunk)
        if self._compression is None:
            self._head += chunk
            compression = sniff(self._head)
            if compression is None:
                return
            self._start(compression)
        else:
            self._decompress(chunk)

    def _start(self, compression: Compression) -> None:
        self._compression = compression
        if compression is Compression.ZSTD:
            self._zstd = _ZstdInflater(self._inflated_bytes)
        head, self._head = self._head, b""
        self._decompress(head)

    def _decompress(self, data: bytes) -> None:
        if self._zstd is not None:
            self._zstd.feed(data)
        else:
            self._inflate(data)

    def _inflate(self, data: bytes) -> None:
        while data:
            if self._inflater is None:
                if self._members and not data.strip(b"\0"):
                    return
                self._inflater = zlib.decompressobj(wbits=31)
            inflater = self._inflater
            while True:
                try:
                    out = inflater.decompress(data, _INFLATE_STEP)
                except zlib.error as exc:
                    raise LayerFormatError(f"not a gzip stream ({exc})") from None
                self._inflated_bytes(out)
                if inflater.eof:
                    data = inflater.unused_data
                    self._inflater = None
                    self._members += 1
                    break
                data = inflater.unconsumed_tail
                if not data and len(out) < _INFLATE_STEP:
                    return

    def finish(self) -> LayerDigests:
        if self._compression is None:
            # Too few bytes to tell: read as gzip, as every stream that is not zstd is.
            self._start(Compression.GZIP)
        if self._zstd is not None:
            if not self._zstd.complete:
                raise LayerFormatError(f"the zstd stream is truncated after {self._size} bytes")
        elif self._inflater is not None or self._members == 0:
            raise LayerFormatError(f"the gzip stream is truncated after {self._size} bytes")
        return LayerDigests(
            Digest("sha256", self._gzip.hexdigest()),
            self._size,
            Digest("sha256", self._tar.hexdigest()),
            self._compression or Compression.GZIP,
        )

    def check_tar(self) -> None:
        """Raise :class:`TarCheckError` when the tar would not unpack as it says (no-op without limits)."""
        if self._checker is not None:
            self._checker.finish()


def digest_layer(data: bytes) -> LayerDigests:
    digester = LayerDigester()
    view = memoryview(data)
    for start in range(0, len(data), 4 << 20):
        digester.update(bytes(view[start : start + (4 << 20)]))
    return digester.finish()


def decode_data_location(location: str, field: str) -> bytes:
    """``data:<base64>`` (Wave) or RFC 2397 ``data:<type>;base64,<base64>``."""
    payload = location[len("data:") :]
    if "," in payload:
        header, payload = payload.split(",", 1)
        if not header.endswith(";base64"):
            raise invalid_argument(field, "a data: location must be base64 encoded (data:<type>;base64,<data>)")
    try:
        # strict_mode validates in C; a regex pass over tens of MB costs more than the decode.
        data = binascii.a2b_base64(payload, strict_mode=True)
    except (binascii.Error, ValueError):
        # Line-wrapped base64 (as `base64` prints it) is still base64.
        compact = "".join(payload.split())
        try:
            data = binascii.a2b_base64(compact, strict_mode=True)
        except (binascii.Error, ValueError):
            raise invalid_argument(
                field, "the data: location is not valid base64; send data:<base64 of the tar.gz>"
            ) from None
    if not data:
        raise invalid_argument(field, "the data: location is empty")
    return data


def check_layer_digests(field: str, actual: LayerDigests, gzip_digest: str, gzip_size: int, tar_digest: str) -> None:
    """Compare what the caller claimed with what the bytes are; name both on a mismatch."""
    if gzip_digest and gzip_digest != str(actual.gzip_digest):
        raise invalid_argument(
            f"{field}.gzip_digest", f"given {shown(gzip_digest)} but the bytes digest to {actual.gzip_digest}"
        )
    if gzip_size and gzip_size != actual.gzip_size:
        raise invalid_argument(f"{field}.gzip_size", f"given {gzip_size} but the bytes are {actual.gzip_size} long")
    if tar_digest and tar_digest != str(actual.tar_digest):
        raise invalid_argument(
            f"{field}.tar_digest",
            f"given {shown(tar_digest)} but the uncompressed tar digests to {actual.tar_digest}",
        )


class _DigestingWriter:
    """A file-like sink for tarfile: hashes the tar, compresses it into ``out`` and
    hashes what is written there."""

    compression = Compression.GZIP

    def __init__(self, out: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        self._out = out
        self._tar = hashlib.sha256()
        self._compressed = hashlib.sha256()
        self._size = 0
        self._on_bytes = on_bytes

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._compressed.update(data)
            self._size += len(data)

    def _compress(self, data: bytes) -> bytes:
        raise NotImplementedError

    def _flush(self) -> bytes:
        raise NotImplementedError

    def write(self, data: bytes) -> int:
        self._tar.update(data)
        self._emit(self._compress(data))
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        return len(data)

    def close(self) -> LayerDigests:
        self._emit(self._flush())
        return LayerDigests(
            Digest("sha256", self._compressed.hexdigest()),
            self._size,
            Digest("sha256", self._tar.hexdigest()),
            self.compression,
        )


class _DigestingGzipWriter(_DigestingWriter):
    """gzip with a fixed 10-byte header (mtime 0, OS 255), so output is byte-identical
    on every machine with the same zlib."""

    def __init__(self, out: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        super().__init__(out, on_bytes)
        self._crc = 0
        self._length = 0
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
        self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _compress(self, data: bytes) -> bytes:
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)
        return self._deflate.compress(data)

    def _flush(self) -> bytes:
        return self._deflate.flush() + struct.pack("<II", self._crc, self._length & 0xFFFFFFFF)


# zstd's default level; one thread, so the same zstandard build gives the same bytes.
ZSTD_LEVEL = 3


class _DigestingZstdWriter(_DigestingWriter):
    """One zstd frame with a content checksum (runtimes check it when they unpack)."""

    compression = Compression.ZSTD

    def __init__(self, out: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        super().__init__(out, on_bytes)
        self._zstd = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=0).compressobj()

    def _compress(self, data: bytes) -> bytes:
        return self._zstd.compress(data)

    def _flush(self) -> bytes:
        return self._zstd.flush()


_WRITERS: dict[Compression, type[_DigestingWriter]] = {
    Compression.GZIP: _DigestingGzipWriter,
    Compression.ZSTD: _DigestingZstdWriter,
}


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.pax_headers = {}
    return info


def directory_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def pack_directory(
    root: Path,
    out: IO[bytes],
    on_bytes: Callable[[int], None] | None = None,
    compression: Compression = Compression.GZIP,
) -> LayerDigests:
    """Pack the *contents* of ``root`` as a layer rooted at ``/`` (Wave's convention).

    Reproducible: entries sorted, uid/gid 0, no user names, mtime 0, PAX format,
    gzip mtime 0 (zstd: one frame at a fixed level). The same directory always
    gives the same digests.
    """
    if not root.is_dir():
        raise invalid_argument("--layer", f"{root} is not a directory")
    # One global order by archive path (a parent always sorts before its children),
    # so the bytes do not depend on how the file system lists a directory.
    entries = sorted(
        (Path(dirpath) / name).relative_to(root).as_posix()
        for dirpath, dirnames, filenames in os.walk(root)  # symlinked directories are not followed
        for name in (*dirnames, *filenames)
    )
    writer = _WRITERS[compression](out, on_bytes)
    with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for arcname in entries:
            path = root / arcname
            info = _normalise(tar.gettarinfo(str(path), arcname))
            if stat.S_ISREG(path.lstat().st_mode):
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            elif info.isdir() or info.issym() or info.islnk():
                tar.addfile(info)
    return writer.close()
