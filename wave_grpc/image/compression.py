"""A layer's compression: known by its magic bytes, and the zstd frame structure.

gzip is the default and the only format Docker's manifest family can name; zstd
(RFC 8878) is an OCI layer type only. :class:`ZstdFrames` follows the frame and
block headers of a zstd stream without decompressing it, so a verifier knows
whether the stream ended on a frame boundary (the decompressor itself cannot tell
a truncated stream from one still arriving).
"""

from __future__ import annotations

from enum import StrEnum

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# RFC 8878 3.1.2: skippable frames carry 0x184D2A50..0x184D2A5F (little endian);
# zstd:chunked and seekable zstd keep their tables in them.
_SKIPPABLE_TAIL = b"\x2a\x4d\x18"


class Compression(StrEnum):
    """How a layer's bytes are compressed; the value is what the record keeps."""

    GZIP = "gzip"
    ZSTD = "zstd"

    @classmethod
    def of_record(cls, value: str) -> Compression:
        """A record's ``compression``: empty (records made before zstd) is gzip."""
        return cls(value) if value else cls.GZIP


def sniff(head: bytes) -> Compression | None:
    """The compression the first bytes announce; None while they could still be a zstd magic.

    Anything that is not zstd is read as gzip, so a stream of neither is refused by the
    gzip reader with the message it always had.
    """
    if head.startswith(ZSTD_MAGIC):
        return Compression.ZSTD
    if len(head) < len(ZSTD_MAGIC) and ZSTD_MAGIC.startswith(head):
        return None
    return Compression.GZIP


class ZstdFrameError(ValueError):
    """The bytes do not follow the zstd frame format."""


# Header sizes indexed by the Frame_Header_Descriptor's flags (RFC 8878 3.1.1.1).
_DICTIONARY_ID_SIZE = (0, 1, 2, 4)
_CONTENT_SIZE_SIZE = (0, 2, 4, 8)
_RESERVED_BLOCK_TYPE = 3


class ZstdFrames:
    """Follows a zstd stream's frames as bytes arrive; cost is per header, not per byte.

    ``at_boundary`` is True when every frame begun so far has ended (block contents and
    checksums are skipped by count); ``frames`` counts the data frames completed and
    ``offset`` the bytes followed.
    """

    _MAGIC, _SKIP_SIZE, _DESCRIPTOR, _HEADER, _BLOCK = range(5)

    def __init__(self) -> None:
        self._state = self._MAGIC
        self._want = 4
        self._head = b""
        self._skip = 0
        self._checksum = False
        self.frames = 0
        self.offset = 0

    @property
    def at_boundary(self) -> bool:
        return self._state == self._MAGIC and not self._head and self._skip == 0

    def feed(self, data: bytes) -> None:
        position = 0
        end = len(data)
        while position < end:
            if self._skip:
                step = min(self._skip, end - position)
                self._skip -= step
                position += step
                self.offset += step
                continue
            take = min(self._want - len(self._head), end - position)
            self._head += data[position : position + take]
            position += take
            self.offset += take
            if len(self._head) == self._want:
                header, self._head = self._head, b""
                self._advance(header)

    def _advance(self, header: bytes) -> None:
        if self._state == self._MAGIC:
            if header == ZSTD_MAGIC:
                self._state, self._want = self._DESCRIPTOR, 1
            elif header[1:] == _SKIPPABLE_TAIL and header[0] & 0xF0 == 0x50:
                self._state, self._want = self._SKIP_SIZE, 4
            else:
                raise ZstdFrameError(f"no zstd frame starts at byte {self.offset - len(header)}")
        elif self._state == self._SKIP_SIZE:
            self._skip = int.from_bytes(header, "little")
            self._state, self._want = self._MAGIC, 4
        elif self._state == self._DESCRIPTOR:
            descriptor = header[0]
            if descriptor & 0x08:
                raise ZstdFrameError("a zstd frame header sets its reserved bit")
            single_segment = bool(descriptor & 0x20)
            content_size_flag = descriptor >> 6
            self._checksum = bool(descriptor & 0x04)
            rest = (
                (0 if single_segment else 1)
                + _DICTIONARY_ID_SIZE[descriptor & 0x03]
                + (1 if single_segment and content_size_flag == 0 else _CONTENT_SIZE_SIZE[content_size_flag])
            )
            # A header with nothing after the descriptor goes straight to the blocks.
            self._state, self._want = (self._HEADER, rest) if rest else (self._BLOCK, 3)
        elif self._state == self._HEADER:
            self._state, self._want = self._BLOCK, 3
        else:
            self._block(int.from_bytes(header, "little"))

    def _block(self, block_header: int) -> None:
        last = block_header & 1
        block_type = (block_header >> 1) & 0x03
        size = block_header >> 3
        if block_type == _RESERVED_BLOCK_TYPE:
            raise ZstdFrameError("a zstd block has the reserved block type")
        # An RLE block holds one byte, repeated `size` times when decompressed.
        self._skip = 1 if block_type == 1 else size
        if last:
            self._skip += 4 if self._checksum else 0
            self.frames += 1
            self._state, self._want = self._MAGIC, 4
