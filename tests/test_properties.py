"""Property-based tests of the parsers and the rewrite (hypothesis, a CI-sized budget).

The parsers of what callers send (durations in the config, Wave's JSON bodies)
either answer a value or refuse with an error that names what to change; they
never crash. The rewrite is a pure function: the same inputs give the same bytes,
every digest matches its bytes, base layers are kept in order, and env merges by
name with the given values winning.
"""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from typing import Any
from urllib.parse import quote, quote_plus

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.handlers.wave_api import parse_message
from tests.test_rewrite import augmentation, base_config, manifest_for
from wave_grpc.config import ConfigError, parse_config
from wave_grpc.errors import Errors, WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.rewrite import UpstreamImage, augment
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.registry.auth import BearerTokens, Secrets

_BUDGET = settings(max_examples=200, deadline=None)

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
_wave_keys = st.sampled_from(
    ["containerImage", "containerConfig", "containerPlatform", "towerAccessToken", "workflowId", "layers", "env"]
)


@_BUDGET
@given(st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_durations_parse_or_name_the_key(value: object) -> None:
    try:
        config = parse_config({"service": {"token_ttl": value}}, "c.toml")
    except ConfigError as exc:
        error: ConfigError | None = exc
    else:
        error = None
        assert config.service.token_ttl > timedelta(0)
    if error is not None:
        assert "c.toml" in str(error)
        assert "token_ttl" in str(error)


@_BUDGET
@given(st.dictionaries(st.one_of(_wave_keys, st.text(max_size=10)), _json, max_size=6))
def test_wave_bodies_parse_or_refuse_as_bad_requests(body: dict[str, Any]) -> None:
    refused: WaveError | None = None
    try:
        parse_message(body, pb.CreateContainerRequest())
    except WaveError as exc:
        refused = exc
    if refused is not None:
        assert refused.kind is Errors.INVALID_ARGUMENT
        assert len(refused.message) < 2000


_env_name = st.from_regex(r"[A-Z][A-Z0-9_]{0,6}", fullmatch=True)
_env = st.lists(st.tuples(_env_name, st.text(st.characters(codec="utf-8"), max_size=8)), max_size=6)
_args = st.lists(st.text(st.characters(codec="utf-8"), min_size=1, max_size=8), max_size=3)


@_BUDGET
@given(_env, _args, _args, st.sampled_from(["", "/work", "/opt/tools"]))
def test_the_rewrite_is_pure_and_merges_env_by_name(
    env: list[tuple[str, str]], entrypoint: list[str], cmd: list[str], working_dir: str
) -> None:
    config = base_config()
    upstream = UpstreamImage(manifest_for(config), config)
    given_env = tuple(f"{name}={value}" for name, value in env)
    request = augmentation(env=given_env, entrypoint=tuple(entrypoint), cmd=tuple(cmd), working_dir=working_dir)
    first, second = augment(upstream, request), augment(upstream, request)
    assert first.manifest.data == second.manifest.data
    assert first.config.data == second.config.data
    assert first.manifest.digest == Digest.of(first.manifest.data)
    manifest = json.loads(first.manifest.data)
    assert manifest["config"]["digest"] == str(Digest.of(first.config.data))
    base = json.loads(upstream.manifest.data)["layers"]
    assert manifest["layers"][: len(base)] == base
    runtime = json.loads(first.config.data)["config"]
    merged = dict(entry.split("=", 1) for entry in runtime["Env"])
    for name, value in dict(env).items():
        assert merged[name] == value
    assert merged["PATH"] == dict(env).get("PATH", "/bin")
    if entrypoint:
        assert runtime["Entrypoint"] == entrypoint
    if cmd:
        assert runtime["Cmd"] == cmd


# -- credential masking (wave_grpc/registry/auth.py) --------------------------------------

_SECRET_ALPHABET = st.characters(min_codepoint=33, max_codepoint=0x2FF, exclude_characters="*")
_SURROUNDING = st.text(alphabet=" .,:;()'\"=", max_size=20)


def _secrets_for(password: str, user: str = "robot") -> Secrets:
    config = parse_config(
        {"registries": [{"name": "private.example.com", "username": user, "password": password}]}, "test.toml"
    )
    return Secrets(config, BearerTokens(lambda: 0.0))


def _spellings(password: str, user: str) -> dict[str, str]:
    raw = password.encode()
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {
        "itself": password,
        "basic": basic,
        "basic header": f"Basic {basic}",
        "its base64": base64.b64encode(raw).decode(),
        "quoted": quote(password, safe=""),
        "quoted, / kept": quote(password),
        "quote_plus": quote_plus(password),
        "upper": password.upper(),
        "lower": password.lower(),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "%xx": "".join(f"%{b:02x}" for b in raw),
        "%XX": "".join(f"%{b:02X}" for b in raw),
        "basic, quoted": quote(basic, safe=""),
    }


@settings(max_examples=60, deadline=None)
@given(
    password=st.text(alphabet=_SECRET_ALPHABET, min_size=8, max_size=40),
    user=st.from_regex(r"[a-z][a-z0-9]{0,11}", fullmatch=True),
    how=st.sampled_from(list(_spellings("placeholder", "u"))),
    before=_SURROUNDING,
    after=_SURROUNDING,
)
def test_every_spelling_of_a_password_is_masked(password: str, user: str, how: str, before: str, after: str) -> None:
    secrets = _secrets_for(password, user)
    spelled = _spellings(password, user)[how]
    text = f"{before}{spelled}{after}"
    scrubbed = secrets.scrub(text)
    assert spelled not in scrubbed
    assert password not in scrubbed
    assert secrets.carried_by(text)


@settings(max_examples=60, deadline=None)
@given(
    password=st.text(alphabet=_SECRET_ALPHABET, min_size=8, max_size=40),
    of_base64=st.booleans(),
    data=st.data(),
    before=_SURROUNDING,
    after=_SURROUNDING,
)
def test_any_eight_characters_of_a_password_or_its_base64_are_masked(
    password: str, of_base64: bool, data: st.DataObject, before: str, after: str
) -> None:
    secrets = _secrets_for(password)
    whole = base64.b64encode(f"robot:{password}".encode()).decode() if of_base64 else password
    start = data.draw(st.integers(0, len(whole) - 8))
    piece = whole[start : data.draw(st.integers(start + 8, len(whole)))]
    scrubbed = secrets.scrub(f"{before}{piece}{after}")
    assert piece not in scrubbed
    assert secrets.carried_by(piece)


def test_text_without_a_credential_is_left_as_it_was() -> None:
    secrets = _secrets_for("correct-horse-battery")
    said = 'denied: requested access to the resource is denied (sha256:0123456789abcdef, "library/alpine")'
    assert secrets.scrub(said) == said
    assert not secrets.carried_by(said)
