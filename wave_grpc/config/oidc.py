"""``[[auth.oidc]]``: the OpenID Connect issuers whose ID tokens name callers.

Each entry names one issuer (a token's ``iss`` picks the entry, compared exactly as
OpenID Connect asks), the audience its tokens must be for, and the claim that names
the caller. The caller's user id is ``prefix + claim``; the default prefix,
``oidc:<issuer host and path>/``, keeps subjects of two issuers apart, and two
entries may not share one (an operator who wants OIDC callers to be the same owners
as ``[service].tokens`` users sets ``prefix = ""`` on one entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlsplit

from wave_grpc.addresses import as_ipv4, ip_literal
from wave_grpc.config.keys import Reading, Validated, read_table, readable_file, setting
from wave_grpc.config.table import KeyProblem, Table

# Clock skew tolerated on exp, nbf and iat: more would keep an expired token usable.
MAX_LEEWAY = timedelta(minutes=5)


def is_loopback_host(host: str) -> bool:
    """A host on this machine: plain http to it stays on this machine (tests, a local issuer)."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    address = ip_literal(host)
    return address is not None and as_ipv4(address).is_loopback


def fetch_url_problem(url: str) -> str | None:
    """Why ``url`` may not be fetched for keys, or None: https, or http to a loopback host."""
    parts = urlsplit(url)
    if parts.username or parts.password or parts.fragment or not parts.hostname:
        return f"{url!r} must be an https:// URL without credentials or fragment"
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname)):
        return None
    return f"{url!r} must be https:// (plain http only to a loopback host: keys read in clear could be swapped)"


def _url(r: Reading) -> str:
    value = r.table.string(r.key, r.default)
    if value and (problem := fetch_url_problem(value)):
        raise r.error(problem)
    return value


def _audiences(r: Reading) -> tuple[str, ...]:
    value = r.table.data.get(r.key, "")
    r.table.used.add(r.key)
    audiences = [value] if isinstance(value, str) else value
    if not isinstance(audiences, list) or not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise r.error('is required: the audience (aud) this service\'s tokens carry, e.g. "wave-grpc", or a list')
    return tuple(audiences)


def default_prefix(issuer: str) -> str:
    """``oidc:<host><path>/``: the issuer as it names the caller, without scheme."""
    parts = urlsplit(issuer)
    return f"oidc:{parts.netloc}{parts.path.rstrip('/')}/"


def _prefix(r: Reading) -> str:
    return r.table.string(r.key, default_prefix(str(r.earlier.get("issuer", ""))))


@dataclass(frozen=True)
class OidcIssuerConfig(Validated):
    """One ``[[auth.oidc]]`` entry."""

    # The token's iss, exactly; discovery reads <issuer>/.well-known/openid-configuration.
    issuer: str = setting("", read=_url)
    audience: tuple[str, ...] = setting((), read=_audiences)
    # The key set's URL, when the issuer serves no discovery document (then discovery is skipped).
    jwks_url: str = setting("", read=_url)
    # The claim whose string value names the caller (the user id is prefix + value).
    claim: str = setting("sub")
    prefix: str = setting("", read=_prefix)
    # Clock skew tolerated on exp, nbf and iat.
    leeway: timedelta = setting(
        timedelta(seconds=60), check=lambda v: None if v <= MAX_LEEWAY else "must be at most 5m"
    )
    # Each discovery or key-set fetch ends by this.
    timeout: timedelta = setting(timedelta(seconds=10))
    # An unknown key id refetches the key set, at most once per this (a flood of made-up key
    # ids costs the issuer one fetch); keys are also refetched when older than key_max_age.
    min_refresh_interval: timedelta = setting(
        timedelta(seconds=30), check=lambda v: None if v >= timedelta(seconds=1) else "must be at least 1s"
    )
    key_max_age: timedelta = setting(timedelta(hours=1))
    # A PEM CA bundle the issuer's certificate is verified with (an in-cluster issuer's private CA).
    ca_file: str = setting("", read=readable_file)

    def check_together(self) -> None:
        if not self.issuer:
            raise KeyProblem(
                "issuer", 'is required: the issuer URL tokens carry as iss, e.g. "https://accounts.example"'
            )
        if not self.audience:
            raise KeyProblem("audience", "is required: the audience (aud) this service's tokens carry")
        if not self.claim:
            raise KeyProblem("claim", 'must name a claim, e.g. "sub"')


def read_oidc_issuers(r: Reading) -> tuple[OidcIssuerConfig, ...]:
    """``[[auth.oidc]]`` entries; one issuer per entry and no prefix shared (subjects could collide)."""
    entries: list[OidcIssuerConfig] = []
    for i, data in enumerate(r.table.get(r.key, list, [])):
        table = Table(data, f"[[auth.{r.key}]][{i}]", r.table.source)  # refuses an entry that is not a table
        entry = read_table(OidcIssuerConfig, data, table.where, table.source, r.tree)
        for j, earlier in enumerate(entries):
            if earlier.issuer == entry.issuer:
                raise table.error("issuer", f"{entry.issuer!r} is also entry {j}'s: one entry per issuer")
            if earlier.prefix == entry.prefix:
                raise table.error(
                    "prefix",
                    f"{entry.prefix!r} is also entry {j}'s: two issuers' subjects could name one caller; "
                    "give each entry its own prefix",
                )
        entries.append(entry)
    return tuple(entries)
