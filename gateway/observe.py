"""The gateway's one middleware: errors rendered (gateway/errors.py), then the request counted.

Counting is wave_grpc_http_requests_total and the request-duration histogram. It sits
outside the error rendering, so the status counted is the one the client got. Routes
are labelled by their pattern in the route table
(``/v2/wt/{token}/{name}/manifests/{reference}``), never by a path: a path carries the
pull token and is chosen by the client.

One middleware, not two: each aiohttp middleware is one more coroutine and partial per
request, and any middleware at all adds aiohttp's own (``_fix_request_current_app``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import Handler, rendered
from wave_grpc.metrics import Metrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def count_and_render(metrics: Metrics, wave_routes_hint: str) -> Middleware:
    """The middleware; ``wave_routes_hint`` answers an unknown Wave path (gateway/routes.py)."""
    # prometheus-client resolves (and locks for) a child on every labels() call; the
    # label sets here are few (routes x methods x statuses), so each child is looked
    # up once and kept. The warm manifest path spent about a fifth of its event-loop
    # time in this middleware before.
    counters: dict[tuple[str, str, int], Any] = {}
    histograms: dict[str, Any] = {}
    perf_counter = time.perf_counter

    @web.middleware
    async def counted(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = perf_counter()
        status = 500
        try:
            response = await rendered(request, handler, wave_routes_hint)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            resource = request.match_info.route.resource
            route = resource.canonical if resource is not None else "unmatched"
            # A client may send any method name: only the standard ones become label values.
            method = request.method if request.method in _METHODS else "other"
            key = (route, method, status)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = metrics.http_requests.labels(route, method, str(status))
            counter.inc()
            histogram = histograms.get(route)
            if histogram is None:
                histogram = histograms[route] = metrics.http_duration.labels(route)
            histogram.observe(perf_counter() - started)

    return counted
