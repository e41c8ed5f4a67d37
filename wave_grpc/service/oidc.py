"""OIDC callers: an ID token (a JWT) verified against its issuer's published keys.

The token's ``iss`` picks the ``[[auth.oidc]]`` entry; its header's ``alg`` must be
RS256 or ES256 (never ``none``, never an HMAC whose secret would be a public key), its
``kid`` picks the key (an unknown one refetches the issuer's keys, at a bounded rate:
wave_grpc/service/jwks.py); then the signature, ``exp`` (required), ``nbf`` and ``iat``
within the entry's ``leeway``, and ``aud`` against the entry's audience. The caller is
the entry's ``prefix`` followed by the configured claim.

A refusal says which check failed (expired, wrong audience, unknown issuer, bad
signature, ...) so the caller learns what to fix; it quotes the token's own claims
briefly and never key material or what the issuer answered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import jwt

from wave_grpc.config.egress import EgressProxy
from wave_grpc.config.oidc import OidcIssuerConfig
from wave_grpc.errors import brief
from wave_grpc.record import ANONYMOUS
from wave_grpc.service.jwks import ALGORITHMS, IssuerKeys, SigningKey, issuer_keys

# A user id is stored with every token the caller makes and is its listing key.
MAX_SUBJECT_LENGTH = 256


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a token is not an OIDC caller's (a reason the caller can act on)."""

    reason: str


def _when(epoch: Any) -> str:
    try:
        return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (TypeError, ValueError, OverflowError, OSError):
        return "an unreadable time"


class OidcIssuers:
    """The configured issuers; :meth:`caller` answers a user id or a :class:`Refusal`."""

    def __init__(self, entries: Mapping[str, OidcIssuerConfig], keys: Mapping[str, IssuerKeys]) -> None:
        self._entries = dict(entries)
        self._keys = dict(keys)

    @classmethod
    def from_entries(
        cls,
        entries: tuple[OidcIssuerConfig, ...],
        proxy: EgressProxy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> OidcIssuers:
        return cls({e.issuer: e for e in entries}, issuer_keys(entries, proxy, clock))

    def keys_of(self, issuer: str) -> IssuerKeys:
        return self._keys[issuer]

    async def caller(self, token: str) -> str | Refusal:
        """The caller a token names; WaveError (SERVICE_UNAVAILABLE) when the issuer's keys cannot be had."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return Refusal("not a JWT (header.payload.signature, base64url)")
        algorithm = header.get("alg")
        if algorithm not in ALGORITHMS:
            return Refusal(f"alg {brief(algorithm, 20)} is not accepted: tokens must be signed with RS256 or ES256")
        issuer = unverified.get("iss")
        entry = self._entries.get(issuer) if isinstance(issuer, str) else None
        if entry is None:
            return Refusal(
                f"unknown issuer {brief(issuer, 100)}: this service accepts tokens of "
                f"{', '.join(sorted(self._entries))} ([[auth.oidc]] issuer)"
            )
        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else ""
        keys = await self._keys_for(entry, kid, algorithm)
        if isinstance(keys, Refusal):
            return keys
        return self._verified(token, entry, keys, algorithm)

    async def _keys_for(self, entry: OidcIssuerConfig, kid: str, algorithm: str) -> tuple[SigningKey, ...] | Refusal:
        issuer_keys = self._keys[entry.issuer]
        found = (await issuer_keys.current()).named(kid)
        if not found and kid:
            # A key id the set lacks: the issuer may have rotated its keys since they were fetched.
            fresh = await issuer_keys.refreshed()
            if fresh is None:
                return Refusal(
                    f"unknown key id {brief(kid, 60)}: issuer {entry.issuer} does not publish it (its keys were "
                    f"fetched recently; the next refetch may happen in {issuer_keys.seconds_until_refresh():.0f}s)"
                )
            found = fresh.named(kid)
            if not found:
                return Refusal(f"unknown key id {brief(kid, 60)}: issuer {entry.issuer} does not publish it")
        usable = tuple(k for k in found if k.algorithm == algorithm)
        if not usable:
            return Refusal(
                f"bad signature: issuer {entry.issuer} publishes no {algorithm} key"
                + (f" with key id {brief(kid, 60)}" if kid else "")
            )
        return usable

    def _verified(
        self, token: str, entry: OidcIssuerConfig, keys: tuple[SigningKey, ...], algorithm: str
    ) -> str | Refusal:
        claims: dict[str, Any] | None = None
        for key in keys:
            try:
                claims = jwt.decode(
                    token,
                    key.key,
                    algorithms=[algorithm],
                    audience=list(entry.audience),
                    issuer=entry.issuer,
                    leeway=entry.leeway,
                    options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue  # without a kid, every key is tried
            except jwt.PyJWTError as exc:
                return Refusal(self._claims_refused(exc, token, entry))
        if claims is None:
            return Refusal(f"bad signature: the token is not signed by any key issuer {entry.issuer} publishes")
        return self._named_caller(claims, entry)

    @staticmethod
    def _claims_refused(exc: jwt.PyJWTError, token: str, entry: OidcIssuerConfig) -> str:
        """The signature held; a claim did not. (The claims are read again only to quote them.)"""
        claims = jwt.decode(token, options={"verify_signature": False})
        leeway = f"{entry.leeway.total_seconds():g}s"
        if isinstance(exc, jwt.ExpiredSignatureError):
            return f"expired at {_when(claims.get('exp'))} (leeway {leeway}): get a fresh token from {entry.issuer}"
        if isinstance(exc, jwt.ImmatureSignatureError):
            start = _when(claims.get("nbf", claims.get("iat")))
            return f"not valid yet (nbf/iat {start}, leeway {leeway}): check the clocks of this service and the issuer"
        if isinstance(exc, jwt.InvalidAudienceError):
            return (
                f"wrong audience: the token is for {brief(claims.get('aud'), 100)}; tokens of {entry.issuer} must "
                f"be for {' or '.join(map(repr, entry.audience))} ([[auth.oidc]] audience)"
            )
        if isinstance(exc, jwt.MissingRequiredClaimError):
            return f"the token has no {exc.claim!r} claim; ID tokens of {entry.issuer} must carry it"
        return f"the token's claims are not valid ({type(exc).__name__})"

    @staticmethod
    def _named_caller(claims: Mapping[str, Any], entry: OidcIssuerConfig) -> str | Refusal:
        value = claims.get(entry.claim)
        if not isinstance(value, str) or not value.strip():
            return Refusal(f"the token has no {entry.claim!r} claim naming the caller ([[auth.oidc]] claim)")
        user = entry.prefix + value
        if len(user) > MAX_SUBJECT_LENGTH or user == ANONYMOUS:
            return Refusal(f"the token's {entry.claim!r} claim cannot name a caller here ({brief(user, 60)})")
        return user
