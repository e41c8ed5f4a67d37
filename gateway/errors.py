"""One place renders every error on ``/v2/...`` as an OCI error body, and logs it once."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from wave_grpc.errors import Errors, WaveError

log = logging.getLogger("gateway")

API_VERSION_HEADER = {"Docker-Distribution-API-Version": "registry/2.0"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: WaveError) -> web.Response:
    body = json.dumps(error.oci_body()).encode()
    headers = dict(API_VERSION_HEADER)
    if error.kind is Errors.UNSUPPORTED:
        headers["Allow"] = "GET, HEAD"
    return web.Response(status=error.kind.http_status, body=body, content_type="application/json", headers=headers)


@web.middleware
async def oci_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except WaveError as exc:
        level = logging.WARNING if exc.kind.http_status >= 500 else logging.INFO
        log.log(
            level,
            "%s %s -> %d %s: %s",
            request.method,
            request.path,
            exc.kind.http_status,
            exc.kind.oci_code,
            exc.message,
        )
        return error_response(exc)
    except web.HTTPMethodNotAllowed:
        return error_response(
            WaveError(Errors.UNSUPPORTED, f"{request.method} is not supported: this gateway is read-only")
        )
    except web.HTTPNotFound:
        return error_response(
            WaveError(
                Errors.NAME_UNKNOWN,
                f"{request.path} is not served here; names look like /v2/wt/<token>/<image path>",
            )
        )
    except web.HTTPException:
        raise
    except Exception:
        incident = uuid.uuid4().hex[:12]
        log.exception("%s %s failed (incident %s)", request.method, request.path, incident)
        return error_response(WaveError(Errors.INTERNAL, f"internal error (incident {incident})"))
    response.headers.update(API_VERSION_HEADER)
    return response
