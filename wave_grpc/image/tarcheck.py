"""What a runtime will unpack: a one-pass check of the tar inside a layer.

The checker is fed the inflated bytes while the layer is hashed, so the check
costs no second pass and no buffering beyond one header (or one bounded PAX or
GNU long-name record). It reads every header to the end of the archive, as Go's
``archive/tar`` (containerd, podman, skopeo, docker) does, and refuses what
would make a pull fail or let an entry land outside the image's root:

- content that is not a tar, a truncated archive, a bad header checksum, a
  single zero block inside the archive;
- sizes that disagree with the data: a header-only entry (link, directory,
  device, FIFO) with data, a PAX record whose length is wrong, a bad number;
- entry names and hard-link targets that leave the root after normalisation
  (``../x``), and entries written through a symlink of the same layer that
  points out of the root;
- character and block devices, unless allowed;
- entry types runtimes do not unpack alike (GNU sparse files, unknown types).

Whiteouts (``.wh.<name>``, ``.wh..wh..opq``) are ordinary entries here: they
are how an augmentation removes a base file. Absolute names are fine (runtimes
strip the leading ``/``); an absolute symlink target is resolved from the
image's root, as runtimes resolve it, so it never leaves the root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BLOCK = 512
_ZERO_BLOCK = bytes(BLOCK)
_REGULAR = frozenset("0\x007")
_DEVICES = frozenset("34")  # character and block devices
_HEADER_ONLY = frozenset("1256") | _DEVICES  # hard link, symlink, directory, FIFO, devices: no data
_METADATA = frozenset("xgLK")  # PAX per-entry and global headers, GNU long name and long link
# Symlinks followed while resolving one path; more is a loop (Linux allows 40).
_MAX_HOPS = 40


class TarCheckError(ValueError):
    """The layer's tar would not unpack as it says (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class TarPolicy:
    allow_devices: bool = False
    # A PAX or GNU long-name record is buffered whole: bounded so it cannot grow memory.
    max_metadata_bytes: int = 1 << 20
    # Symlinks are remembered to catch writes through them: bounded for the same reason.
    max_symlinks: int = 200_000


def _cstring(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _number(field: bytes, what: str) -> int:
    """An octal header number, or GNU base-256 (high bit set) for big values."""
    if field and field[0] & 0x80:
        if field[0] == 0xFF:
            raise TarCheckError(f"the {what} field is negative")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarCheckError(f"the {what} field {text[:24]!r} is not a number") from None


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _components(name: str) -> list[str] | None:
    """The name's path components under the root, or None when it climbs out of it."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(part)
    return out


def _short(name: str) -> str:
    return repr(name if len(name) <= 80 else name[:80] + "...")


class TarChecker:
    """Feed inflated layer bytes in any chunking; :meth:`finish` raises what was wrong, if anything."""

    def __init__(self, policy: TarPolicy = TarPolicy()) -> None:
        self._policy = policy
        self._header = bytearray()
        self._skip = 0  # bytes of the current entry's data (and padding) still to pass
        self._meta = bytearray()
        self._meta_type = ""
        self._meta_need = 0
        self._meta_pad = 0
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._zero_blocks = 0
        self._ended = False
        self._offset = 0  # archive offset of the next header, for messages
        self._entries = 0
        self._symlinks: dict[str, str] = {}
        self._error: str | None = None

    @property
    def error(self) -> str | None:
        return self._error

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end and self._error is None and not self._ended:
            if self._skip:
                take = min(self._skip, end - pos)
                self._skip -= take
                pos += take
            elif self._meta_need:
                take = min(self._meta_need, end - pos)
                self._meta += view[pos : pos + take]
                self._meta_need -= take
                pos += take
                if not self._meta_need:
                    self._skip = self._meta_pad
                    self._guard(self._end_metadata)
            else:
                take = min(BLOCK - len(self._header), end - pos)
                self._header += view[pos : pos + take]
                pos += take
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._guard(self._read_header, block)
                    self._offset += BLOCK

    def finish(self) -> None:
        """Raise :class:`TarCheckError` if the archive is malformed, truncated or unsafe."""
        if self._error is None and not self._ended:
            if self._header or self._skip or self._meta_need:
                where = "inside a header" if self._header or self._meta_need else "inside an entry's data"
                what = "is not a tar archive" if self._entries == 0 else "is a truncated tar archive"
                self._error = f"{what}: it ends {where}"
            elif self._zero_blocks == 1:
                self._error = "is a truncated tar archive: it ends after a single zero block"
        if self._error is not None:
            raise TarCheckError(self._error)

    def _guard(self, step: Callable[..., None], *args: bytes) -> None:
        try:
            step(*args)
        except TarCheckError as exc:
            self._error = str(exc)

    # -- headers ------------------------------------------------------------------

    def _read_header(self, block: bytes) -> None:
        if block == _ZERO_BLOCK:
            self._zero_blocks += 1
            if self._zero_blocks == 2:
                self._ended = True  # what follows the end-of-archive marker is not read by runtimes
            return
        if self._zero_blocks:
            raise TarCheckError(
                f"is a malformed tar archive: a zero block at byte {self._offset - BLOCK} is not the end"
            )
        try:
            stored = _number(block[148:156], "checksum")
        except TarCheckError:
            stored = -1  # not even a number: judged as a bad checksum below
        unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
        signed = sum(b - 256 if b > 127 else b for b in block[:148]) + 8 * 32
        signed += sum(b - 256 if b > 127 else b for b in block[156:])
        if stored not in (unsigned, signed):
            if self._entries == 0:
                raise TarCheckError("is not a tar archive (its first block is not a tar header)")
            raise TarCheckError(f"is a malformed tar archive: the header at byte {self._offset} has a bad checksum")
        kind = chr(block[156])
        size = _number(block[124:136], "size")
        if kind in _METADATA:
            if size > self._policy.max_metadata_bytes:
                raise TarCheckError(
                    f"has a {size}-byte PAX or long-name record at byte {self._offset}, over the "
                    f"{self._policy.max_metadata_bytes}-byte limit"
                )
            self._meta_type = kind
            self._meta = bytearray()
            self._meta_need = size
            self._meta_pad = _padded(size) - size
            if not size:
                self._end_metadata()
            return
        name = _cstring(block[0:100])
        if block[257:263] == b"ustar\0":  # POSIX: a prefix field extends the name
            prefix = _cstring(block[345:500])
            if prefix:
                name = f"{prefix}/{name}"
        link = _cstring(block[157:257])
        if self._long_name is not None:
            name = self._long_name
        if self._long_link is not None:
            link = self._long_link
        name = self._pax.get("path", name)
        link = self._pax.get("linkpath", link)
        if "size" in self._pax:
            size = self._pax_number("size")
        self._pax, self._long_name, self._long_link = {}, None, None
        self._entries += 1
        self._check_entry(kind, name, link, size)
        self._skip = _padded(size) if kind in _REGULAR else 0

    def _pax_number(self, key: str) -> int:
        value = self._pax[key]
        if not value.isdigit():
            raise TarCheckError(f"has a PAX {key} record {value[:24]!r} that is not a number")
        return int(value)

    def _end_metadata(self) -> None:
        data = bytes(self._meta)
        self._meta = bytearray()
        if self._meta_type in "LK":
            value = _cstring(data)
            if self._meta_type == "L":
                self._long_name = value
            else:
                self._long_link = value
            return
        records = _pax_records(data, self._offset)
        if self._meta_type == "x":
            self._pax = records
            if any(key.startswith("GNU.sparse.") for key in records):
                raise TarCheckError("holds a GNU sparse file, which runtimes do not unpack alike; store it whole")

    # -- entries ------------------------------------------------------------------

    def _check_entry(self, kind: str, name: str, link: str, size: int) -> None:
        if kind not in _REGULAR and kind not in _HEADER_ONLY:
            what = "a GNU sparse file" if kind == "S" else f"an entry of type {kind!r}"
            raise TarCheckError(f"entry {_short(name)} is {what}, which runtimes do not unpack alike")
        if kind in _DEVICES and not self._policy.allow_devices:
            raise TarCheckError(
                f"entry {_short(name)} is a {'character' if kind == '3' else 'block'} device; devices are refused "
                "unless [layers].allow_devices is true"
            )
        if kind not in _REGULAR and size:
            raise TarCheckError(f"entry {_short(name)} has no data by its type but declares {size} bytes")
        parts = _components(name)
        if parts is None:
            raise TarCheckError(f"entry {_short(name)} leaves the root of the image")
        if self._symlinks and self._through_escaping_link(parts[:-1]):
            raise TarCheckError(f"entry {_short(name)} is written through a symlink that points out of the root")
        path = "/".join(parts)
        if kind == "1":
            target = _components(link)
            if target is None or not link:
                raise TarCheckError(f"hard link {_short(name)} points out of the root ({_short(link)})")
            if self._symlinks and self._through_escaping_link(target[:-1]):
                raise TarCheckError(f"hard link {_short(name)} points through a symlink out of the root")
        if kind == "2":
            if len(self._symlinks) >= self._policy.max_symlinks:
                raise TarCheckError(f"holds more than {self._policy.max_symlinks} symlinks")
            self._symlinks[path] = link
        elif path in self._symlinks:
            del self._symlinks[path]  # a later entry replaces the link

    def _through_escaping_link(self, directory: list[str]) -> bool:
        """Resolving ``directory`` through this layer's symlinks, does it leave the root?"""
        stack: list[str] = []
        todo = list(reversed(directory))
        hops = 0
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if not stack:
                    return True
                stack.pop()
                continue
            stack.append(part)
            target = self._symlinks.get("/".join(stack))
            if target is None:
                continue
            hops += 1
            if hops > _MAX_HOPS:
                return True
            stack.pop()
            if target.startswith("/"):
                stack = []
            todo.extend(reversed(target.split("/")))
        return False


def _pax_records(data: bytes, offset: int) -> dict[str, str]:
    """``<length> <key>=<value>\\n`` records; a length that does not fit its record is refused."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break
        space = data.find(b" ", pos, pos + 21)
        digits = data[pos:space] if space > pos else b""
        if not digits.isdigit():
            raise TarCheckError(f"has a malformed PAX header before byte {offset}: a record has no length")
        length = int(digits)
        record = data[pos : pos + length]
        if length <= space - pos + 1 or len(record) != length or not record.endswith(b"\n") or b"=" not in record:
            raise TarCheckError(f"has a malformed PAX header before byte {offset}: a record's length is wrong")
        key, _, value = record[space - pos + 1 : -1].partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records
