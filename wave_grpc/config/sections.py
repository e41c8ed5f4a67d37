"""The config's sections, one frozen dataclass per TOML table; each field declares its key."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from wave_grpc.addresses import Network, Networks, ip_literal
from wave_grpc.config.egress import EgressProxy, egress_proxy, no_proxy_entries
from wave_grpc.config.keys import (
    Reading,
    Validated,
    address,
    choice,
    duration_or_off,
    filled_by_reader,
    optional_address,
    read_table,
    readable_file,
    setting,
    store_url,
)
from wave_grpc.config.oidc import OidcIssuerConfig, read_oidc_issuers
from wave_grpc.config.registries import Secret
from wave_grpc.config.table import KeyProblem, Table
from wave_grpc.image.layers import LayerLimits
from wave_grpc.store_urls import StoreRole, StoreUrl, serves


@dataclass(frozen=True, slots=True)
class StaticToken:
    """A caller token, stored as its sha256 hex so the config holds no secret."""

    user: str
    sha256: str


def _tokens(r: Reading) -> tuple[StaticToken, ...]:
    tokens = []
    for i, entry in enumerate(r.table.get(r.key, list, [])):
        t = Table(entry, f"{r.table.where}.{r.key}[{i}]", r.table.source)
        user, digest = t.string("user"), t.string("sha256")
        if not user or not re.fullmatch(r"[0-9a-f]{64}", digest):
            raise t.error("sha256", "each token needs user and sha256 (hex sha256 of the token)")
        t.done()
        tokens.append(StaticToken(user, digest))
    return tuple(tokens)


def _strings(r: Reading) -> tuple[str, ...]:
    return tuple(str(v) for v in r.table.get(r.key, list, list(r.default)))


def _networks(r: Reading) -> Networks:
    """A list of addresses and CIDR blocks (trusted proxies); an entry that is neither is named."""
    blocks: list[Network] = []
    for i, entry in enumerate(r.table.get(r.key, list, [])):
        try:
            blocks.extend(Networks.parse([entry if isinstance(entry, str) else repr(entry)]).blocks)
        except ValueError as exc:
            raise r.error(str(exc), f"{r.key}[{i}]") from None
    return Networks(tuple(blocks))


# The gateway's proof to the service: long enough that guessing it is hopeless.
MIN_GATEWAY_SECRET_LENGTH = 16
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _gateway_secret(r: Reading) -> dict[str, Any]:
    """gateway_secret_env and the secret it names, read once at load (like a registry's password_env)."""
    name = r.table.string(r.key, "")
    if not name:
        return {"gateway_secret_env": "", "gateway_secret": None}
    if not _ENV_NAME.fullmatch(name):
        raise r.error(f"{name!r} is not an environment variable name")
    value = os.environ.get(name, "")
    if len(value) < MIN_GATEWAY_SECRET_LENGTH:
        found = "is not set" if name not in os.environ else f"holds {len(value)} characters"
        raise r.error(
            f"environment variable {name} {found}; set it to the same secret of at least "
            f"{MIN_GATEWAY_SECRET_LENGTH} characters for the service and the gateway (e.g. `openssl rand -hex 32`)"
        )
    return {"gateway_secret_env": name, "gateway_secret": Secret(value)}


@dataclass(frozen=True)
class ServiceConfig(Validated):
    listen: str = setting("127.0.0.1:50051", read=address)
    store: str = setting("sqlite:///.wave-grpc/wave.db", read=store_url(StoreRole.TOKENS))
    token_ttl: timedelta = setting(timedelta(hours=36))
    anonymous: bool = setting(True)
    tokens: tuple[StaticToken, ...] = setting((), read=_tokens)
    max_message_size: int = setting(128 << 20, unit="bytes")
    # Layers up to this size may come inline as data:; bigger ones go through UploadLayer.
    inline_layer_limit: int = setting(64 << 20, unit="bytes")
    # Largest token record (the config, the layer list, the digests): every gateway must
    # be able to fetch it back, and a record is read on every pull's cache miss.
    max_record_size: int = setting(1 << 20, unit="bytes")
    # RPCs in flight at once (more are answered RESOURCE_EXHAUSTED), and how long a client
    # connection with no RPC in flight is kept (clients reconnect transparently).
    max_concurrent_rpcs: int = setting(1024)
    idle_timeout: timedelta = setting(timedelta(minutes=2))
    # A forwarded client address (the gateway's, for REST callers) is believed only from a
    # caller that proves it is the gateway (gateway_secret_env); when listed, only from these
    # peers (addresses or CIDR blocks) as well. Empty: any peer that has the secret.
    trusted_proxies: Networks = setting(Networks(), read=_networks)
    # Largest layer UploadLayer takes (compressed bytes): bounds the disk one upload can fill.
    max_layer_size: int = setting(16 << 30, unit="bytes", at_least=1)
    # PEM files: with both set the AugmentService speaks TLS only.
    tls_cert: str = setting("", read=readable_file)
    tls_key: str = setting("", read=readable_file)
    # Freeze copies run at once per replica; more wait PENDING.
    freeze_workers: int = setting(2, at_least=1, at_most=64)
    # What one token's image may be: layers per platform (base, included and injected;
    # overlayfs stacks at most 500 lower directories) and the size of each served manifest
    # (distribution refuses manifests over 4 MiB). Checked at creation, naming the key.
    max_image_layers: int = setting(500, at_least=1)
    max_manifest_size: int = setting(4 << 20, unit="bytes", at_least=4096)
    # On SIGTERM, RPCs in flight get this long to finish before they are cancelled.
    shutdown_grace: timedelta = setting(timedelta(seconds=30))
    # The environment variable holding the secret the gateway proves itself with (gRPC
    # metadata): only then does the service believe its forwarded client addresses and
    # answer GetContainer with the owner. Both faces read it from the same config. Unset:
    # `wave-grpc serve` running both faces makes a random one per process.
    gateway_secret_env: str = filled_by_reader("", _gateway_secret)
    gateway_secret: Secret | None = field(default=None, repr=False)
    # A freeze's whole copy (the pinned bytes fetched, every blob, the manifests) ends by
    # this: a source that drips would otherwise hold a freeze worker for ever.
    freeze_deadline: timedelta = setting(
        timedelta(hours=1), check=lambda v: None if v > timedelta(0) else "must be over 0s"
    )
    # Mutual TLS: a PEM CA bundle; every client must present a certificate it signed.
    tls_client_ca: str = setting("", read=readable_file)
    # The certificate subject (common name or DNS name) that proves a peer is the gateway:
    # with it set, only that peer's forwarded client addresses are believed.
    gateway_subject: str = setting("")
    # How long a token may live from its creation, renewals (RenewContainer, an identical
    # creation) included: a long pipeline renews its tokens, but a name never lives for ever.
    max_token_lifetime: timedelta = setting(timedelta(days=30))

    def check_together(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise KeyProblem("tls_key" if self.tls_cert else "tls_cert", "give both tls_cert and tls_key, or neither")
        if self.gateway_secret is not None and len(self.gateway_secret.value) < MIN_GATEWAY_SECRET_LENGTH:
            raise KeyProblem(
                "gateway_secret_env", f"the gateway secret needs at least {MIN_GATEWAY_SECRET_LENGTH} characters"
            )
        if self.tls_client_ca and not self.tls_cert:
            raise KeyProblem("tls_client_ca", "needs tls_cert and tls_key: client certificates are asked for in TLS")
        if self.gateway_subject and not self.tls_client_ca:
            raise KeyProblem("gateway_subject", "needs tls_client_ca: the gateway proves its subject by certificate")
        if self.token_ttl > self.max_token_lifetime:
            raise KeyProblem(
                "token_ttl",
                f"{self.token_ttl} is longer than max_token_lifetime ({self.max_token_lifetime}), the most a token "
                "may live from its creation, renewals included; shorten token_ttl or raise max_token_lifetime",
            )


def _host_without_path(value: str) -> str | None:
    return None if value and "/" not in value else f"{value!r} must be host[:port], without scheme or path"


EVENT_LOOPS = ("asyncio", "uvloop")


def _event_loop(value: str) -> str | None:
    return None if value in EVENT_LOOPS else f"{value!r} must be one of {', '.join(map(repr, EVENT_LOOPS))}"


def _redis_or_empty(value: str) -> str | None:
    if not value or serves(value, StoreRole.SHARED_CACHE):
        return None
    return f"{value!r} must be a redis:// URL (or empty for none)"


def _service_store_if_redis(tree: Any) -> str:
    store = str(tree["service"].store)
    return store if serves(store, StoreRole.SHARED_CACHE) else ""


@dataclass(frozen=True)
class GatewayConfig(Validated):
    listen: str = setting("127.0.0.1:9090", read=address)
    # host[:port] written into target image names.
    public_host: str = setting("localhost:9090", check=_host_without_path)
    # The AugmentService the gateway asks (default: the service's own listen address).
    service: str = setting("127.0.0.1:50051", read=address, default_from=lambda tree: tree["service"].listen)
    # Token records are cached this long; revocation is seen within it.
    record_cache_ttl: timedelta = setting(timedelta(milliseconds=500))
    rewrite_cache_size: int = setting(4096)
    # PEM CA bundle: when set, the gateway reaches the service over TLS and verifies it.
    service_tls_ca: str = setting("", read=readable_file)
    # In-process cache of pinned upstream manifests/configs and augmented images.
    content_cache_bytes: int = setting(256 << 20, unit="bytes")
    # redis://... shared by all gateways (default: the service store when it is Redis).
    shared_cache: str = setting("", check=_redis_or_empty, default_from=_service_store_if_redis)
    # Worker processes serving the gateway port (0: one per core).
    workers: int = setting(1, at_least=0, zero_means="one per core")
    # The serving processes' event loop (the service in the same process runs on it too):
    # "asyncio", the standard library's, or "uvloop" (bench/README.md measures both).
    event_loop: str = setting("asyncio", check=_event_loop)
    # One log line per request; costly at tens of thousands of requests a second.
    access_log: bool = setting(True)
    # Largest Wave REST body: room for Wave's 14,000,000-character inline layer field,
    # refused from Content-Length before any byte is read.
    max_body_size: int = setting(16 << 20, unit="bytes", at_least=1024)
    # A connection with no request in flight (before its first request too) is closed
    # after this; so is one whose request head does not arrive within it.
    idle_timeout: timedelta = setting(timedelta(seconds=15))
    # A REST body must arrive within this; a blob chunk must be taken by the client within this.
    body_timeout: timedelta = setting(timedelta(seconds=60))
    send_timeout: timedelta = setting(timedelta(seconds=60))
    # Open connections per gateway process; past it a new one gets 503 with Retry-After.
    max_connections: int = setting(2048, at_least=1)
    # On SIGTERM the listener closes at once; requests and blob streams in flight get this
    # long to finish (readiness answers 503 "draining" meanwhile), then the process exits 0.
    shutdown_grace: timedelta = setting(timedelta(seconds=30))
    # Reverse proxies (addresses or CIDR blocks) in front of the gateway: from these peers
    # only, X-Forwarded-For names the client (its rightmost address not listed here).
    trusted_proxies: Networks = setting(Networks(), read=_networks)
    # PEM files: the certificate the gateway presents to a service that asks for one ([service].tls_client_ca).
    service_tls_cert: str = setting("", read=readable_file)
    service_tls_key: str = setting("", read=readable_file)

    def check_together(self) -> None:
        if bool(self.service_tls_cert) != bool(self.service_tls_key):
            key = "service_tls_key" if self.service_tls_cert else "service_tls_cert"
            raise KeyProblem(key, "give both service_tls_cert and service_tls_key, or neither")


@dataclass(frozen=True)
class LayersConfig(Validated):
    # file://<dir> (one machine) or oci://<registry>/<repository> (shared by replicas).
    store: str = setting("file://.wave-grpc/layers", read=store_url(StoreRole.LAYERS))
    # Where uploads are verified before they go to an oci:// store.
    staging: str = setting(".wave-grpc/staging")
    # Decompression bombs end early: a layer may inflate to at most this many bytes, and
    # (past 64 MiB) to at most this many times its compressed size (0: no ratio limit).
    max_inflated_size: int = setting(32 << 30, unit="bytes", at_least=1 << 20)
    max_inflation_ratio: int = setting(200, at_least=0, zero_means="no ratio limit")
    # Character and block devices in a layer's tar: refused unless allowed.
    allow_devices: bool = setting(False)
    # Threads that hash, inflate and check uploaded layers (their own pool).
    verify_workers: int = setting(2, at_least=1)
    # Garbage collection: a stored layer is kept while a live token references it and
    # for gc_grace after the last reference (or its upload) was seen; the service
    # collects every gc_interval (None, "off" in TOML: only `wave-grpc gc`).
    gc_grace: timedelta = setting(timedelta(hours=6))
    gc_interval: timedelta | None = setting(timedelta(hours=1), read=duration_or_off)

    @cached_property
    def store_url(self) -> StoreUrl:
        return StoreUrl.parse(self.store, StoreRole.LAYERS)

    @property
    def limits(self) -> LayerLimits:
        return LayerLimits(self.max_inflated_size, self.max_inflation_ratio, self.allow_devices)

    @property
    def file_root(self) -> Path:
        return Path(self.store_url.path).expanduser()


_LAYER_HOST = re.compile(
    r"^(?:\*\.)?(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?::\d{1,5})?$"
)


def _layer_hosts(r: Reading) -> tuple[str, ...]:
    hosts = []
    for i, entry in enumerate(r.table.get(r.key, list, [])):
        value = entry.strip().lower() if isinstance(entry, str) else entry
        if not isinstance(value, str) or not (
            _LAYER_HOST.match(value) or re.fullmatch(r"\[[0-9a-f:.]+\](:\d+)?", value)
        ):
            raise r.error(
                f"{entry!r} is not a host: use 'host', 'host:port' or '*.domain' (no scheme/path)", f"{r.key}[{i}]"
            )
        host = value[1:].partition("]")[0] if value.startswith("[") else value.rsplit(":", 1)[0]
        if ip_literal(host) is not None:
            raise r.error(
                f"{entry!r} is an IP address; layer_hosts match host names only (a runtime is redirected there, "
                "and an address can be spelt many ways): name the host",
                f"{r.key}[{i}]",
            )
        hosts.append(value)
    return tuple(hosts)


@dataclass(frozen=True)
class UpstreamConfig(Validated):
    # Registries no [[registries]] entry names: "https" (plain http for loopback
    # hosts, as docker treats 127.0.0.0/8 as insecure) or "deny".
    default_route: Literal["https", "deny"] = setting("https", read=choice("https", "deny"))
    connect_timeout: timedelta = setting(timedelta(seconds=10))
    read_timeout: timedelta = setting(timedelta(seconds=60))
    retries: int = setting(3, at_least=0)
    # Hosts that http(s) layer locations may point at ("host", "host:port",
    # "*.domain"); empty: none. Runtimes are redirected only to these.
    layer_hosts: tuple[str, ...] = setting((), read=_layer_hosts)
    # How long a tag's resolution (tag -> digests) is reused by creations (None, "off"
    # in TOML: never). Seqera Wave keeps 20 s: a tag moved upstream is seen at most this
    # much later, and a burst of creations of one image costs the registry one resolution.
    tag_cache_ttl: timedelta | None = setting(timedelta(seconds=20), read=duration_or_off)
    # One upstream must not degrade the service for the others (wave_grpc/registry/isolation.py):
    # a whole exchange (headers, retries, a buffered body) ends by exchange_deadline; a streamed
    # blob older than that must have averaged min_stream_rate; each listed registry has its own
    # connections, every unlisted one shares a smaller pool; pool_wait bounds the wait for one.
    exchange_deadline: timedelta = setting(timedelta(seconds=120))
    min_stream_rate: int = setting(16 << 10, unit="bytes per second", at_least=0, zero_means="no minimum")
    registry_connections: int = setting(64, at_least=1)
    unlisted_connections: int = setting(32, at_least=1)
    unlisted_connections_per_host: int = setting(8, at_least=1)
    pool_wait: timedelta = setting(timedelta(seconds=10))
    # A registry with breaker_failures timeouts or refused connections within breaker_window
    # (and no completed exchange) fails fast for breaker_cooldown, naming it.
    breaker_failures: int = setting(5, at_least=1)
    breaker_window: timedelta = setting(timedelta(seconds=30))
    breaker_cooldown: timedelta = setting(timedelta(seconds=30))
    # Upstream manifests, indexes and configs are measured before they are parsed:
    # far above any real image, far below what costs gigabytes (wave_grpc/image/jsonbound.py).
    max_json_values: int = setting(200_000, at_least=1)
    max_json_depth: int = setting(64, at_least=1, at_most=1000)
    max_layers: int = setting(1000, at_least=1)
    # The egress proxy every upstream exchange goes through (HTTPS by CONNECT): "http://user@host:port",
    # "env" (HTTPS_PROXY and NO_PROXY, as curl reads them) or "" for none; the password comes from
    # proxy_password_env; no_proxy lists names, domains and addresses reached directly. A
    # [[registries]] entry may name its own proxy, or "direct".
    proxy: str = setting("")
    proxy_password_env: str = setting("")
    no_proxy: tuple[str, ...] = setting((), read=lambda r: no_proxy_entries(_strings(r)))

    @cached_property
    def egress_proxy(self) -> EgressProxy | None:
        return egress_proxy(self.proxy, self.proxy_password_env, self.no_proxy, where="[upstream]")

    def check_together(self) -> None:
        _ = self.egress_proxy  # read once here: an unset variable is an error at load, naming its key


@dataclass(frozen=True)
class AdminConfig(Validated):
    # host:port for /metrics, /healthz and /readyz; empty: no admin endpoints.
    listen: str = setting("", read=optional_address)


@dataclass(frozen=True)
class LimitsConfig(Validated):
    # Per caller (the authenticated user, else the client address); 0: no limit.
    creates_per_minute: int = setting(0, at_least=0, zero_means="no limit")
    # Manifest GETs per token owner (per creating client address for anonymous tokens); 0: no limit.
    pulls_per_minute: int = setting(0, at_least=0, zero_means="no limit")
    # "Unknown token" answers (404 under /v2/wt/) per client address at the gateway: past it,
    # 429 for every token lookup from that address until the minute ends. Bounds token guessing.
    token_misses_per_minute: int = setting(120, at_least=0, zero_means="no limit")
    # Freezes a caller may ask for per hour: each copies whole images with the operator's
    # push credentials, so the limit is on unless an operator turns it off; 0: no limit.
    freezes_per_hour: int = setting(20, at_least=0, zero_means="no limit")


AUTH_VERIFIERS = ("static", "tower", "oidc")


def _endpoint_url(r: Reading, value: Any, key: str) -> str:
    text = value.strip().rstrip("/") if isinstance(value, str) else ""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username or parts.password:
        raise r.error(f"{value!r} must be an http(s) URL without credentials, e.g. https://api.cloud.seqera.io", key)
    return text


def _tower_endpoint(r: Reading) -> str:
    endpoint = r.table.string(r.key, r.default)
    return _endpoint_url(r, endpoint, r.key) if endpoint else ""


def _tower_allowed_endpoints(r: Reading) -> tuple[str, ...]:
    return tuple(_endpoint_url(r, e, f"{r.key}[{i}]") for i, e in enumerate(r.table.get(r.key, list, [])))


@dataclass(frozen=True)
class TowerAuthConfig(Validated):
    """``[auth.tower]``: a Seqera-Platform-compatible ``<endpoint>/user-info`` token check."""

    endpoint: str = setting("", read=_tower_endpoint)
    # Other endpoints a request's tower_endpoint may name; any other is never called.
    allowed_endpoints: tuple[str, ...] = setting((), read=_tower_allowed_endpoints)
    cache_ttl: timedelta = setting(timedelta(seconds=60))
    timeout: timedelta = setting(timedelta(seconds=10))


def _verifiers(r: Reading) -> tuple[str, ...]:
    names = r.table.get(r.key, list, r.default)
    for i, name in enumerate(names):
        if name not in AUTH_VERIFIERS:
            raise r.error(f"{name!r} is not one of {', '.join(AUTH_VERIFIERS)}", f"{r.key}[{i}]")
        if names.index(name) != i:
            raise r.error(f"{name!r} is listed twice", f"{r.key}[{i}]")
    return tuple(names)


def _tower(r: Reading) -> TowerAuthConfig:
    where = f"{r.table.where[:-1]}.{r.key}]"  # [auth.tower]
    return read_table(TowerAuthConfig, r.table.get(r.key, dict, {}), where, r.table.source, r.tree)


@dataclass(frozen=True)
class AuthConfig(Validated):
    """``[auth]``: the caller-token verifiers, tried in order (see wave_grpc/service/auth.py)."""

    # Default: "static" when [service].tokens lists tokens. What they need from other
    # sections is checked where the sections meet (tree.check_callers).
    verifiers: tuple[str, ...] = setting(
        (), read=_verifiers, default_from=lambda tree: ["static"] if tree["service"].tokens else []
    )
    tower: TowerAuthConfig = setting(TowerAuthConfig(), read=_tower)
    # [[auth.oidc]]: OpenID Connect issuers whose tokens the "oidc" verifier accepts (config/oidc.py).
    oidc: tuple[OidcIssuerConfig, ...] = setting((), read=read_oidc_issuers)

    def check_together(self) -> None:
        if "oidc" in self.verifiers and not self.oidc:
            raise KeyProblem(
                "oidc",
                'the "oidc" verifier needs at least one [[auth.oidc]] entry with issuer and audience, '
                'e.g. issuer = "https://accounts.example", audience = "wave-grpc"',
            )
