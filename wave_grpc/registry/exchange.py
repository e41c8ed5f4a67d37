"""One exchange with an upstream registry, described as a value before any I/O.

The client's methods (wave_grpc/registry/client.py) build an :class:`UpstreamRequest`
and hand it to one place that authenticates, sends, follows redirects and turns
refusals into errors. Everything that follows from the request alone (its URL,
the token scopes it needs, its headers) is answered here, so that place only
holds the conversation with the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from multidict import CIMultiDict

from wave_grpc.config import RegistryRoute
from wave_grpc.errors import ErrorKind, Errors, WaveError

_METHODS: frozenset[str] = frozenset({"GET", "HEAD", "PUT", "POST", "PATCH", "DELETE"})


def origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what decides whether a URL may receive the registry's credentials."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def upstream_repository(route: RegistryRoute, repository: str) -> str:
    """The repository name at the route's endpoint (a mirror may add a prefix)."""
    return f"{route.repository_prefix}/{repository}" if route.repository_prefix else repository


@dataclass(frozen=True, slots=True)
class UpstreamRequest:
    """An authenticated request for ``/v2/<repository>/<path>`` at ``route``.

    ``url`` replaces that path with a URL on the registry's own origin (an upload
    location); a URL on any other origin is refused at construction, since it
    would receive the route's credentials. ``actions`` is the token scope's action
    list (``pull,push`` to write); ``mount_from`` names a repository of the same
    registry the request also reads (a cross-repository mount). ``body`` makes the
    request body afresh for every attempt. ``body_limit`` bounds a body read whole
    (manifests, configs); 0 for one the caller streams.
    """

    route: RegistryRoute
    repository: str
    method: str
    path: str
    label: str  # names the image in every error ("docker.io/library/alpine:3.19")
    accept: tuple[str, ...] = ()
    follow_redirects: bool = True
    not_found: ErrorKind = Errors.MANIFEST_UNKNOWN
    actions: str = "pull"
    body: Callable[[], Any] | None = None
    headers: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    mount_from: str | None = None
    body_limit: int = 0

    def __post_init__(self) -> None:
        if self.method not in _METHODS:
            raise ValueError(f"{self.label}: HTTP method {self.method!r} is not one a registry exchange uses")
        if self.body_limit < 0:
            raise ValueError(f"{self.label}: body_limit must be 0 (streamed) or a positive byte count")
        if self.url is not None and origin(self.url) != origin(self.route.endpoint):
            # An upload location on another host would receive our credentials.
            raise WaveError(
                Errors.UPSTREAM_UNAVAILABLE, f"{self.label}: registry {self.route.name} sent a foreign upload URL"
            )

    @staticmethod
    def header_pairs(headers: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
        return tuple((headers or {}).items())

    @property
    def upstream_repository(self) -> str:
        return upstream_repository(self.route, self.repository)

    @property
    def target(self) -> str:
        """The URL the first attempt goes to."""
        if self.url is not None:
            return self.url
        return f"{self.route.endpoint}/v2/{self.upstream_repository}/{self.path}"

    @property
    def registry_what(self) -> str:
        """The registry as errors about the connection name it."""
        return f"registry {self.route.name} ({self.route.endpoint})"

    @property
    def scopes(self) -> tuple[str, ...]:
        """The token scopes the request needs (a registry's 401 may ask for more)."""
        scopes: tuple[str, ...] = (f"repository:{self.upstream_repository}:{self.actions}",)
        if self.mount_from is not None:
            # A cross-repository mount reads the source repository too.
            scopes = (*scopes, f"repository:{upstream_repository(self.route, self.mount_from)}:pull")
        return scopes

    def headers_with(self, authorization: str | None) -> CIMultiDict[str]:
        """The headers of one attempt: no transparent compression, each Accept on its own line."""
        headers: CIMultiDict[str] = CIMultiDict({"Accept-Encoding": "identity"})
        for media_type in self.accept:  # one header each: distribution reads them as a list
            headers.add("Accept", media_type)
        headers.update(dict(self.headers))
        if authorization is not None:
            headers["Authorization"] = authorization
        return headers
