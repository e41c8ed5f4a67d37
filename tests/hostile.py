"""A hostile registry for tests: an aiohttp app posing as an OCI registry.

``python tests/hostile.py --listen 127.0.0.1:P [--drip-interval 1] [--fat-mib 31] [--layers 20000]``

The first path part of a repository picks how it misbehaves (``/v2/<mode>/...``):

* ``drip``: the manifest (and any blob) at one byte per ``--drip-interval`` s,
  with an honest ``Content-Length``: no read ever stalls long enough for a read timeout;
* ``drip-layers``: the manifest and config at once, layer blobs dripped as ``drip`` does;
* ``fat-config``: a valid manifest whose config is ``--fat-mib`` MiB of
  ``{"history":[{},{},...]}`` (cheap bytes, dear objects);
* ``many-layers``: a manifest that lists ``--layers`` layers;
* ``deep-json``: a manifest of ``[`` nested 200,000 deep;
* ``empty-blob``: every layer blob answered ``200`` with ``Content-Length: 0``;
* ``hang``: requests are accepted and never answered.

``/v2/`` answers 200 (no auth). ``GET /__hostile__`` answers counters:
``{"requests", "open", "disconnected"}``, where ``open`` counts responses still
being dripped or held and ``disconnected`` those the client hung up on.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DEEP = 200_000
LAYER_BYTES = b"not really a layer, but not empty either"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def manifest(config: bytes, layers: int = 1) -> bytes:
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, config),
        "layers": [descriptor(OCI_LAYER, LAYER_BYTES)] * layers,
    }
    return json.dumps(document).encode()


@dataclass
class Hostile:
    drip_interval: float
    fat_mib: int
    layer_count: int
    counters: dict[str, int] = field(default_factory=lambda: {"requests": 0, "open": 0, "disconnected": 0})
    blobs: dict[str, bytes] = field(default_factory=dict)
    manifests: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        small = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
        config = small.encode()
        empties = b",".join([b"{}"] * (self.fat_mib * (1 << 20) // 3))
        fat = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"history":['
        fat += empties + b"]}"
        # A consistent large image: one diff_id per listed layer, as a real one has.
        rootfs = {"type": "layers", "diff_ids": [digest_of(LAYER_BYTES)] * self.layer_count}
        many = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": rootfs}).encode()
        for data in (config, fat, many, LAYER_BYTES):
            self.blobs[digest_of(data)] = data
        self.manifests = {
            "drip": manifest(config),
            "drip-layers": manifest(config),
            "fat-config": manifest(fat),
            "many-layers": manifest(many, self.layer_count),
            "deep-json": b"[" * DEEP + b"]" * DEEP,
            "empty-blob": manifest(config),
            "hang": manifest(config),
        }

    async def ping(self, request: web.Request) -> web.Response:
        return web.json_response({}, headers={"Docker-Distribution-API-Version": "registry/2.0"})

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.counters)

    async def manifest(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        self.counters["requests"] += 1
        data = self.manifests.get(mode)
        if data is None:
            raise web.HTTPNotFound()
        headers = {"Content-Type": OCI_MANIFEST, "Docker-Content-Digest": digest_of(data)}
        return await self.answer(request, mode, data, headers)

    async def blob(self, request: web.Request) -> web.StreamResponse:
        mode = request.match_info["mode"]
        self.counters["requests"] += 1
        data = self.blobs.get(request.match_info["digest"])
        if data is None:
            raise web.HTTPNotFound()
        if mode == "empty-blob" and data == LAYER_BYTES:
            return web.Response(status=200, headers={"Content-Length": "0", "Content-Type": "application/octet-stream"})
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest_of(data)}
        if mode == "drip-layers":
            mode = "drip" if data == LAYER_BYTES else mode
        return await self.answer(request, mode, data, headers)

    async def answer(self, request: web.Request, mode: str, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
        if mode not in ("drip", "hang"):
            return web.Response(body=data, headers=headers)
        self.counters["open"] += 1
        try:
            if mode == "hang":
                return await self.hold(request)
            return await self.drip(request, data, headers)
        finally:
            self.counters["open"] -= 1

    async def hold(self, request: web.Request) -> web.StreamResponse:
        # Polled: aiohttp does not cancel a handler when its client hangs up.
        while request.transport is not None and not request.transport.is_closing():  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        self.counters["disconnected"] += 1
        return web.Response(status=504)

    async def drip(self, request: web.Request, data: bytes, headers: dict[str, str]) -> web.StreamResponse:
        response = web.StreamResponse(headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        for offset in range(len(data)):
            if request.transport is None or request.transport.is_closing():
                self.counters["disconnected"] += 1
                return response
            try:
                await response.write(data[offset : offset + 1])
            except (ConnectionResetError, ConnectionError):
                self.counters["disconnected"] += 1
                return response
            await asyncio.sleep(self.drip_interval)
        await response.write_eof()
        return response


def make_app(hostile: Hostile) -> web.Application:
    app = web.Application()
    app.router.add_get("/v2/", hostile.ping)
    app.router.add_get("/__hostile__", hostile.stats)
    for method in ("GET", "HEAD"):
        app.router.add_route(method, "/v2/{mode}/{name:.+}/manifests/{ref}", hostile.manifest)
        app.router.add_route(method, "/v2/{mode}/{name:.+}/blobs/{digest}", hostile.blob)
    return app


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", required=True, help="host:port")
    parser.add_argument("--drip-interval", type=float, default=1.0)
    parser.add_argument("--fat-mib", type=int, default=31)
    parser.add_argument("--layers", type=int, default=20_000)
    args = parser.parse_args(argv)
    host, port = args.listen.rsplit(":", 1)
    hostile = Hostile(args.drip_interval, args.fat_mib, args.layers)
    web.run_app(make_app(hostile), host=host, port=int(port), print=None, shutdown_timeout=0.5)


if __name__ == "__main__":
    main(sys.argv[1:])
