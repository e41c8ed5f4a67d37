"""The TOML config tree: frozen, validated values.

Every section rejects unknown keys and every error names the file and the key,
e.g. ``configs/prod.toml: [gateway].lisen: unknown key; known keys: listen, ...``.
Relative paths (``sqlite:///data/wave.db``, ``file://data/layers``) resolve against
the working directory, as SQLAlchemy URLs do.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from wave_grpc.addresses import ip_literal
from wave_grpc.image.layers import LayerLimits
from wave_grpc.image.ref import DOCKER_HUB


class ConfigError(ValueError):
    """A config problem; the message names the file and key."""


_MAX_DURATION_SECONDS = 10 * 366 * 86400
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


class _Section:
    """Reads one TOML table, remembering which keys were used."""

    def __init__(self, data: Any, where: str, source: str) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: {where} must be a table")
        self.data = data
        self.where = where
        self.source = source
        self.used: set[str] = set()

    def error(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.where}.{key}: {problem}")

    def get(self, key: str, kind: type, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return value

    def string(self, key: str, default: str = "") -> str:
        return str(self.get(key, str, default))

    def boolean(self, key: str, default: bool) -> bool:
        return bool(self.get(key, bool, default))

    def integer(self, key: str, default: int) -> int:
        return int(self.get(key, int, default))

    def choice(self, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in options:
            raise self.error(key, f"{value!r} is not one of {', '.join(options)}")
        return value

    def duration(self, key: str, default: timedelta) -> timedelta:
        self.used.add(key)
        if key not in self.data:
            return default
        value = self.data[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            seconds = float(value)
        else:
            match = _DURATION.match(value) if isinstance(value, str) else None
            if not match:
                raise self.error(key, f'{value!r} is not a duration; use e.g. "36h", "90m", "30s", "500ms"')
            seconds = float(match.group(1)) * _UNITS[match.group(2)]
        # Both spellings are judged alike: a number of seconds is no way around the bounds.
        if not seconds > 0:
            raise self.error(key, "must be positive")
        if not seconds <= _MAX_DURATION_SECONDS:
            raise self.error(key, "must be at most 10 years")
        result = timedelta(seconds=seconds)
        if result <= timedelta(0):  # also what rounds to nothing below a microsecond
            raise self.error(key, "must be positive (at least 1 microsecond)")
        return result

    def address(self, key: str, default: str) -> str:
        value = self.string(key, default)
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise self.error(key, f"{value!r} is not host:port")
        return value

    def done(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], f"unknown key; known keys: {', '.join(sorted(self.used))}")


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A caller token, stored as its sha256 hex so the config holds no secret."""

    user: str
    sha256: str


AUTH_VERIFIERS = ("static", "tower")


@dataclass(frozen=True)
class TowerAuthConfig:
    """``[auth.tower]``: a Seqera-Platform-compatible ``<endpoint>/user-info`` token check."""

    endpoint: str = ""
    # Other endpoints a request's tower_endpoint may name; any other is never called.
    allowed_endpoints: tuple[str, ...] = ()
    cache_ttl: timedelta = timedelta(seconds=60)
    timeout: timedelta = timedelta(seconds=10)


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: the caller-token verifiers, tried in order (see wave_grpc/auth.py)."""

    verifiers: tuple[str, ...] = ()
    tower: TowerAuthConfig = TowerAuthConfig()


@dataclass(frozen=True)
class ServiceConfig:
    listen: str = "127.0.0.1:50051"
    store: str = "sqlite:///.wave-grpc/wave.db"
    token_ttl: timedelta = timedelta(hours=36)
    anonymous: bool = True
    tokens: tuple[StaticToken, ...] = ()
    max_message_size: int = 128 << 20
    # Layers up to this size may come inline as data:; bigger ones go through UploadLayer.
    inline_layer_limit: int = 64 << 20
    # Largest token record (the config, the layer list, the digests): every gateway must
    # be able to fetch it back, and a record is read on every pull's cache miss.
    max_record_size: int = 1 << 20
    # RPCs in flight at once (more are answered RESOURCE_EXHAUSTED), and how long a client
    # connection with no RPC in flight is kept (clients reconnect transparently).
    max_concurrent_rpcs: int = 1024
    idle_timeout: timedelta = timedelta(minutes=2)
    # Peers whose forwarded client address (the gateway's, for REST callers) is believed;
    # every other caller is known by its own address.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Largest layer UploadLayer takes (compressed bytes): bounds the disk one upload can fill.
    max_layer_size: int = 16 << 30
    # PEM files: with both set the AugmentService speaks TLS only.
    tls_cert: str = ""
    tls_key: str = ""
    # Freeze copies run at once per replica; more wait PENDING.
    freeze_workers: int = 2


@dataclass(frozen=True)
class GatewayConfig:
    listen: str = "127.0.0.1:9090"
    public_host: str = "localhost:9090"
    service: str = "127.0.0.1:50051"
    # Token records are cached this long; revocation is seen within it.
    record_cache_ttl: timedelta = timedelta(milliseconds=500)
    rewrite_cache_size: int = 4096
    # PEM CA bundle: when set, the gateway reaches the service over TLS and verifies it.
    service_tls_ca: str = ""
    # In-process cache of pinned upstream manifests/configs and augmented images.
    content_cache_bytes: int = 256 << 20
    # redis://... shared by all gateways (default: the service store when it is Redis).
    shared_cache: str = ""
    # Worker processes serving the gateway port (0: one per core).
    workers: int = 1
    # One log line per request; costly at tens of thousands of requests a second.
    access_log: bool = True
    # Largest Wave REST body: room for Wave's 14,000,000-character inline layer field,
    # refused from Content-Length before any byte is read.
    max_body_size: int = 16 << 20
    # A connection with no request in flight (before its first request too) is closed
    # after this; so is one whose request head does not arrive within it.
    idle_timeout: timedelta = timedelta(seconds=15)
    # A REST body must arrive within this; a blob chunk must be taken by the client within this.
    body_timeout: timedelta = timedelta(seconds=60)
    send_timeout: timedelta = timedelta(seconds=60)
    # Open connections per gateway process; past it a new one gets 503 with Retry-After.
    max_connections: int = 2048


@dataclass(frozen=True)
class LayersConfig:
    # file://<dir> (one machine) or oci://<registry>/<repository> (shared by replicas).
    store: str = "file://.wave-grpc/layers"
    # Where uploads are verified before they go to an oci:// store.
    staging: str = ".wave-grpc/staging"
    # Decompression bombs end early: a layer may inflate to at most this many bytes, and
    # (past 64 MiB) to at most this many times its compressed size (0: no ratio limit).
    max_inflated_size: int = 32 << 30
    max_inflation_ratio: int = 200
    # Character and block devices in a layer's tar: refused unless allowed.
    allow_devices: bool = False
    # Threads that hash, inflate and check uploaded layers (their own pool).
    verify_workers: int = 2
    # Garbage collection: a stored layer is kept while a live token references it and
    # for gc_grace after the last reference (or its upload) was seen; the service
    # collects every gc_interval (None: only `wave-grpc gc`).
    gc_grace: timedelta = timedelta(hours=6)
    gc_interval: timedelta | None = timedelta(hours=1)

    @property
    def limits(self) -> LayerLimits:
        return LayerLimits(self.max_inflated_size, self.max_inflation_ratio, self.allow_devices)

    @property
    def file_root(self) -> Path:
        return Path(self.store[len("file://") :]).expanduser()


class Secret(str):
    """A credential: never shown by repr or str formatting in logs."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Secret('***')"

    @property
    def value(self) -> str:
        return str.__str__(self)


@dataclass(frozen=True, slots=True)
class RegistryRoute:
    name: str
    endpoint: str
    blobs: Literal["redirect", "proxy"] = "redirect"
    username: str = ""
    password: Secret | None = field(default=None, repr=False)
    connect_timeout: timedelta = timedelta(seconds=10)
    read_timeout: timedelta = timedelta(seconds=60)
    # A mirror that serves this registry's names under a path (a Harbor proxy-cache
    # project, an Artifactory remote repo): "dockerhub" maps library/alpine to
    # dockerhub/library/alpine upstream. Clients never see the prefix.
    repository_prefix: str = ""
    # Where the password came from ("password_env FOO", "docker_config PATH"), for
    # error messages that say what to fix; never the password itself.
    credentials_from: str = ""
    # A PEM bundle to verify this registry's certificate (a private CA), and the
    # escape hatch for a registry whose certificate cannot be verified at all.
    ca_file: str = ""
    tls_verify: bool = True
    # False for the route made up for a registry no [[registries]] entry names: the
    # address policy then lets it (and its realm and redirects) reach public addresses only.
    listed: bool = True
    # Repositories a freeze may push to with this entry's credentials: a name, or a
    # prefix ending in "/*" ("team/*"), or "*" for any. Empty: no pushes. Pushes are
    # opt-in because the service would push for any caller with the operator's credentials.
    push_repositories: tuple[str, ...] = ()

    def allows_push(self, repository: str) -> bool:
        for allowed in self.push_repositories:
            if allowed == "*" or allowed == repository:
                return True
            if allowed.endswith("/*") and repository.startswith(allowed[:-1]):
                return True
        return False

    @property
    def has_credentials(self) -> bool:
        return self.password is not None


@dataclass(frozen=True)
class UpstreamConfig:
    # Registries no [[registries]] entry names: "https" (plain http for loopback
    # hosts, as docker treats 127.0.0.0/8 as insecure) or "deny".
    default_route: Literal["https", "deny"] = "https"
    connect_timeout: timedelta = timedelta(seconds=10)
    read_timeout: timedelta = timedelta(seconds=60)
    retries: int = 3
    # Hosts that http(s) layer locations may point at ("host", "host:port",
    # "*.domain"); empty: none. Runtimes are redirected only to these.
    layer_hosts: tuple[str, ...] = ()
    # How long a tag's resolution (tag -> digests) is reused by creations (None: never).
    # Seqera Wave keeps 20 s: a tag moved upstream is seen at most this much later,
    # and a burst of creations of one image costs the registry one resolution.
    tag_cache_ttl: timedelta | None = timedelta(seconds=20)


@dataclass(frozen=True)
class AdminConfig:
    # host:port for /metrics, /healthz and /readyz; empty: no admin endpoints.
    listen: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    # Per caller (the authenticated user, else the client address); 0: no limit.
    creates_per_minute: int = 0
    # Manifest GETs per token owner (per creating client address for anonymous tokens); 0: no limit.
    pulls_per_minute: int = 0


@dataclass(frozen=True, slots=True)
class Config:
    service: ServiceConfig = ServiceConfig()
    gateway: GatewayConfig = GatewayConfig()
    layers: LayersConfig = LayersConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    registries: tuple[RegistryRoute, ...] = ()
    source: str = "<defaults>"
    auth: AuthConfig = AuthConfig()
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()

    def route_for(self, registry: str) -> RegistryRoute | None:
        """The route for a registry name: its [[registries]] entry, else the default policy."""
        for route in self.registries:
            if route.name == registry:
                return route
        if self.upstream.default_route == "deny":
            return None
        host = registry.rsplit(":", 1)[0].strip("[]")
        loopback = host == "localhost" or host.startswith("127.") or host == "::1"
        if registry == DOCKER_HUB:
            endpoint = "https://registry-1.docker.io"
        else:
            endpoint = f"{'http' if loopback else 'https'}://{registry}"
        return RegistryRoute(
            name=registry,
            endpoint=endpoint,
            connect_timeout=self.upstream.connect_timeout,
            read_timeout=self.upstream.read_timeout,
            listed=False,
        )


def _duration_or_off(section: _Section, key: str, default: timedelta) -> timedelta | None:
    """A duration, or "off" (also 0)."""
    value = section.data.get(key)
    if value == "off" or (value == 0 and not isinstance(value, bool)):
        section.used.add(key)
        return None
    return section.duration(key, default)


def _readable_file(section: _Section, key: str) -> str:
    """An optional path to a file that must exist now, not at the first connection."""
    value = section.string(key, "")
    if value and not Path(value).expanduser().is_file():
        raise section.error(key, f"{value!r} is not a readable file")
    return str(Path(value).expanduser()) if value else ""


def _store_url(section: _Section, key: str, default: str, schemes: tuple[str, ...]) -> str:
    value = section.string(key, default)
    if not any(value.startswith(s) for s in schemes):
        raise section.error(key, f"{value!r} must start with one of {', '.join(schemes)}")
    return value


def _docker_config_password(section: _Section, registry: str, path_text: str) -> tuple[str, Secret]:
    path = Path(path_text).expanduser()
    try:
        auths = json.loads(path.read_text()).get("auths", {})
    except (OSError, ValueError) as exc:
        raise section.error("docker_config", f"cannot read {path}: {exc}") from None
    for key, entry in auths.items():
        host = urlsplit(key).netloc if "://" in key else key.split("/")[0]
        if host == registry or (registry == DOCKER_HUB and host in {"index.docker.io", "registry-1.docker.io"}):
            if entry.get("auth"):
                import base64

                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
                return user, Secret(password)
            if entry.get("username") and entry.get("password"):
                return str(entry["username"]), Secret(entry["password"])
    raise section.error("docker_config", f"{path} has no auths entry for {registry}")


_LAYER_HOST = re.compile(
    r"^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?::\d{1,5})?$"
)


def _layer_hosts(section: _Section) -> tuple[str, ...]:
    hosts = []
    for i, entry in enumerate(section.get("layer_hosts", list, [])):
        value = entry.strip().lower() if isinstance(entry, str) else entry
        if not isinstance(value, str) or not (
            _LAYER_HOST.match(value) or re.fullmatch(r"\[[0-9a-f:.]+\](:\d+)?", value)
        ):
            raise section.error(
                f"layer_hosts[{i}]", f"{entry!r} is not a host: use 'host', 'host:port' or '*.domain' (no scheme/path)"
            )
        host = value[1:].partition("]")[0] if value.startswith("[") else value.rsplit(":", 1)[0]
        if ip_literal(host) is not None:
            raise section.error(
                f"layer_hosts[{i}]",
                f"{entry!r} is an IP address; layer_hosts match host names only (a runtime is redirected there, "
                "and an address can be spelt many ways): name the host",
            )
        hosts.append(value)
    return tuple(hosts)


_PUSH_REPOSITORY = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*(?:/\*)?")


def _push_repositories(section: _Section) -> tuple[str, ...]:
    values = []
    for i, entry in enumerate(section.get("push_repositories", list, [])):
        if not isinstance(entry, str) or not (entry == "*" or _PUSH_REPOSITORY.fullmatch(entry)):
            raise section.error(
                f"push_repositories[{i}]",
                f"{entry!r} is not a repository: use a name ('team/frozen'), a prefix ('team/*') or '*'",
            )
        values.append(entry)
    return tuple(values)


def _route(data: Any, index: int, source: str, upstream: UpstreamConfig) -> RegistryRoute:
    section = _Section(data, f"[[registries]][{index}]", source)
    name = section.string("name")
    if not name:
        raise section.error("name", 'is required: the registry part of image references, e.g. "docker.io"')
    endpoint = section.string("endpoint", "")
    if not endpoint:
        endpoint = "https://registry-1.docker.io" if name == DOCKER_HUB else f"https://{name}"
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise section.error("endpoint", f"{endpoint!r} must be an http(s) URL such as https://{name}")
    if parts.username or parts.password:
        # A URL is logged and shown in errors; a password in it would leak there.
        raise section.error("endpoint", "must not hold credentials; use username and password_env")
    prefix = section.string("repository_prefix", "").strip("/")
    if prefix and not re.fullmatch(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*", prefix):
        raise section.error("repository_prefix", f"{prefix!r} is not a repository path such as 'dockerhub-proxy'")
    blobs = section.choice("blobs", ("redirect", "proxy"), "redirect")
    username = section.string("username", "")
    password: Secret | None = None
    inline = section.string("password", "")
    env_name = section.string("password_env", "")
    docker_config = section.string("docker_config", "")
    given = [k for k, v in (("password", inline), ("password_env", env_name), ("docker_config", docker_config)) if v]
    if len(given) > 1:
        raise section.error(given[1], f"give only one of password, password_env, docker_config (also {given[0]})")
    if inline:
        password = Secret(inline)
    elif env_name:
        if env_name not in os.environ:
            raise section.error("password_env", f"environment variable {env_name} is not set")
        password = Secret(os.environ[env_name])
    elif docker_config:
        username, password = _docker_config_password(section, name, docker_config)
    if password is not None and not username:
        raise section.error("username", "is required with a password")
    if username and password is None:
        raise section.error("username", "is given without a password; add password_env, password or docker_config")
    route = RegistryRoute(
        name=name,
        endpoint=endpoint.rstrip("/"),
        blobs="proxy" if blobs == "proxy" else "redirect",
        username=username,
        password=password,
        connect_timeout=section.duration("connect_timeout", upstream.connect_timeout),
        read_timeout=section.duration("read_timeout", upstream.read_timeout),
        repository_prefix=prefix,
        ca_file=_readable_file(section, "ca_file"),
        tls_verify=section.boolean("tls_verify", True),
        push_repositories=_push_repositories(section),
        credentials_from=(
            f"password_env {env_name}"
            if env_name
            else f"docker_config {docker_config}"
            if docker_config
            else "password in the config"
            if inline
            else ""
        ),
    )
    section.done()
    return route


def _endpoint_url(section: _Section, key: str, value: Any) -> str:
    text = value.strip().rstrip("/") if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        raise section.error(
            key, f"{value!r} must be an http(s) URL without credentials, e.g. https://api.cloud.seqera.io"
        )
    return text


def _auth(data: Any, source: str, service: ServiceConfig) -> AuthConfig:
    a = _Section(data, "[auth]", source)
    names = a.get("verifiers", list, ["static"] if service.tokens else [])
    for i, name in enumerate(names):
        if name not in AUTH_VERIFIERS:
            raise a.error(f"verifiers[{i}]", f"{name!r} is not one of {', '.join(AUTH_VERIFIERS)}")
        if names.index(name) != i:
            raise a.error(f"verifiers[{i}]", f"{name!r} is listed twice")
    t = _Section(a.get("tower", dict, {}), "[auth.tower]", source)
    endpoint = t.string("endpoint", "")
    tower = TowerAuthConfig(
        endpoint=_endpoint_url(t, "endpoint", endpoint) if endpoint else "",
        allowed_endpoints=tuple(
            _endpoint_url(t, f"allowed_endpoints[{i}]", e) for i, e in enumerate(t.get("allowed_endpoints", list, []))
        ),
        cache_ttl=t.duration("cache_ttl", TowerAuthConfig.cache_ttl),
        timeout=t.duration("timeout", TowerAuthConfig.timeout),
    )
    t.done()
    a.done()
    if "tower" in names and not tower.endpoint:
        raise t.error("endpoint", 'is required by the "tower" verifier, e.g. "https://api.cloud.seqera.io"')
    if "static" in names and not service.tokens:
        raise a.error("verifiers", '"static" needs [service].tokens = [{ user = "...", sha256 = "..." }]')
    if not service.anonymous and not names:
        raise ConfigError(
            f"{source}: [service].anonymous: false needs a way to verify callers: "
            "set [service].tokens or [auth].verifiers"
        )
    return AuthConfig(verifiers=tuple(names), tower=tower)


def parse_config(data: Mapping[str, Any], source: str) -> Config:
    root = _Section(data, "<top>", source)
    root.used.update({"service", "gateway", "layers", "upstream", "registries", "auth", "admin", "limits"})
    unknown = sorted(set(data) - root.used)
    if unknown:
        raise ConfigError(
            f"{source}: [{unknown[0]}]: unknown section; known: "
            "service, gateway, layers, upstream, registries, auth, admin, limits"
        )

    s = _Section(data.get("service", {}), "[service]", source)
    tokens = []
    for i, entry in enumerate(s.get("tokens", list, [])):
        t = _Section(entry, f"[service].tokens[{i}]", source)
        user, digest = t.string("user"), t.string("sha256")
        if not user or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise t.error("sha256", "each token needs user and sha256 (hex sha256 of the token)")
        t.done()
        tokens.append(StaticToken(user, digest))
    service = ServiceConfig(
        listen=s.address("listen", ServiceConfig.listen),
        store=_store_url(s, "store", ServiceConfig.store, ("sqlite://", "redis://", "rediss://")),
        token_ttl=s.duration("token_ttl", ServiceConfig.token_ttl),
        anonymous=s.boolean("anonymous", ServiceConfig.anonymous),
        tokens=tuple(tokens),
        max_message_size=s.integer("max_message_size", ServiceConfig.max_message_size),
        inline_layer_limit=s.integer("inline_layer_limit", ServiceConfig.inline_layer_limit),
        max_record_size=s.integer("max_record_size", ServiceConfig.max_record_size),
        max_concurrent_rpcs=s.integer("max_concurrent_rpcs", ServiceConfig.max_concurrent_rpcs),
        idle_timeout=s.duration("idle_timeout", ServiceConfig.idle_timeout),
        trusted_proxies=tuple(str(v) for v in s.get("trusted_proxies", list, list(ServiceConfig.trusted_proxies))),
        max_layer_size=s.integer("max_layer_size", ServiceConfig.max_layer_size),
        tls_cert=_readable_file(s, "tls_cert"),
        tls_key=_readable_file(s, "tls_key"),
        freeze_workers=s.integer("freeze_workers", ServiceConfig.freeze_workers),
    )
    if not 1 <= service.freeze_workers <= 64:
        raise s.error("freeze_workers", f"must be between 1 and 64, got {service.freeze_workers}")
    if bool(service.tls_cert) != bool(service.tls_key):
        raise s.error("tls_key" if service.tls_cert else "tls_cert", "give both tls_cert and tls_key, or neither")
    if service.max_layer_size <= 0:
        raise s.error("max_layer_size", "must be positive (bytes)")
    s.done()
    auth = _auth(data.get("auth", {}), source, service)

    g = _Section(data.get("gateway", {}), "[gateway]", source)
    gateway = GatewayConfig(
        listen=g.address("listen", GatewayConfig.listen),
        public_host=g.string("public_host", GatewayConfig.public_host),
        service=g.address("service", service.listen),
        record_cache_ttl=g.duration("record_cache_ttl", GatewayConfig.record_cache_ttl),
        service_tls_ca=_readable_file(g, "service_tls_ca"),
        rewrite_cache_size=g.integer("rewrite_cache_size", GatewayConfig.rewrite_cache_size),
        content_cache_bytes=g.integer("content_cache_bytes", GatewayConfig.content_cache_bytes),
        shared_cache=g.string(
            "shared_cache", service.store if service.store.startswith(("redis://", "rediss://")) else ""
        ),
        workers=g.integer("workers", GatewayConfig.workers),
        access_log=g.boolean("access_log", GatewayConfig.access_log),
        max_body_size=g.integer("max_body_size", GatewayConfig.max_body_size),
        idle_timeout=g.duration("idle_timeout", GatewayConfig.idle_timeout),
        body_timeout=g.duration("body_timeout", GatewayConfig.body_timeout),
        send_timeout=g.duration("send_timeout", GatewayConfig.send_timeout),
        max_connections=g.integer("max_connections", GatewayConfig.max_connections),
    )
    if gateway.max_connections < 1:
        raise g.error("max_connections", "must be 1 or more")
    if gateway.max_body_size < 1024:
        raise g.error("max_body_size", "must be at least 1024 bytes")
    if gateway.shared_cache and not gateway.shared_cache.startswith(("redis://", "rediss://")):
        raise g.error("shared_cache", f"{gateway.shared_cache!r} must be a redis:// URL (or empty for none)")
    if gateway.workers < 0:
        raise g.error("workers", "must be 0 (one per core) or more")
    if not gateway.public_host or "/" in gateway.public_host:
        raise g.error("public_host", f"{gateway.public_host!r} must be host[:port], without scheme or path")
    g.done()

    lay = _Section(data.get("layers", {}), "[layers]", source)
    layers = LayersConfig(
        store=_store_url(lay, "store", LayersConfig.store, ("file://", "oci://")),
        staging=lay.string("staging", LayersConfig.staging),
        max_inflated_size=lay.integer("max_inflated_size", LayersConfig.max_inflated_size),
        max_inflation_ratio=lay.integer("max_inflation_ratio", LayersConfig.max_inflation_ratio),
        allow_devices=lay.boolean("allow_devices", LayersConfig.allow_devices),
        verify_workers=lay.integer("verify_workers", LayersConfig.verify_workers),
        gc_grace=lay.duration("gc_grace", LayersConfig.gc_grace),
        gc_interval=_duration_or_off(lay, "gc_interval", timedelta(hours=1)),
    )
    if layers.max_inflated_size < 1 << 20:
        raise lay.error("max_inflated_size", "must be at least 1048576 bytes")
    if layers.max_inflation_ratio < 0:
        raise lay.error("max_inflation_ratio", "must be 0 (no ratio limit) or more")
    if layers.verify_workers < 1:
        raise lay.error("verify_workers", "must be 1 or more")
    if layers.store.startswith("oci://"):
        registry, _, repository = layers.store[len("oci://") :].partition("/")
        if not registry or not repository:
            raise lay.error("store", f"{layers.store!r} must be oci://<registry host[:port]>/<repository>")
    lay.done()

    u = _Section(data.get("upstream", {}), "[upstream]", source)
    upstream = UpstreamConfig(
        default_route="deny" if u.choice("default_route", ("https", "deny"), "https") == "deny" else "https",
        connect_timeout=u.duration("connect_timeout", UpstreamConfig.connect_timeout),
        read_timeout=u.duration("read_timeout", UpstreamConfig.read_timeout),
        retries=u.integer("retries", UpstreamConfig.retries),
        layer_hosts=_layer_hosts(u),
        tag_cache_ttl=_duration_or_off(u, "tag_cache_ttl", timedelta(seconds=20)),
    )
    if upstream.retries < 0:
        raise u.error("retries", "must be 0 or more")
    u.done()

    routes_data = data.get("registries", [])
    if not isinstance(routes_data, list):
        raise ConfigError(f"{source}: registries must be an array of tables ([[registries]])")
    routes = tuple(_route(entry, i, source, upstream) for i, entry in enumerate(routes_data))
    names = [r.name for r in routes]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(f"{source}: [[registries]].name: {name!r} is listed twice")
    adm = _Section(data.get("admin", {}), "[admin]", source)
    admin = AdminConfig(listen=adm.address("listen", "") if adm.data.get("listen") else adm.string("listen", ""))
    adm.done()
    lim = _Section(data.get("limits", {}), "[limits]", source)
    limits = LimitsConfig(
        creates_per_minute=lim.integer("creates_per_minute", LimitsConfig.creates_per_minute),
        pulls_per_minute=lim.integer("pulls_per_minute", LimitsConfig.pulls_per_minute),
    )
    for key in ("creates_per_minute", "pulls_per_minute"):
        if getattr(limits, key) < 0:
            raise lim.error(key, "must be 0 (no limit) or more")
    lim.done()
    return Config(service, gateway, layers, upstream, routes, source, auth=auth, admin=admin, limits=limits)


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
    return Path(__file__).resolve().parent.parent / "configs" / "local.toml"
