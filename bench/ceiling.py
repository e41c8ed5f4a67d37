"""The ceiling: a bare aiohttp handler answering fixed manifest bytes.

``python -m bench.ceiling PORT FILE MEDIA_TYPE [--gateway-framework] [--uvloop]`` serves
FILE's bytes at every path, with the same headers the gateway sends, and nothing else;
on uvloop with ``--uvloop`` (as the gateway with ``[gateway] event_loop = "uvloop"``).

With ``--gateway-framework`` the same handler runs on what the gateway's default
configuration asks of aiohttp, and nothing of the gateway's own work: its route table
(every pattern, the catch-alls, the regex match of a tokened name), the headers of a
prepared manifest answer and its access log (gateway/access_log.py) at INFO. That is
the floor of a warm manifest GET in this framework with those features, so the
gateway's distance from it is its own code's cost.
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

FRAMEWORK = "--gateway-framework"
UVLOOP = "--uvloop"


def _gateway_framework(app: web.Application, handler: Callable[[web.Request], Awaitable[web.Response]]) -> None:
    from gateway.routes import ROUTES

    for route in ROUTES:
        if route.method == "GET":
            app.router.add_get(route.path, handler)
        else:
            app.router.add_route(route.method, route.path, handler)
    app.router.add_route("*", "/v2/{tail:.*}", handler)
    app.router.add_route("*", "/{tail:.*}", handler)


def main() -> None:
    port, path, media_type = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    framework = FRAMEWORK in sys.argv[4:]
    loop = None
    if UVLOOP in sys.argv[4:]:
        import uvloop

        loop = uvloop.new_event_loop()
    body = path.read_bytes()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    headers = {
        "Content-Type": media_type,
        "Docker-Content-Digest": digest,
        "Docker-Distribution-API-Version": "registry/2.0",
    }
    if framework:
        headers.update({"Content-Length": str(len(body)), "ETag": f'"{digest}"'})

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=body, headers=headers)

    app = web.Application()
    if not framework:
        app.router.add_get("/{tail:.*}", answer)
        web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None, loop=loop)
        return
    from gateway.access_log import AccessLog

    _gateway_framework(app, answer)
    access = logging.getLogger("gateway.access")
    access.setLevel(logging.INFO)
    web.run_app(app, host="127.0.0.1", port=port, access_log=access, access_log_class=AccessLog, print=None, loop=loop)


if __name__ == "__main__":
    main()
