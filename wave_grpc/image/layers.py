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
from typing import IO

from wave_grpc.errors import brief, invalid_argument
from wave_grpc.image.digest import Digest
from wave_grpc.image.tarcheck import TarChecker, TarPolicy

# Bound on bytes inflated per zlib call: a small gzip member can expand
# enormously, and the verifier must keep memory flat whatever it is fed.
_INFLATE_STEP = 1 << 20


@dataclass(frozen=True, slots=True)
class LayerDigests:
    gzip_digest: Digest
    gzip_size: int
    tar_digest: Digest


class LayerFormatError(ValueError):
    """The bytes are not a complete gzip stream, or inflate past a limit."""


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


class LayerDigester:
    """Feed tar.gz bytes in chunks; get the gzip digest, size and tar digest.

    Handles multi-member gzip (as ``gzip -d`` does) and trailing zero padding.
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
        data = chunk
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
        if self._inflater is not None or self._members == 0:
            raise LayerFormatError(f"the gzip stream is truncated after {self._size} bytes")
        return LayerDigests(
            Digest("sha256", self._gzip.hexdigest()), self._size, Digest("sha256", self._tar.hexdigest())
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
            f"{field}.gzip_digest", f"given {brief(gzip_digest)} but the bytes digest to {actual.gzip_digest}"
        )
    if gzip_size and gzip_size != actual.gzip_size:
        raise invalid_argument(f"{field}.gzip_size", f"given {gzip_size} but the bytes are {actual.gzip_size} long")
    if tar_digest and tar_digest != str(actual.tar_digest):
        raise invalid_argument(
            f"{field}.tar_digest",
            f"given {brief(tar_digest)} but the uncompressed tar digests to {actual.tar_digest}",
        )


class _DigestingGzipWriter:
    """A file-like sink for tarfile: hashes the tar, deflates it into a gzip file
    with a fixed 10-byte header (mtime 0, OS 255), so output is byte-identical
    on every machine with the same zlib."""

    def __init__(self, out: IO[bytes], on_bytes: Callable[[int], None] | None) -> None:
        self._out = out
        self._tar = hashlib.sha256()
        self._gzip = hashlib.sha256()
        self._size = 0
        self._crc = 0
        self._length = 0
        self._deflate = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS, 8)
        self._on_bytes = on_bytes
        self._emit(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")

    def _emit(self, data: bytes) -> None:
        if data:
            self._out.write(data)
            self._gzip.update(data)
            self._size += len(data)

    def write(self, data: bytes) -> int:
        self._tar.update(data)
        self._crc = zlib.crc32(data, self._crc)
        self._length += len(data)
        self._emit(self._deflate.compress(data))
        if self._on_bytes is not None:
            self._on_bytes(len(data))
        return len(data)

    def close(self) -> LayerDigests:
        self._emit(self._deflate.flush())
        self._emit(struct.pack("<II", self._crc, self._length & 0xFFFFFFFF))
        return LayerDigests(
            Digest("sha256", self._gzip.hexdigest()), self._size, Digest("sha256", self._tar.hexdigest())
        )


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    info.pax_headers = {}
    return info


def directory_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def pack_directory(root: Path, out: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> LayerDigests:
    """Pack the *contents* of ``root`` as a layer rooted at ``/`` (Wave's convention).

    Reproducible: entries sorted, uid/gid 0, no user names, mtime 0, PAX format,
    gzip mtime 0. The same directory always gives the same digests.
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
    writer = _DigestingGzipWriter(out, on_bytes)
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
