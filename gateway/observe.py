"""Counting what the gateway serves: wave_grpc_http_requests_total and the request-duration histogram.

The middleware sits outside the error renderer, so the status counted is the one
the client got. Routes are labelled by their pattern in the route table
(``/v2/wt/{token}/{name}/manifests/{reference}``), never by a path: a path
carries the pull token and is chosen by the client.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import Handler
from wave_grpc.metrics import Metrics


def count_requests(metrics: Metrics) -> Middleware:
    @web.middleware
    async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            metrics.http_requests.labels(route, request.method, str(status)).inc()
            metrics.http_duration.labels(route).observe(time.perf_counter() - started)

    return counted
