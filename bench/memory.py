"""Gateway memory per cached token: what a pull of many live tokens costs the serving process.

N live tokens (distinct env, so each has its own augmented config and manifest)
are created over gRPC, 64 calls in flight, then each token's manifest is pulled
once through the gateway, which caches the record and the augmented image per
token: the resolver's LRU (``[gateway].rewrite_cache_size`` entries and
``content_cache_bytes`` at its own accounting, ``TokenImage.weight``) and the
content cache's encoded copy. The growth of the serving process's resident
memory over the pulls, divided by N, is the cost of one cached token.

The run raises the entry bound above N, and the record TTL above the run, so
every token stays cached and a second pull of each tells a kept entry (a
``record`` cache hit in the admin metrics) from an evicted one. With the
defaults (4,096 entries) a gateway keeps at most that many; a pull of an evicted
token costs a record lookup and a decode of the content cache's copy.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc

from gateway.resolver import ENTRY_OVERHEAD
from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.config import GatewayConfig
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


@dataclass(frozen=True)
class MemoryRun:
    count: int
    before_kib: int
    after_kib: int
    kept: int  # tokens the resolver still held after all the pulls
    entry_bytes: int  # the resolver's accounting of one entry (TokenImage.weight)

    @property
    def per_token_kib(self) -> float:
        return (self.after_kib - self.before_kib) / self.count

    def default_kept(self, live: int) -> int:
        """Of ``live`` tokens, how many the default bounds keep: the entry bound, or the byte bound
        at the resolver's own accounting, whichever bites first."""
        return min(live, GatewayConfig.rewrite_cache_size, GatewayConfig.content_cache_bytes // self.entry_bytes)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def record_hits(admin: str) -> float:
    """wave_grpc_cache_requests_total{cache="record",result="hit"}: pulls the resolver answered from its LRU."""
    text = components.http_request("GET", f"http://{admin}/metrics").body.decode()
    match = re.search(r'^wave_grpc_cache_requests_total\{cache="record",result="hit"\} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def _create(address: str, image: str, count: int, callers: int = 64) -> list[str]:
    names: list[str] = []
    numbers = iter(range(count))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.AugmentServiceStub(channel)

        async def caller() -> None:
            for n in numbers:
                request = pb.CreateContainerRequest(
                    container_image=image, container_config=pb.ContainerConfig(env=[f"TOKEN_NUMBER={n}"])
                )
                response = await stub.CreateContainer(request, timeout=60)
                names.append(response.target_image)

        await asyncio.gather(*(caller() for _ in range(callers)))
    return names


async def _pull(gateway_url: str, names: list[str], connections: int = 32) -> None:
    pending = iter(names)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:

        async def puller() -> None:
            for name in pending:
                path, tag = name.split("/", 1)[1].rsplit(":", 1)
                async with session.get(f"{gateway_url}/v2/{path}/manifests/{tag}", headers=ACCEPT) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"pull of a live token answered {resp.status}")
                    await resp.read()

        await asyncio.gather(*(puller() for _ in range(connections)))


def _entry_bytes(wave: WaveStack, name: str) -> int:
    """``TokenImage.weight`` of one token (gateway/resolver.py): its blobs, its record, ``ENTRY_OVERHEAD``."""
    path, tag = name.split("/", 1)[1].rsplit(":", 1)
    manifest = wave.http("GET", f"/v2/{path}/manifests/{tag}", list(ACCEPT.items())).body
    config = wave.http("GET", f"/v2/{path}/blobs/{json.loads(manifest)['config']['digest']}").body
    token = name.split("/wt/", 1)[1].split("/", 1)[0]
    with wave.stub() as stub:
        record = stub.GetContainer(pb.GetContainerRequest(container_token=token), timeout=10).container
    return len(manifest) + len(config) + record.ByteSize() + ENTRY_OVERHEAD


def measure(registry: components.Registry, image: str, work: Path, count: int) -> MemoryRun:
    admin = f"127.0.0.1:{components.free_port()}"
    wave = WaveStack(
        work,
        registries=[registry_route(registry)],
        gateway={"access_log": False, "rewrite_cache_size": count + 100, "record_cache_ttl": "3600s"},
        admin={"listen": admin},
    )
    wave.start()
    try:
        assert wave.process is not None
        names = asyncio.run(_create(wave.grpc_address, image, count))
        # One pull first, so the upstream bytes shared by every token are cached before the baseline.
        asyncio.run(_pull(wave.gateway_url, names[:1]))
        time.sleep(0.5)
        before = rss_kib(wave.process.pid)
        asyncio.run(_pull(wave.gateway_url, names))
        time.sleep(0.5)
        after = rss_kib(wave.process.pid)
        hits = record_hits(admin)
        asyncio.run(_pull(wave.gateway_url, names))  # a hit each, for every token still held
        kept = round(record_hits(admin) - hits)
        entry = _entry_bytes(wave, names[-1])
    finally:
        wave.stop()
    return MemoryRun(count, before, after, kept, entry)
