"""Every route's handler, observed: its errors rendered (gateway/errors.py), then the request counted.

Counting is wave_grpc_http_requests_total and the request-duration histogram. It sits
outside the error rendering, so the status counted is the one the client got. Routes
are labelled by their pattern in the route table
(``/v2/wt/{token}/{name}/manifests/{reference}``), never by a path: a path carries the
pull token and is chosen by the client.

A wrapper per route, not an aiohttp middleware: a middleware is one more coroutine and
partial per request, any middleware at all adds aiohttp's own
(``_fix_request_current_app``), and it has to look up the route's pattern and family on
every request, where a wrapper is made knowing both. Paths no route takes reach the
route table's catch-all routes (gateway/routes.py), observed the same way.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.errors import API_VERSION_HEADER, Handler, error_answer, is_registry_path
from wave_grpc.metrics import Metrics

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
(_API_VERSION, _REGISTRY_2), *_ = API_VERSION_HEADER.items()


def observed(handler: Handler, route: str, registry: bool | None, metrics: Metrics, wave_routes_hint: str) -> Handler:
    """``handler`` with its errors rendered and its requests counted under ``route``.

    ``registry`` is the route's family (None: read it off each request's path, for a
    catch-all); ``wave_routes_hint`` answers an unknown Wave path (gateway/routes.py).
    """
    # prometheus-client resolves (and locks for) a child on every labels() call; the
    # label sets of one route are few (methods x statuses), so each child is looked
    # up once and kept.
    counters: dict[tuple[str, int], Any] = {}
    histogram = metrics.http_duration.labels(route)
    perf_counter = time.perf_counter

    async def answer(request: web.Request) -> web.StreamResponse:
        started = perf_counter()
        status = 500
        family = is_registry_path(request.path) if registry is None else registry
        try:
            try:
                response = await handler(request)
            except Exception as exc:  # rendered, or raised again, by error_answer
                response = error_answer(request, exc, family, wave_routes_hint)
            else:
                if family:
                    response.headers[_API_VERSION] = _REGISTRY_2
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            # A client may send any method name: only the standard ones become label values.
            key = (request.method if request.method in _METHODS else "other", status)
            counter = counters.get(key)
            if counter is None:
                counter = counters[key] = metrics.http_requests.labels(route, key[0], str(status))
            counter.inc()
            histogram.observe(perf_counter() - started)

    return answer
