"""Registry auth, the pure parts: challenges, schemes, the bearer-token cache, the
credentials a route holds, and the messages that say which credentials to configure.

The exchanges themselves (the ``/v2/`` ping, the token fetch) run in
wave_grpc/registry/client.py over the transport.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from wave_grpc.config import Config, RegistryRoute
from wave_grpc.errors import Errors, WaveError
from wave_grpc.registry.egress import Egress

# Without expires_in the distribution token spec says 60 s.
DEFAULT_TOKEN_SECONDS = 60.0
MAX_CACHED_TOKENS = 4096
_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


@dataclass(frozen=True, slots=True)
class Challenge:
    """A parsed ``WWW-Authenticate`` header (the first challenge in it)."""

    scheme: str
    params: Mapping[str, str]

    @classmethod
    def parse(cls, header: str) -> Challenge | None:
        scheme, _, rest = header.strip().partition(" ")
        if not scheme:
            return None
        params = {
            m.group(1).lower(): (m.group(2).replace('\\"', '"') if m.group(2) is not None else m.group(3))
            for m in _CHALLENGE_PARAM.finditer(rest)
        }
        return cls(scheme.lower(), params)


@dataclass(frozen=True, slots=True)
class AuthScheme:
    """What a registry wants, learnt from its challenge: nothing, Basic, or Bearer at a realm."""

    kind: Literal["none", "basic", "bearer"]
    realm: str = ""
    service: str = ""

    @classmethod
    def from_challenge(cls, challenge: Challenge | None) -> AuthScheme | None:
        if challenge is None:
            return None
        if challenge.scheme == "bearer" and challenge.params.get("realm"):
            return cls("bearer", challenge.params["realm"], challenge.params.get("service", ""))
        if challenge.scheme == "basic":
            return cls("basic")
        return None


class BearerTokens:
    """Tokens by (registry, scope), each until a little before its ``expires_in``; bounded in count."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        # (registry, scope) -> (token, renew at); the scope names the repository.
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}

    def get(self, key: tuple[str, str]) -> str | None:
        cached = self._tokens.get(key)
        if cached is not None and cached[1] > self._clock():
            return cached[0]
        return None

    def put(self, key: tuple[str, str], token: str, expires_in: float) -> None:
        # Renew a little early so a token never expires between the check and its use.
        renew_at = self._clock() + max(expires_in - 10.0, expires_in * 0.5)
        if len(self._tokens) >= MAX_CACHED_TOKENS:
            now = self._clock()
            for stale in [k for k, (_, at) in self._tokens.items() if at <= now] or list(self._tokens)[:1]:
                self._tokens.pop(stale, None)
        self._tokens[key] = (token, renew_at)

    def drop(self, key: tuple[str, str]) -> None:
        self._tokens.pop(key, None)

    def values(self) -> list[str]:
        return [token for token, _ in self._tokens.values()]


class Secrets:
    """Every credential and token the client holds, to keep them out of anything quoted back."""

    def __init__(self, config: Config, tokens: BearerTokens) -> None:
        self._config = config
        self._tokens = tokens
        # The egress proxies' passwords, and the Proxy-Authorization they make.
        self._proxy_secrets = [
            secret
            for proxy in Egress(config).proxies
            if proxy.password
            for secret in (proxy.password, base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode())
        ]

    def _values(self) -> list[str]:
        values = self._tokens.values() + self._proxy_secrets
        for route in self._config.registries:
            if route.password is not None and route.password.value:
                values.append(route.password.value)
                values.append(base64.b64encode(f"{route.username}:{route.password.value}".encode()).decode())
        return values

    def scrub(self, text: str) -> str:
        """Text from an upstream with every credential and token we hold masked."""
        for secret in self._values():
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def carried_by(self, text: str) -> bool:
        return any(len(s) >= 4 and s in text for s in self._values())


def basic_authorization(route: RegistryRoute) -> str | None:
    if route.password is None:
        return None
    raw = f"{route.username}:{route.password.value}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def hint_credentials(route: RegistryRoute) -> str:
    return (
        f"configure credentials for {route.name}: username and password_env (or password, or docker_config) "
        f"in the [[registries]] entry named {route.name!r}"
    )


def denied(route: RegistryRoute, label: str, status: int, said: str, *, by: str = "") -> WaveError:
    """The registry refused us: say whether it was anonymous or our credentials, and what to configure."""
    where = by or f"registry {route.name}"
    if route.has_credentials:
        source = f" from {route.credentials_from}" if route.credentials_from else ""
        message = (
            f"{label}: {where} refused the credentials configured for it (user {route.username!r}{source}) "
            f"with HTTP {status}{said}; check them, and that this user may pull the image"
        )
    else:
        message = (
            f"{label}: {where} refused anonymous access with HTTP {status}{said}; the image is private or "
            f"does not exist (registries answer both with a 401). To pull private images, " + hint_credentials(route)
        )
    return WaveError(Errors.UPSTREAM_DENIED, message)
