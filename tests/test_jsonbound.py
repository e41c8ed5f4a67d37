"""The bounded JSON scan (wave_grpc/image/jsonbound.py): it agrees with json.loads.

Properties (hypothesis): on any valid document, in any spacing and encoding
json.loads accepts, the scan's counts are exactly what json.loads builds (so at
least the actual ones), and a document within the limits is never refused; on
any bytes at all, the answer is a value or a WaveError, never another exception.
Then the two shapes that hurt: ten million empty objects, and nesting 200,000 deep.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.jsonbound import DEFAULT_MAX_LAYERS, JsonLimits, check_bounds, loads_bounded, measure
from wave_grpc.image.manifest import ImageConfig, ImageManifest, MediaType, parse_json_object

_BUDGET = settings(max_examples=300, deadline=None)

# Strings that stress the scan: escapes, quotes, brackets and separators inside them.
_tricky_text = st.text(alphabet=st.sampled_from(list('ab"\\/[]{},: \n\t\u00e9\u2028\U0001f600')), max_size=12)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _tricky_text,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_tricky_text, inner, max_size=5),
    max_leaves=40,
)
_layout = st.sampled_from(
    [
        {},
        {"separators": (",", ":")},
        {"indent": 2},
        {"indent": "\t", "separators": (" , ", " : ")},
        {"ensure_ascii": False},
    ]
)
_encoding = st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32"])


def actual_shape(value: Any) -> tuple[int, int]:
    """(values with keys, depth) of what json.loads built."""
    if isinstance(value, list):
        inner = [actual_shape(v) for v in value]
        return 1 + sum(n for n, _ in inner), 1 + max((d for _, d in inner), default=0)
    if isinstance(value, dict):
        inner = [actual_shape(v) for v in value.values()]
        return 1 + len(value) + sum(n for n, _ in inner), 1 + max((d for _, d in inner), default=0)
    return 1, 0


def encoded(value: Any, layout: dict[str, Any], encoding: str) -> bytes:
    text = json.dumps(value, **layout)
    if encoding == "utf-8-sig":
        return b"\xef\xbb\xbf" + text.encode()
    return text.encode(encoding)


@_BUDGET
@given(_json, _layout, _encoding)
def test_the_scan_counts_what_json_loads_builds(value: Any, layout: dict[str, Any], encoding: str) -> None:
    data = encoded(value, layout, encoding)
    values, depth = actual_shape(json.loads(data))
    shape = measure(data)
    assert (shape.values, shape.depth) == (values, depth)


@_BUDGET
@given(_json, _layout, _encoding)
def test_a_document_within_the_limits_is_never_refused(value: Any, layout: dict[str, Any], encoding: str) -> None:
    data = encoded(value, layout, encoding)
    values, depth = actual_shape(json.loads(data))
    exact = JsonLimits(max_values=values, max_depth=max(depth, 1))
    assert loads_bounded(data, "doc", exact) == json.loads(data)
    if values > 1:
        with pytest.raises(WaveError) as refused:
            check_bounds(data, "doc", JsonLimits(max_values=values - 1, max_depth=64))
        assert "[upstream].max_json_values" in refused.value.message
    if depth > 1:
        with pytest.raises(WaveError) as refused:
            check_bounds(data, "doc", JsonLimits(max_values=values, max_depth=depth - 1))
        assert "[upstream].max_json_depth" in refused.value.message


@_BUDGET
@given(st.binary(max_size=200) | st.text(alphabet=st.sampled_from(list('"\\[]{},:0 ')), max_size=200).map(str.encode))
def test_any_bytes_are_a_value_or_a_clear_refusal(data: bytes) -> None:
    refused: WaveError | None = None
    try:
        loads_bounded(data, "upstream manifest", JsonLimits(max_values=20, max_depth=4))
    except WaveError as exc:
        refused = exc
    if refused is not None:
        assert refused.kind is Errors.MANIFEST_INVALID
        assert refused.message.startswith("upstream manifest ")


def test_ten_million_empty_objects_are_refused_quickly_before_parsing() -> None:
    fat = b'{"rootfs":{"type":"layers","diff_ids":[]},"history":[' + b",".join([b"{}"] * 10_000_000) + b"]}"
    started = time.monotonic()
    with pytest.raises(WaveError) as refused:
        ImageConfig.parse(fat, "config of example.com/fat:latest")
    assert time.monotonic() - started < 5  # json.loads took 23 s and 3.1 GiB
    assert refused.value.kind is Errors.MANIFEST_INVALID
    assert refused.value.message.startswith("config of example.com/fat:latest has more than 200000 JSON values")
    assert "([upstream].max_json_values)" in refused.value.message


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_nesting_200000_deep_is_a_clear_error_not_a_recursion_error(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    deep = (opener * 200_000 + "1" + closer * 200_000).encode()
    with pytest.raises(WaveError) as refused:
        parse_json_object(deep, "manifest of example.com/deep:latest")
    assert refused.value.kind is Errors.MANIFEST_INVALID
    assert "more than 64 deep" in refused.value.message
    assert "([upstream].max_json_depth)" in refused.value.message


def test_an_integer_over_pythons_digit_limit_is_invalid_json_not_a_crash() -> None:
    with pytest.raises(WaveError) as refused:
        parse_json_object(b'{"size": ' + b"9" * 10_000 + b"}", "manifest")
    assert refused.value.kind is Errors.MANIFEST_INVALID
    assert "is not valid JSON" in refused.value.message


def test_a_manifest_listing_more_layers_than_any_runtime_unpacks_is_refused() -> None:
    digest = "sha256:" + "a" * 64
    layer = {"mediaType": MediaType.OCI_LAYER_GZIP.value, "digest": digest, "size": 1}
    document = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST.value,
        "config": {"mediaType": MediaType.OCI_CONFIG.value, "digest": digest, "size": 1},
        "layers": [layer] * (DEFAULT_MAX_LAYERS + 1),
    }
    data = json.dumps(document).encode()
    with pytest.raises(WaveError) as refused:
        ImageManifest.parse(data, MediaType.OCI_MANIFEST, "manifest of example.com/many:latest")
    assert f"lists {DEFAULT_MAX_LAYERS + 1} layers" in refused.value.message
    assert "([upstream].max_layers)" in refused.value.message
    document["layers"] = [layer] * DEFAULT_MAX_LAYERS
    parsed = ImageManifest.parse(json.dumps(document).encode(), MediaType.OCI_MANIFEST, "manifest")
    assert len(parsed.layers) == DEFAULT_MAX_LAYERS
