"""Gateway memory per cached token: what a pull of many live tokens costs the serving process.

N live tokens (distinct env, so each has its own augmented config and manifest)
are created over gRPC, then each token's manifest is pulled once through the
gateway, which caches the record and the augmented image per token (bounded by
``[gateway].rewrite_cache_size`` entries and ``content_cache_bytes``). The
growth of the serving process's resident memory over the pulls, divided by N,
is the cost of one cached token. The run uses a cache bound above N, so every
token stays cached; with the default bound (4096 entries) the total stops
growing at that many.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

ACCEPT = {"Accept": "application/vnd.oci.image.manifest.v1+json"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _create(address: str, image: str, count: int, callers: int = 32) -> list[str]:
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


def measure(registry: components.Registry, image: str, work: Path, count: int) -> tuple[float, float, float]:
    """(KiB per cached token, MiB before the pulls, MiB after) for ``count`` live tokens."""
    wave = WaveStack(
        work,
        registries=[registry_route(registry)],
        gateway={"access_log": False, "rewrite_cache_size": count + 100},
    )
    wave.start()
    try:
        assert wave.process is not None
        names = asyncio.run(_create(wave.grpc_address, image, count))
        # One pull first, so the upstream bytes shared by every token are cached before the baseline.
        asyncio.run(_pull(wave.gateway_url, names[:1]))
        before = rss_kib(wave.process.pid)
        asyncio.run(_pull(wave.gateway_url, names))
        after = rss_kib(wave.process.pid)
    finally:
        wave.stop()
    return (after - before) / count, before / 1024, after / 1024
