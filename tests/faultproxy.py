"""An HTTP forwarder for tests: injects faults in front of a real server, and records.

``python tests/faultproxy.py --listen 127.0.0.1:P --target http://127.0.0.1:T [--record FILE]``
forwards every request byte for byte (redirects and all, no decompression).
``POST /__fault__`` with a JSON body switches what it does to the next requests:

* ``{"mode": "pass"}``: forward (the default);
* ``{"mode": "status", "status": 503, "count": 2, "retry_after": "1"}``: answer
  that status (an OCI error body) to the next ``count`` requests (all, without
  ``count``), then forward again;
* ``{"mode": "stall"}``: accept and never answer (until the client gives up);
* ``{"mode": "corrupt", "match": "/blobs/"}``: forward, but flip one bit in the middle
  of each body of a GET whose path contains ``match`` (length unchanged);
* ``{"mode": "truncate", "match": "/blobs/"}``: forward the headers and the first half of
  such a body, then cut the connection;
* ``{"mode": "headers", "headers": {"ratelimit-limit": "100;w=21600"}}``: forward, adding
  these headers to each response (a registry announcing its rate limit).

``status`` also takes ``headers``, added to the error it answers.

Any mode with ``match`` applies only to requests whose path contains it.

``GET /__fault__`` answers counters: ``{"requests", "faults", "mode"}``. With
``--record`` every forwarded response (status line, headers, body) is appended
to FILE, so a test can grep everything a server sent.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "transfer-encoding"}
)
STATE = web.AppKey("state", dict)
SESSION = web.AppKey("session", aiohttp.ClientSession)


async def control(request: web.Request) -> web.Response:
    state: dict[str, Any] = request.app[STATE]
    if request.method == "POST":
        wanted = await request.json()
        state["fault"] = wanted if wanted.get("mode") != "pass" else None
    counters = {"requests": state["requests"], "faults": state["faults"], "mode": (state["fault"] or {"mode": "pass"})}
    return web.json_response(counters)


async def _stall(request: web.Request) -> web.StreamResponse:
    # Hold the request without a byte of answer until the client hangs up (polled:
    # aiohttp does not cancel handlers on disconnect, and no event says it).
    while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    return web.Response(status=504)


async def forward(request: web.Request) -> web.StreamResponse:
    state: dict[str, Any] = request.app[STATE]
    state["requests"] += 1
    fault = state["fault"]
    if fault is not None and fault.get("match", "") not in request.path:
        fault = None
    if fault is not None and fault["mode"] == "headers":
        return await _forward(request, state, added=fault.get("headers", {}))
    if fault is not None and fault["mode"] in ("corrupt", "truncate"):
        if request.method != "GET":
            fault = None
        else:
            state["faults"] += 1
            return await _forward(request, state, damage=fault["mode"])
    if fault is not None:
        if "count" in fault:
            fault["count"] -= 1
            if fault["count"] <= 0:
                state["fault"] = None
        state["faults"] += 1
        if fault["mode"] == "stall":
            return await _stall(request)
        status = int(fault.get("status", 503))
        fault_headers = {"Retry-After": str(fault["retry_after"])} if "retry_after" in fault else {}
        fault_headers.update(fault.get("headers", {}))
        code = "TOOMANYREQUESTS" if status == 429 else "UNAVAILABLE"
        error = {"errors": [{"code": code, "message": f"injected fault {status}"}]}
        return web.json_response(error, status=status, headers=fault_headers)

    return await _forward(request, state)


async def _forward(
    request: web.Request, state: dict[str, Any], damage: str = "", added: dict[str, str] | None = None
) -> web.StreamResponse:
    skip = HOP_BY_HOP | {"host"}
    headers: CIMultiDict[str] = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in skip)
    data = await request.read()
    async with request.app[SESSION].request(
        request.method,
        state["target"] + request.path_qs,
        headers=headers,
        data=data or None,
        allow_redirects=False,
    ) as upstream:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for key, value in upstream.headers.items():
            if key.lower() not in HOP_BY_HOP:
                response.headers.add(key, value)
        response.headers.update(added or {})
        await response.prepare(request)
        body = bytearray()
        if request.method != "HEAD":
            if damage:
                return await _damaged(request, response, await upstream.read(), damage)
            async for chunk in upstream.content.iter_chunked(1 << 16):
                body += chunk
                await response.write(chunk)
        await response.write_eof()
    record: Path | None = state["record"]
    if record is not None:
        head = f"=== {request.method} {request.path_qs} -> {upstream.status}\n"
        head += "".join(f"{k}: {v}\n" for k, v in upstream.headers.items())
        with record.open("ab") as out:
            out.write(head.encode() + b"\n" + bytes(body) + b"\n")
    return response


async def _damaged(request: web.Request, response: web.StreamResponse, body: bytes, damage: str) -> web.StreamResponse:
    middle = len(body) // 2
    if damage == "corrupt" and body:
        flipped = bytearray(body)
        flipped[middle] ^= 0x01
        await response.write(bytes(flipped))
        await response.write_eof()
        return response
    await response.write(body[:middle])
    if request.transport is not None:
        request.transport.close()
    return response


def make_app(target: str, record: Path | None) -> web.Application:
    app = web.Application()
    app[STATE] = {"target": target.rstrip("/"), "record": record, "fault": None, "requests": 0, "faults": 0}

    async def session(app: web.Application) -> Any:
        async with aiohttp.ClientSession(auto_decompress=False) as client:
            app[SESSION] = client
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/__fault__", control)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--target", required=True, help="http://host:port to forward to")
    parser.add_argument("--record", type=Path, help="append every response here")
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    app = make_app(args.target, args.record)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None, shutdown_timeout=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
