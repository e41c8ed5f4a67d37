"""JSON from upstreams, bounded before it is materialised.

``json.loads`` turns cheap bytes into dear objects: a 31 MiB config of
``[{},{},...]`` is ten million dicts (gigabytes, tens of seconds of a blocked
event loop), and ``[[[[...]]]]`` 200,000 deep is a ``RecursionError``. So the
bytes are measured first, at C speed (regex substitution, ``bytes.count``,
``bytes.translate``; no Python-level loop over the input), and a document over
the limits is refused before a single object is built:

* values: every JSON value and every object key counts one. In a document
  without strings and whitespace, each of them is the first one or follows one
  of ``[ { , :``, except in an empty ``[]`` or ``{}``; so the count is exact for
  a valid document, and for an invalid one it is exact over the valid prefix
  (the part ``json.loads`` would build before failing).
* depth: the deepest nesting of arrays and objects, the running sum of the
  brackets left once strings are gone.

Escapes are removed with ``bytes.replace`` and strings with one regex (only
once they are known to be no more than the limit), so every scan is linear
whatever the bytes.
"""

from __future__ import annotations

import json
import re
from array import array
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

from wave_grpc.errors import Errors, WaveError

# Far above any real manifest, index or config (a config with 1,000 history entries
# has about 5,000 values), far below what hurts (10 million empty objects).
DEFAULT_MAX_JSON_VALUES = 200_000
# Real documents nest 4 or 5 levels; 64 leaves room for annotations and labels
# while keeping json.loads far from Python's recursion limit.
DEFAULT_MAX_JSON_DEPTH = 64
DEFAULT_MAX_LAYERS = 1000

# A JSON string once its escaped backslashes and quotes are gone, or an unterminated
# one up to the end: matching from any quote always succeeds, so substitution is linear.
_STRING = re.compile(rb'"[^"]*(?:"|\Z)')
_WHITESPACE = b" \t\r\n"
_BRACKETS = b"[]{}"
_NOT_BRACKETS = bytes(b for b in range(256) if b not in _BRACKETS)
# Openers to +1, closers to -1 (0xFF as a signed byte).
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """How much JSON an upstream document may hold; the keys name the config entries."""

    max_values: int = DEFAULT_MAX_JSON_VALUES
    max_depth: int = DEFAULT_MAX_JSON_DEPTH
    # Layers one upstream manifest may list ([upstream].max_layers): no runtime unpacks more
    # (overlayfs stops near 128 layers, Docker builds at 127).
    max_layers: int = DEFAULT_MAX_LAYERS

    def __post_init__(self) -> None:
        if self.max_values < 1:
            raise ValueError(f"max_values must be at least 1, not {self.max_values}")
        if self.max_depth < 1:
            raise ValueError(f"max_depth must be at least 1, not {self.max_depth}")


DEFAULT_JSON_LIMITS = JsonLimits()
_in_force = [DEFAULT_JSON_LIMITS]


def use_limits(limits: JsonLimits) -> None:
    """Set the limits every parse of upstream JSON in this process applies, once at start
    from ``[upstream]``: the parses happen inside values (manifests, configs) that take no config."""
    _in_force[0] = limits


def limits_in_force() -> JsonLimits:
    return _in_force[0]


@dataclass(frozen=True, slots=True)
class JsonShape:
    """What the scan measured: values (keys included) and the deepest nesting.

    ``depth`` is measured over at most the first ``2 * max_values + 2`` brackets
    (all of them when ``values`` is within the limit), so it is exact whenever
    the document is accepted, and over the limit when the nesting is.
    """

    values: int
    depth: int


def _utf8(data: bytes) -> bytes:
    """The bytes to scan: UTF-8 as it comes, any other encoding json.loads accepts re-encoded.

    In UTF-16 or UTF-32 a quote or a bracket byte can be half of another character,
    so only UTF-8 (where every byte under 0x80 is that ASCII character) is scanned.
    """
    encoding = json.detect_encoding(data)
    if encoding in ("utf-8", "utf-8-sig"):
        return data
    return data.decode(encoding, "surrogatepass").encode("utf-8", "surrogatepass")


def measure(data: bytes, limits: JsonLimits | None = None) -> JsonShape:
    """Count the values and the depth of ``data`` without building any of it.

    When the strings alone are over ``limits.max_values``, ``values`` is their
    number and ``depth`` is not measured (0): a regex substitution costs about a
    microsecond per match, so no more than ``max_values`` strings are ever matched.
    """
    limits = limits or limits_in_force()
    # Escapes first, with bytes.replace (no per-match cost): left to right, "\\" is
    # an escaped backslash exactly as a JSON parser reads it, then "\"" an escaped quote.
    # What quotes remain delimit strings, two each.
    text = _utf8(data).replace(b"\\\\", b"").replace(b'\\"', b"")
    strings = (text.count(b'"') + 1) // 2
    if strings > limits.max_values:
        return JsonShape(values=strings, depth=0)
    bare = _STRING.sub(b'""', text).translate(None, _WHITESPACE)
    empties = bare.count(b"[]") + bare.count(b"{}")
    openers = bare.count(b"[") + bare.count(b"{")
    values = 1 + openers + bare.count(b",") + bare.count(b":") - empties if bare else 0
    brackets = bare.translate(None, _NOT_BRACKETS)[: 2 * limits.max_values + 2]
    steps = array("b", brackets.translate(_STEPS))
    return JsonShape(values=values, depth=max(accumulate(steps), default=0))


def check_bounds(data: bytes, what: str, limits: JsonLimits | None = None) -> None:
    """Refuse ``data`` (MANIFEST_INVALID) when it holds more JSON than ``limits`` (default: those in force) allow."""
    limits = limits or limits_in_force()
    # Upper bounds from the raw bytes (strings included) settle most documents
    # without a copy: real manifests have a few hundred values.
    raw_openers = data.count(b"[") + data.count(b"{")
    raw_values = 1 + raw_openers + data.count(b",") + data.count(b":")
    if raw_values <= limits.max_values and raw_openers <= limits.max_depth:
        return
    try:
        shape = measure(data, limits)
    except UnicodeError:
        return  # not text at all: json.loads refuses it with its own message
    if shape.depth > limits.max_depth:
        raise WaveError(
            Errors.MANIFEST_INVALID,
            f"{what} nests JSON arrays and objects more than {limits.max_depth} deep; refused before parsing "
            "([upstream].max_json_depth)",
        )
    if shape.values > limits.max_values:
        raise WaveError(
            Errors.MANIFEST_INVALID,
            f"{what} has more than {limits.max_values} JSON values (it has {shape.values}, keys included); "
            "refused before parsing ([upstream].max_json_values)",
        )


def loads_bounded(data: bytes, what: str, limits: JsonLimits | None = None) -> Any:
    """``json.loads`` of upstream bytes, after :func:`check_bounds`; bad JSON is MANIFEST_INVALID."""
    check_bounds(data, what, limits)
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and an integer over
        # Python's digit limit; RecursionError cannot happen within max_depth.
        raise WaveError(Errors.MANIFEST_INVALID, f"{what} is not valid JSON: {exc}") from None
