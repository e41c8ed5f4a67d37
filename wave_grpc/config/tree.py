"""The whole config: its sections, read from a TOML file by the one walker."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

from wave_grpc.config.cache import CacheConfig
from wave_grpc.config.keys import keyed_fields, read_table, section, setting
from wave_grpc.config.registries import DOCKER_HUB_ENDPOINT, RegistryRoute, read_routes
from wave_grpc.config.sections import (
    AdminConfig,
    AuthConfig,
    GatewayConfig,
    LayersConfig,
    LimitsConfig,
    ServiceConfig,
    UpstreamConfig,
)
from wave_grpc.config.table import ConfigError, Table
from wave_grpc.image.ref import DOCKER_HUB


@dataclass(frozen=True, slots=True)
class Config:
    # Sections are read in this order: a later one may take its defaults from an earlier one.
    service: ServiceConfig = section(ServiceConfig, "[service]")
    gateway: GatewayConfig = section(GatewayConfig, "[gateway]")
    layers: LayersConfig = section(LayersConfig, "[layers]")
    upstream: UpstreamConfig = section(UpstreamConfig, "[upstream]")
    registries: tuple[RegistryRoute, ...] = setting((), read=read_routes)
    source: str = "<defaults>"  # the file read, named in every error
    auth: AuthConfig = section(AuthConfig, "[auth]")
    admin: AdminConfig = section(AdminConfig, "[admin]")
    limits: LimitsConfig = section(LimitsConfig, "[limits]")
    cache: CacheConfig = section(CacheConfig, "[cache]")

    def route_for(self, registry: str) -> RegistryRoute | None:
        """The route for a registry name: its [[registries]] entry, else the default policy."""
        for route in self.registries:
            if route.name == registry:
                return route
        if self.upstream.default_route == "deny":
            return None
        host = registry.rsplit(":", 1)[0].strip("[]")
        loopback = host == "localhost" or host.startswith("127.") or host == "::1"
        scheme = "http" if loopback else "https"
        endpoint = DOCKER_HUB_ENDPOINT if registry == DOCKER_HUB else f"{scheme}://{registry}"
        return RegistryRoute(
            name=registry,
            endpoint=endpoint,
            connect_timeout=self.upstream.connect_timeout,
            read_timeout=self.upstream.read_timeout,
            listed=False,
        )


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    sections = [name for name, _ in keyed_fields(Config)]
    unknown = sorted(set(Table(data, "<top>", source).data) - set(sections))
    if unknown:
        raise ConfigError(f"{source}: [{unknown[0]}]: unknown section; known: {', '.join(sections)}")
    config = replace(read_table(Config, data, "<top>", source, {}), source=source)
    check_callers(config)
    check_cache(config)
    return config


def check_cache(config: Config) -> None:
    """An oci:// site cache is reached through its registry's route, which must not itself be cached."""
    store = config.cache.store_url
    route = config.route_for(store.registry) if store.scheme == "oci" else None
    if route is not None and route.blobs == "cache":
        raise ConfigError(
            f"{config.source}: [cache].store: {store.text!r} is in registry {store.registry}, whose [[registries]] "
            'entry has blobs = "cache"; give that entry blobs = "redirect" or "proxy"'
        )


def check_callers(config: Config) -> None:
    """What [auth]'s verifiers need from [auth.tower] and [service]."""
    verifiers, service = config.auth.verifiers, config.service
    if "tower" in verifiers and not config.auth.tower.endpoint:
        raise ConfigError(
            f'{config.source}: [auth.tower].endpoint: is required by the "tower" verifier, '
            'e.g. "https://api.cloud.seqera.io"'
        )
    if "static" in verifiers and not service.tokens:
        raise ConfigError(
            f'{config.source}: [auth].verifiers: "static" needs [service].tokens = [{{ user = "...", sha256 = "..." }}]'
        )
    if not service.anonymous and not verifiers:
        raise ConfigError(
            f"{config.source}: [service].anonymous: false needs a way to verify callers: "
            "set [service].tokens or [auth].verifiers"
        )


def load_config(path: Path) -> Config:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(data, str(path))


def default_config_path() -> Path:
    """The embedded default: packaged copy, else the checkout's configs/local.toml."""
    packaged = resources.files("wave_grpc").joinpath("configs/local.toml")
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "configs" / "local.toml"
