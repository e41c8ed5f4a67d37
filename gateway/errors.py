"""One place renders every error, in its route family's body format, and logs it once.

Two route families share the gateway, and their clients parse errors differently:

- the OCI registry API under ``/v2/`` (runtimes): the distribution error body
  ``{"errors":[{"code","message","detail"}]}``, with the API version header;
- Wave's REST API everywhere else (Nextflow, the ``wave`` CLI): ``{"message": "..."}``.

The family follows from the path alone, so unmatched paths (404, 405) answer in
the format the client that asked for them expects.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from wave_grpc.errors import Errors, WaveError, brief
from wave_grpc.redaction import redact_path

log = logging.getLogger("gateway")

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_registry_path(path: str) -> bool:
    """True for the OCI registry family (``/v2`` and below); every other path is Wave's REST family."""
    return path == "/v2" or path.startswith("/v2/")


def error_response(error: WaveError) -> web.Response:
    """The OCI distribution error body (``/v2/...``)."""
    body = json.dumps(error.oci_body()).encode()
    headers = dict(API_VERSION_HEADER)
    if error.kind is Errors.UNSUPPORTED:
        headers["Allow"] = "GET, HEAD"
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    if error.blob_size is not None:
        headers["Content-Range"] = f"bytes */{error.blob_size}"
    return web.Response(status=error.kind.http_status, body=body, content_type="application/json", headers=headers)


def wave_error_response(error: WaveError, allow: str = "") -> web.Response:
    """Wave's error body, ``{"message": "..."}``, as Nextflow and the wave CLI read it."""
    headers: dict[str, str] = {}
    if error.kind is Errors.UNAUTHORIZED:
        headers["WWW-Authenticate"] = 'Bearer realm="wave-grpc"'
    if allow:
        headers["Allow"] = allow
    if error.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(error.retry_after)))
    body = json.dumps({"message": error.message}).encode()
    return web.Response(status=error.kind.http_status, body=body, content_type="application/json", headers=headers)


def error_answer(request: web.Request, exc: Exception, registry: bool, wave_routes_hint: str) -> web.Response:
    """``exc``, raised by a handler, as the response its route family's clients read, logged once.

    ``registry`` is the route's family (``is_registry_path``); an unknown Wave path is answered
    with ``wave_routes_hint`` (from the route table, which imports this module). Other
    ``HTTPException`` s are aiohttp's own answers and are raised again.
    """
    if isinstance(exc, WaveError):
        level = logging.WARNING if exc.kind.http_status >= 500 else logging.INFO
        log.log(
            level,
            "%s %s -> %d %s: %s",
            request.method,
            redact_path(request.path),
            exc.kind.http_status,
            exc.kind.oci_code,
            exc.message,
        )
        return error_response(exc) if registry else wave_error_response(exc)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        if registry:
            return error_response(
                WaveError(Errors.UNSUPPORTED, f"{request.method} is not supported: this gateway is read-only")
            )
        allowed = ", ".join(sorted(exc.allowed_methods))
        return wave_error_response(
            WaveError(
                Errors.UNSUPPORTED,
                f"{brief(request.method)} is not supported on {brief(redact_path(request.path))}; use {allowed}",
            ),
            allow=allowed,
        )
    if isinstance(exc, web.HTTPNotFound):
        if registry:
            return error_response(
                WaveError(
                    Errors.NAME_UNKNOWN,
                    f"{brief(redact_path(request.path))} is not served here: image names under this gateway are "
                    "/v2/wt/<token>/<image path> (the name the AugmentService answered at creation)",
                )
            )
        return wave_error_response(
            WaveError(
                Errors.NAME_UNKNOWN,
                f"{brief(redact_path(request.path))} is not served here; the Wave API is {wave_routes_hint}",
            )
        )
    if isinstance(exc, web.HTTPException):
        raise exc
    incident = uuid.uuid4().hex[:12]
    log.error("%s %s failed (incident %s)", request.method, redact_path(request.path), incident, exc_info=exc)
    error = WaveError(Errors.INTERNAL, f"internal error (incident {incident})")
    return error_response(error) if registry else wave_error_response(error)
