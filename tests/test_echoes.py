"""A caller's value is quoted back in an error at most ``errors.ECHO_LIMIT`` characters long.

A big bad field echoed whole would turn INVALID_ARGUMENT into an over-size answer
(RESOURCE_EXHAUSTED, which clients retry).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from wave_grpc.errors import ECHO_LIMIT, Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigests, check_layer_digests
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.pinning import parse_platforms
from wave_grpc.service.freeze import build_target

HUGE = 24_000
DIGEST = Digest.of(b"layer")
# The message around an echo: the field, what is wrong, what to do.
FRAME = 240


def _digests() -> LayerDigests:
    return LayerDigests(gzip_digest=DIGEST, gzip_size=5, tar_digest=DIGEST)


CASES: list[tuple[str, Callable[[], object]]] = [
    ("duplicate platforms", lambda: parse_platforms("linux/amd64," * (HUGE // 12))),
    ("commas only", lambda: parse_platforms("," * HUGE)),
    ("a platform", lambda: Platform.parse("linux/" + "x" * HUGE)),
    ("an image reference", lambda: ImageRef.parse("Registry.example.com/" + "A" * HUGE)),
    ("a digest", lambda: Digest.parse("sha256:" + "z" * HUGE)),
    ("a build repository with a tag", lambda: build_target("registry.example.com/team/tool:" + "v" * HUGE)),
    ("a claimed gzip digest", lambda: check_layer_digests("layers[0]", _digests(), "sha256:" + "0" * HUGE, 0, "")),
    ("a claimed tar digest", lambda: check_layer_digests("layers[0]", _digests(), "", 0, "sha256:" + "0" * HUGE)),
]


@pytest.mark.parametrize(("what", "parse"), CASES, ids=[what for what, _ in CASES])
def test_a_huge_bad_value_is_quoted_briefly(what: str, parse: Callable[[], object]) -> None:
    with pytest.raises(WaveError) as caught:
        parse()
    assert caught.value.kind in (Errors.INVALID_ARGUMENT, Errors.DIGEST_INVALID, Errors.NAME_INVALID), what
    message = caught.value.message
    # Each echo is cut (a message may quote the value and a part of it), and says how long it was.
    longest_run = max(len(run) for run in re.findall(r"(?:linux/amd64,|,|x|A|z|0|v)+", message))
    assert longest_run <= ECHO_LIMIT, message[:400]
    assert len(message) < 2 * ECHO_LIMIT + FRAME, message[:400]
    assert "characters)" in message, message
