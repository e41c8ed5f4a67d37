"""Keys declared once: the walker reads what the dataclasses declare, and store URLs are parsed once.

The messages themselves are pinned by test_values.py, test_auth.py and
test_config_examples.py; these check the machinery under them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from wave_grpc.config import (
    AdminConfig,
    AuthConfig,
    ConfigError,
    GatewayConfig,
    LayersConfig,
    LimitsConfig,
    ServiceConfig,
    TowerAuthConfig,
    UpstreamConfig,
    parse_config,
)
from wave_grpc.config.keys import keyed_fields
from wave_grpc.store_urls import STORE_SCHEMES, StoreRole, StoreUrl, scheme_prefixes, serves

SECTIONS: dict[str, type[Any]] = {
    "service": ServiceConfig,
    "gateway": GatewayConfig,
    "layers": LayersConfig,
    "upstream": UpstreamConfig,
    "auth": AuthConfig,
    "admin": AdminConfig,
    "limits": LimitsConfig,
}


@pytest.mark.parametrize("name", list(SECTIONS))
def test_the_known_keys_are_the_declared_fields(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config({name: {"zzz_not_a_key": 1}}, "c.toml")
    known = re.fullmatch(rf"c\.toml: \[{name}\]\.zzz_not_a_key: unknown key; known keys: (.*)", str(caught.value))
    assert known is not None, str(caught.value)
    declared = sorted(spec.name or field for field, spec in keyed_fields(SECTIONS[name]))
    assert known.group(1).split(", ") == declared


def test_the_defaults_read_from_an_empty_file_are_the_dataclass_defaults() -> None:
    config = parse_config({}, "c.toml")
    assert config.service == ServiceConfig()
    assert config.gateway == GatewayConfig()
    assert config.layers == LayersConfig()
    assert config.upstream == UpstreamConfig()
    assert config.auth == AuthConfig(tower=TowerAuthConfig())
    assert (config.admin, config.limits) == (AdminConfig(), LimitsConfig())


def test_a_section_judges_its_bounds_however_it_is_built() -> None:
    with pytest.raises(ConfigError, match=r"^max_connections: must be 1 or more$"):
        GatewayConfig(max_connections=0)
    with pytest.raises(ConfigError, match=r"^freeze_workers: must be between 1 and 64, got 65$"):
        ServiceConfig(freeze_workers=65)
    with pytest.raises(ConfigError, match=r"^tls_key: give both tls_cert and tls_key, or neither$"):
        ServiceConfig(tls_cert="cert.pem")
    with pytest.raises(ConfigError, match=r"c\.toml: \[limits\]\.pulls_per_minute: must be 0 \(no limit\) or more"):
        parse_config({"limits": {"pulls_per_minute": -1}}, "c.toml")


def test_defaults_taken_from_an_earlier_section() -> None:
    config = parse_config({"service": {"listen": "0.0.0.0:7000", "store": "redis://cache:6379/2"}}, "c.toml")
    assert config.gateway.service == "0.0.0.0:7000"
    assert config.gateway.shared_cache == "redis://cache:6379/2"
    assert parse_config({}, "c.toml").gateway.shared_cache == ""


def test_an_oci_layer_store_is_split_once_into_registry_and_repository() -> None:
    layers = parse_config({"layers": {"store": "oci://registry.local:5000/team/layers"}}, "c.toml").layers
    assert (layers.store_url.scheme, layers.store_url.registry) == ("oci", "registry.local:5000")
    assert layers.store_url.repository == "team/layers"
    with pytest.raises(ConfigError, match=r"\[layers\]\.store: 'oci://registry\.local' must be oci://<registry"):
        parse_config({"layers": {"store": "oci://registry.local"}}, "c.toml")


def test_the_scheme_table_decides_what_each_store_takes() -> None:
    assert scheme_prefixes(StoreRole.TOKENS) == ("sqlite://", "redis://", "rediss://")
    assert scheme_prefixes(StoreRole.LAYERS) == ("file://", "oci://")
    assert serves("rediss://h/0", StoreRole.SHARED_CACHE)
    assert not serves("sqlite:///x.db", StoreRole.SHARED_CACHE)
    assert all(scheme.roles for scheme in STORE_SCHEMES)
    assert StoreUrl.parse("file://data/layers", StoreRole.LAYERS).path == "data/layers"
    with pytest.raises(ValueError, match=r"'file:///x' must start with one of sqlite://, redis://, rediss://"):
        StoreUrl.parse("file:///x", StoreRole.TOKENS)


def test_every_token_scheme_opens_a_store() -> None:
    from wave_grpc.stores import open as stores_open

    assert set(stores_open._TOKEN_STORES) == {s.name for s in STORE_SCHEMES if StoreRole.TOKENS in s.roles}
    with pytest.raises(ValueError, match=r"token store 'file:///x': use sqlite:///path or redis://host:port/db"):
        stores_open.open_token_store("file:///x")
