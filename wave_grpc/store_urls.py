"""Store URLs: the one table of schemes, and a URL parsed once against it.

The config judges a store URL by this table when it reads it; ``stores/open.py``
maps the same schemes to store classes. Both sides read the parts parsed here
(an ``oci://`` store's registry and repository), so no scheme is spelt or split
anywhere else. This sits below the config and the stores so both may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StoreRole(Enum):
    """What a store URL is configured for."""

    TOKENS = "token store"  # [service].store
    LAYERS = "layer store"  # [layers].store
    SHARED_CACHE = "shared cache"  # [gateway].shared_cache: Redis shared by every gateway
    BLOB_CACHE = "blob cache"  # [cache].store: verified base blobs and pinned manifests of cache routes


@dataclass(frozen=True, slots=True)
class StoreScheme:
    name: str
    roles: frozenset[StoreRole]

    @property
    def prefix(self) -> str:
        return f"{self.name}://"


# The order is the order a message lists them in.
STORE_SCHEMES = (
    StoreScheme("sqlite", frozenset({StoreRole.TOKENS})),
    StoreScheme("redis", frozenset({StoreRole.TOKENS, StoreRole.SHARED_CACHE})),
    StoreScheme("rediss", frozenset({StoreRole.TOKENS, StoreRole.SHARED_CACHE})),
    StoreScheme("file", frozenset({StoreRole.LAYERS, StoreRole.BLOB_CACHE})),
    StoreScheme("oci", frozenset({StoreRole.LAYERS, StoreRole.BLOB_CACHE})),
)


def scheme_prefixes(role: StoreRole) -> tuple[str, ...]:
    """``("sqlite://", "redis://", ...)``: the prefixes a URL for ``role`` may start with."""
    return tuple(scheme.prefix for scheme in STORE_SCHEMES if role in scheme.roles)


def serves(text: str, role: StoreRole) -> bool:
    """Whether ``text`` names a store that can serve as ``role`` (e.g. a Redis for the shared cache)."""
    return text.startswith(scheme_prefixes(role))


@dataclass(frozen=True, slots=True)
class StoreUrl:
    """A store URL split once: its scheme and, for ``oci://``, the registry and repository."""

    text: str
    scheme: str
    registry: str = ""
    repository: str = ""

    @classmethod
    def parse(cls, text: str, role: StoreRole) -> StoreUrl:
        """Raises ValueError saying which schemes ``role`` takes, or what an ``oci://`` URL needs."""
        prefixes = scheme_prefixes(role)
        scheme = next((s for s in STORE_SCHEMES if role in s.roles and text.startswith(s.prefix)), None)
        if scheme is None:
            raise ValueError(f"{text!r} must start with one of {', '.join(prefixes)}")
        if scheme.name != "oci":
            return cls(text, scheme.name)
        registry, _, repository = text[len(scheme.prefix) :].partition("/")
        if not registry or not repository:
            raise ValueError(f"{text!r} must be oci://<registry host[:port]>/<repository>")
        return cls(text, scheme.name, registry, repository)

    @property
    def path(self) -> str:
        """What follows ``<scheme>://``: a ``file://`` store's directory, relative to the working directory."""
        return self.text[len(self.scheme) + len("://") :]
