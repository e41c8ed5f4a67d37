"""The layer tar check on bytes: what a runtime would refuse or unpack outside the root is refused.

Archives are built with the standard library's ``tarfile`` (as real tools write
them) and then broken on purpose; hypothesis feeds them in random chunkings and
truncations (a CI-sized budget).
"""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wave_grpc.image.layers import LayerDigester, LayerFormatError, LayerLimits
from wave_grpc.image.tarcheck import BLOCK, TarChecker, TarCheckError, TarPolicy


def _entry(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data)
    info.linkname = link
    return info


def archive(*entries: tuple[tarfile.TarInfo, bytes], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=fmt) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return out.getvalue()


def file(name: str, data: bytes = b"hello\n") -> tuple[tarfile.TarInfo, bytes]:
    return _entry(name, data=data), data


def node(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    return _entry(name, kind, link=link), b""


def check(data: bytes, policy: TarPolicy | None = None, chunk: int = 1 << 20) -> None:
    checker = TarChecker(policy or TarPolicy())
    for start in range(0, len(data), chunk):
        checker.feed(data[start : start + chunk])
    checker.finish()


GOOD = archive(
    node("usr", tarfile.DIRTYPE),
    node("usr/bin", tarfile.DIRTYPE),
    file("usr/bin/hello", b"#!/bin/sh\necho hi\n"),
    node("usr/bin/hi", tarfile.SYMTYPE, link="hello"),
    node("usr/bin/again", tarfile.LNKTYPE, link="usr/bin/hello"),
    node("etc/mtab", tarfile.SYMTYPE, link="/proc/mounts"),  # absolute: resolved from the image's root
    file("etc/.wh.motd", b""),  # a whiteout removes a base file
    file("opt/.wh..wh..opq", b""),
    file("/abs/path", b"x"),  # runtimes strip the leading slash
    file("d/" + "n" * 200, b"long name via PAX"),
    node("run/fifo", tarfile.FIFOTYPE),
)


def test_ordinary_layers_pass() -> None:
    check(GOOD)
    check(GOOD, chunk=1)
    check(archive(file("a"), fmt=tarfile.GNU_FORMAT))
    check(archive(file("b"), fmt=tarfile.USTAR_FORMAT))
    check(archive())  # an empty layer is a layer
    check(b"")  # so is an empty tar stream (Go reads it as no entries)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello, not a tar at all" * 40, "is not a tar archive"),
        (b"short", "is not a tar archive"),
        (GOOD[: 3 * BLOCK + 7], "truncated"),
        (archive(file("a", b"x" * 2000))[: BLOCK + 1000], "truncated"),
        (archive(file("../../etc/passwd")), "leaves the root"),
        (archive(file("a/../../b")), "leaves the root"),
        (archive(node("evil", tarfile.LNKTYPE, link="../../etc/shadow")), "hard link 'evil' points out of the root"),
        (
            archive(node("esc", tarfile.SYMTYPE, link="../../.."), file("esc/etc/cron.d/x")),
            "written through a symlink that points out of the root",
        ),
        (
            archive(node("a", tarfile.SYMTYPE, link="b"), node("b", tarfile.SYMTYPE, link="../.."), file("a/x")),
            "written through a symlink",
        ),
        (archive(node("dev/sda", tarfile.BLKTYPE)), "block device"),
        (archive(node("dev/mem", tarfile.CHRTYPE)), "[layers].allow_devices"),
    ],
)
def test_bad_layers_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(TarCheckError, match=message.replace("[", r"\[").replace("]", r"\]")):
        check(data)


def test_devices_pass_when_allowed() -> None:
    check(archive(node("dev/null", tarfile.CHRTYPE)), TarPolicy(allow_devices=True))


def _corrupt(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def test_a_bad_checksum_and_a_lying_size_are_refused() -> None:
    data = archive(file("a", b"x" * 600), file("b"))
    with pytest.raises(TarCheckError, match="not a tar archive"):
        check(_corrupt(data, 0, b"Z"))  # the first header's checksum no longer fits
    # A symlink that declares data: runtimes skip no data for it, so the next header is garbage to them.
    info = _entry("link", tarfile.SYMTYPE, link="a")
    raw = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    raw[124:136] = b"%011o\0" % 5
    raw[148:156] = b"        "
    raw[148:156] = b"%06o\0 " % sum(raw)
    with pytest.raises(TarCheckError, match="no data by its type but declares 5 bytes"):
        check(bytes(raw) + bytes(2 * BLOCK))


def test_pax_records_that_lie_about_their_length_are_refused() -> None:
    data = archive(file("x" * 150))  # a PAX header holds the long path
    start = data.index(b" path=")
    length_at = data.rindex(b"\n", 0, start) + 1 if b"\n" in data[:start] else BLOCK
    digits = data[length_at:start]
    lie = str(int(digits) + 3).encode().rjust(len(digits), b"0")
    with pytest.raises(TarCheckError, match="PAX header"):
        check(_corrupt(data, length_at, lie))


def test_zero_block_inside_the_archive_is_refused() -> None:
    with pytest.raises(TarCheckError, match="zero block"):
        check(bytes(BLOCK) + archive(file("a")))


def test_the_digester_defers_tar_errors_and_ends_bombs_early() -> None:
    limits = LayerLimits(max_inflated_size=2 << 30, max_inflation_ratio=200)
    not_tar = gzip.compress(b"plain text, not a tar" * 100, mtime=0)
    digester = LayerDigester(limits)
    digester.update(not_tar)
    digester.finish()  # the digests are still computed: a digest mismatch is reported first
    with pytest.raises(TarCheckError):
        digester.check_tar()

    bomb = gzip.compress(bytes(256 << 20), mtime=0)  # 256 MiB of zeros in about 250 KiB
    digester = LayerDigester(limits)
    with pytest.raises(LayerFormatError, match=r"\[layers\]\.max_inflation_ratio"):
        digester.update(bomb)
    capped = LayerDigester(LayerLimits(max_inflated_size=8 << 20, max_inflation_ratio=0))
    with pytest.raises(LayerFormatError, match=r"\[layers\]\.max_inflated_size"):
        capped.update(bomb)


_BUDGET = settings(max_examples=150, deadline=None)
# Where GOOD's end-of-archive marker (two zero blocks) ends; tarfile pads the record after it.
END_OF_GOOD = next(at + 2 * BLOCK for at in range(0, len(GOOD), BLOCK) if GOOD[at : at + 2 * BLOCK] == bytes(2 * BLOCK))


def _error_of(checker: TarChecker) -> str | None:
    try:
        checker.finish()
    except TarCheckError as exc:
        return str(exc)
    return None


@_BUDGET
@given(st.lists(st.integers(min_value=1, max_value=4096), min_size=1, max_size=40))
def test_any_chunking_gives_the_same_answer(cuts: list[int]) -> None:
    checker = TarChecker()
    pos = 0
    for size in cuts:
        checker.feed(GOOD[pos : pos + size])
        pos += size
    checker.feed(GOOD[pos:])
    checker.finish()


@_BUDGET
@given(st.integers(min_value=1, max_value=len(GOOD) - 1))
def test_a_truncated_archive_is_refused_unless_cut_between_entries(cut: int) -> None:
    checker = TarChecker()
    checker.feed(GOOD[:cut])
    error = _error_of(checker)
    if cut >= END_OF_GOOD:
        assert error is None  # what follows the end-of-archive marker is not read
    elif cut % BLOCK:
        assert error is not None
        assert "truncated" in error or "not a tar" in error
    # At a block boundary it depends: between entries Go reads a complete archive, inside one it is truncated.


@_BUDGET
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_crash_the_checker(data: bytes) -> None:
    checker = TarChecker()
    checker.feed(data)
    error = _error_of(checker)
    assert error is None or len(error) < 400
