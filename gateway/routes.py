"""The route table: every path the gateway serves, as data.

Two families: the OCI registry API under ``/v2/`` (what runtimes pull from) and
Wave's REST API (what Nextflow and the ``wave`` CLI call; gateway/handlers/wave_*).
gateway/errors.py renders each family's errors in its own body format.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from aiohttp import web

from gateway.errors import Handler, is_registry_path
from gateway.handlers import base, blobs, manifests, referrers, tags, wave_containers, wave_info, wave_tokens
from gateway.observe import observed
from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.metrics import Metrics
from wave_grpc.redaction import redact_path

# A repository name as the distribution spec writes it: path components joined by "/".
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_NAME = f"{{name:{_REPOSITORY}}}"
_TOKEN_PARAM = "{token:[a-z0-9]+}"  # noqa: S105 - a path pattern, not a secret
# Any text up to the next "/": the service validates it and names the field when it is wrong.
_SEGMENT = "[^/]+"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    method: Literal["GET", "POST", "DELETE"] = "GET"


# GET routes answer HEAD too, with the same headers (aiohttp's add_get).
ROUTES: tuple[Route, ...] = (
    # The OCI registry API.
    Route("base", "/v2/", base.api_version),
    Route("manifest", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/manifests/{{reference}}", manifests.get_manifest),
    Route("blob", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/blobs/{{digest}}", blobs.get_blob),
    Route("tags", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/tags/list", tags.list_tags),
    Route("referrers", f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/referrers/{{digest}}", referrers.list_referrers),
    # Wave's REST API.
    Route("wave-container", "/v1alpha2/container", wave_containers.create_container, "POST"),
    Route("wave-container-token", "/container-token", wave_containers.create_container, "POST"),
    Route(
        "wave-container-status",
        f"/v1alpha2/container/{{request_id:{_SEGMENT}}}/status",
        wave_containers.container_status,
    ),
    Route("wave-token-describe", f"/container-token/{{token:{_SEGMENT}}}", wave_tokens.describe_token),
    Route("wave-token-revoke", f"/container-token/{{token:{_SEGMENT}}}", wave_tokens.revoke_token, "DELETE"),
    Route("wave-token-renew", f"/container-token/{{token:{_SEGMENT}}}/renew", wave_tokens.renew_token, "POST"),
    Route("wave-service-info", "/service-info", wave_info.service_info),
    Route("wave-inspect", "/v1alpha1/inspect", wave_containers.inspect_image, "POST"),
)


_TOKENED_PREFIX = f"/v2/wt/{_TOKEN_PARAM}/{_NAME}/"
# A registry API path of any tokened family above (manifests, blobs, ...) whose name
# lacks the wt/<token>/ prefix: the families are read off the table, not listed again.
_UNTOKENED_FAMILIES = tuple(
    dict.fromkeys(
        route.path.removeprefix(_TOKENED_PREFIX).split("/", 1)[0]
        for route in ROUTES
        if route.path.startswith(_TOKENED_PREFIX)
    )
)
_UNTOKENED = re.compile(rf"^/v2/(?P<name>{_REPOSITORY})/(?:{'|'.join(map(re.escape, _UNTOKENED_FAMILIES))})/")


def shown_path(path: str) -> str:
    """A Wave route path as its clients read it: ``/x/{request_id:[^/]+}`` -> ``/x/<requestId>``.

    A parameter is shown by its JSON name in Wave's bodies (``requestId``), which is how clients know the value.
    """

    def placeholder(match: re.Match[str]) -> str:
        first, *rest = match[1].split("_")
        return "<" + first + "".join(word.capitalize() for word in rest) + ">"

    return re.sub(r"\{(\w+)(?::[^}]*)?\}", placeholder, path)


def wave_routes_hint(routes: tuple[Route, ...] = ROUTES) -> str:
    """Wave's REST routes (every route outside ``/v2``), one path each with its methods: ``GET|DELETE /x``."""
    methods: dict[str, list[str]] = {}
    for route in routes:
        if not is_registry_path(route.path):
            methods.setdefault(shown_path(route.path), []).append(route.method)
    return ", ".join(f"{'|'.join(verbs)} {path}" for path, verbs in methods.items())


WAVE_ROUTES_HINT = wave_routes_hint()


def untokened_name(path: str) -> str | None:
    """The repository name of a well-formed registry API path outside ``/v2/wt/<token>/``, else None.

    Such a name is not malformed: it is a plain image name (``library/busybox``)
    asked of a gateway that serves only names it handed out with a token.
    """
    match = _UNTOKENED.match(path)
    if match is None or match["name"] == "wt" or match["name"].startswith("wt/"):
        return None
    return match["name"]


def no_token(name: str) -> WaveError:
    return WaveError(
        Errors.NAME_UNKNOWN,
        f"this gateway serves only augmented images, under /v2/wt/<token>/<image path>; {brief(name)} has no "
        "token: create one with CreateContainer or `wave-grpc augment` and pull the image name it answers",
    )


def add_routes(app: web.Application, metrics: Metrics) -> None:
    """Every route, each handler observed (gateway/observe.py), then the catch-alls for the paths none takes."""

    def add(method: str, path: str, handler: Handler, label: str | None = None, name: str | None = None) -> None:
        registry = is_registry_path(path) if label is None else None
        resource = app.router.add_resource(path, name=name)
        wrapped = observed(handler, label or resource.canonical, registry, metrics, WAVE_ROUTES_HINT)
        if method == "GET":  # GET routes answer HEAD too, with the same headers (as aiohttp's add_get)
            resource.add_route("HEAD", wrapped)
        resource.add_route(method, wrapped)

    for route in ROUTES:
        add(route.method, route.path, route.handler, name=route.name)

    # Writes are not part of this registry: answer them with UNSUPPORTED, not 404.
    async def read_only(request: web.Request) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            # A name with a token still in it would be logged with the message: the redacted path is echoed.
            name = untokened_name(redact_path(request.path))
            if name is not None:
                raise no_token(name)
            raise web.HTTPNotFound()
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])

    add("*", "/v2/{tail:.*}", read_only)

    # Any other path: 405 naming the methods when a route has the path, else 404 (each in its family's format).
    routed = tuple(app.router.resources())

    async def unrouted(request: web.Request) -> web.StreamResponse:
        allowed: set[str] = set()
        for resource in routed:
            allowed |= (await resource.resolve(request))[1]
        if allowed:
            raise web.HTTPMethodNotAllowed(request.method, allowed)
        raise web.HTTPNotFound()

    add("*", "/{tail:.*}", unrouted, label="unmatched")
