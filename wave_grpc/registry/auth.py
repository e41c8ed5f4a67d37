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
from urllib.parse import quote, quote_plus, unquote, unquote_plus

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
    """Every credential and token the client holds, to keep them out of anything quoted back.

    A registry may echo a credential in any spelling, so a password is looked for as
    itself, inside its Basic ``user:password`` base64 and its own base64, URL-encoded
    (``quote``, ``quote_plus``, every byte ``%XX``) and as hex, in any letter case; and
    any :data:`FRAGMENT` or more characters of one of those spellings is masked too.
    Text that still carries one once percent-decoding is undone is withheld whole.
    Bearer tokens (opaque and many) are masked whole, as themselves and URL-encoded.
    """

    def __init__(self, config: Config, tokens: BearerTokens) -> None:
        self._config = config
        self._tokens = tokens
        # The registries' passwords, and the egress proxies' (and the Proxy-Authorization they make).
        credentials = [(route.username, route.password.value) for route in config.registries if route.password]
        credentials += [(proxy.username, proxy.password) for proxy in Egress(config).proxies if proxy.password]
        spellings = [form for username, password in credentials for form in _password_spellings(username, password)]
        # Every FRAGMENT-long piece of a long spelling; a short spelling is matched whole.
        self._fragments = frozenset(
            form[i : i + FRAGMENT]
            for form in spellings
            if len(form) >= FRAGMENT
            for i in range(len(form) - FRAGMENT + 1)
        )
        self._short = tuple(form for form in spellings if MIN_SECRET <= len(form) < FRAGMENT)

    def _token_spellings(self) -> list[str]:
        tokens = [token for token in self._tokens.values() if len(token) >= MIN_SECRET]
        return [_fold(form) for token in tokens for form in {token, quote(token, safe="")}]

    def _masked(self, text: str) -> list[bool]:
        folded = _fold(text)
        masked = [False] * len(text)
        for i in range(len(folded) - FRAGMENT + 1):
            if folded[i : i + FRAGMENT] in self._fragments:
                masked[i : i + FRAGMENT] = [True] * FRAGMENT
        for form in (*self._short, *self._token_spellings()):
            at = folded.find(form)
            while at >= 0:
                masked[at : at + len(form)] = [True] * len(form)
                at = folded.find(form, at + 1)
        return masked

    def _carries(self, text: str) -> bool:
        return any(self._masked(text))

    def scrub(self, text: str) -> str:
        """Text from an upstream with every credential and token we hold masked (or withheld)."""
        masked = self._masked(text)
        out: list[str] = []
        for char, hidden in zip(text, masked, strict=True):
            if not hidden:
                out.append(char)
            elif not out or out[-1] != "***":
                out.append("***")
        scrubbed = "".join(out)
        if any(self._carries(view) for view in (unquote(scrubbed), unquote_plus(scrubbed)) if view != scrubbed):
            return "***"  # a spelling split by encodings we do not undo piece by piece
        return scrubbed

    def carried_by(self, text: str) -> bool:
        return any(self._carries(view) for view in {text, unquote(text), unquote_plus(text)})


# Shorter secrets are not looked for (they would mask ordinary words); fragments of a
# secret's spellings this long or longer are.
MIN_SECRET = 4
FRAGMENT = 8


def _fold(text: str) -> str:
    """Lower case, one character for one (a few characters lower to two; those stay)."""
    return "".join(low if len(low := char.lower()) == 1 else char for char in text)


def _password_spellings(username: str, password: str) -> list[str]:
    if not password:
        return []
    basic = base64.b64encode(f"{username}:{password}".encode()).decode()
    own = base64.b64encode(password.encode()).decode()
    forms: set[str] = {basic, own, base64.urlsafe_b64encode(f"{username}:{password}".encode()).decode()}
    raw = password.encode()
    # upper(): a few characters upper-case to two ("ß" -> "SS"), which folding does not undo.
    forms |= {password, password.upper(), quote(password, safe=""), quote(password), quote_plus(password)}
    forms |= {raw.hex(), "".join(f"%{byte:02x}" for byte in raw)}
    return [_fold(form) for form in forms]


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
