"""CreateContainer figures: inline and uploaded layers, and 64 concurrent callers beside the
upstream's manifest GETs and a bare grpc.aio server."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from bench.harness import (
    ACCEPT,
    Row,
    Settings,
    cpu_seconds,
    layer_file,
    timed,
    wrk,
)
from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.image.layers import LayerDigester
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class CreateRun:
    rate: float
    p50_ms: float
    p99_ms: float
    # CPU per creation: the server's (all its threads), and this process's, the gRPC client's.
    server_cpu_us: float
    client_cpu_us: float


def create_load(address: str, image: str, callers: int, seconds: float, server_pid: int) -> CreateRun:
    """``callers`` concurrent CreateContainer loops (no layers, a distinct env each) for ``seconds``.

    The env values are new in every run: a value an earlier run sent would find that run's
    token (same request, same name) and measure a renewal, not a creation.
    """
    run = uuid.uuid4().hex[:12]

    async def run_load() -> CreateRun:
        latencies: list[float] = []
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AugmentServiceStub(channel)
            await stub.CreateContainer(pb.CreateContainerRequest(container_image=image), timeout=60)  # connected
            deadline = time.perf_counter() + seconds
            counter = iter(range(10**9))

            async def caller() -> None:
                while time.perf_counter() < deadline:
                    request = pb.CreateContainerRequest(
                        container_image=image, container_config=pb.ContainerConfig(env=[f"N={run}-{next(counter)}"])
                    )
                    started = time.perf_counter()
                    await stub.CreateContainer(request, timeout=60)
                    latencies.append(time.perf_counter() - started)

            server_cpu, client_cpu = cpu_seconds(server_pid), cpu_seconds(os.getpid())
            started = time.perf_counter()
            await asyncio.gather(*(caller() for _ in range(callers)))
            elapsed = time.perf_counter() - started
            server_cpu, client_cpu = cpu_seconds(server_pid) - server_cpu, cpu_seconds(os.getpid()) - client_cpu
        latencies.sort()
        count = len(latencies)
        return CreateRun(
            count / elapsed,
            latencies[count // 2] * 1000,
            latencies[min(count - 1, int(count * 0.99))] * 1000,
            server_cpu / count * 1e6,
            client_cpu / count * 1e6,
        )

    return asyncio.run(run_load())


def start_grpc_ceiling(work: Path) -> tuple[components.ManagedProcess, str]:
    """bench/grpc_ceiling.py: CreateContainer answered with a fixed response; the process and its address."""
    port = components.free_port()
    ceiling = components.ManagedProcess(
        [sys.executable, "-m", "bench.grpc_ceiling", str(port)], log_path=work / "grpc-ceiling.log"
    )
    try:
        ceiling.wait_tcp("127.0.0.1", port, 15)
    except BaseException:
        ceiling.stop()
        raise
    return ceiling, f"127.0.0.1:{port}"


def fig_create_concurrent(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    """CreateContainer under 64 callers against the upstream's own manifest GET rate (what a creation needs),
    and against a bare grpc.aio server answering a fixed response (what gRPC in Python allows)."""
    images: components.BaseImages = c["images"]
    registry: components.Registry = c["registry"]
    upstream = wrk(f"{registry.url}/v2/library/busybox/manifests/latest", cfg.wrk_seconds, ACCEPT)
    seconds = 2.0 if cfg.quick else 10.0
    ceiling_process, ceiling_address = start_grpc_ceiling(work)
    try:
        ceiling = create_load(ceiling_address, images.ref("latest"), 64, seconds, ceiling_process.pid)
    finally:
        ceiling_process.stop()
    bare = "bare grpc.aio CreateContainer (fixed answer), 64 callers"
    uncached = WaveStack(
        work / "uncached",
        registries=[registry_route(registry)],
        gateway={"access_log": False},
        upstream={"tag_cache_ttl": "off"},
    )
    uncached.start()
    rows = []
    try:
        for label, stack in (("tag cache 20 s (default)", c["wave"]), ("tag cache off", uncached)):
            assert stack.process is not None
            concurrent = create_load(stack.grpc_address, images.ref("latest"), 64, seconds, stack.process.pid)
            sequential = create_load(stack.grpc_address, images.ref("latest"), 1, seconds, stack.process.pid)
            figure = f"CreateContainer, 64 callers, {label}"
            single = f"CreateContainer, 1 caller, {label}"
            rows += [
                Row(figure, "creations/s", concurrent.rate, "docker-registry manifest GET, 64 conn", upstream.rps),
                Row(figure, "p99 ms", concurrent.p99_ms, "the 100 ms target", 100.0, False),
                Row(figure, "creations/s", concurrent.rate, bare, ceiling.rate),
                Row(figure, "server CPU us per creation", concurrent.server_cpu_us, bare, ceiling.server_cpu_us, False),
                # The client shares the machine's cores with the server: its cost is part of the rate.
                Row(
                    figure,
                    "bench client CPU us per creation",
                    concurrent.client_cpu_us,
                    "server CPU us per creation",
                    concurrent.server_cpu_us,
                    False,
                ),
                Row(single, "creations/s", sequential.rate, "64 callers", concurrent.rate),
                Row(
                    single,
                    "p50 ms",
                    sequential.p50_ms,
                    "64 callers",
                    concurrent.p50_ms,
                    False,
                ),
            ]
    finally:
        uncached.stop()
    return rows


def fig_create(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    wave: WaveStack = c["wave"]
    images: components.BaseImages = c["images"]
    rows = []
    for size in (1 << 20, 64 << 20):
        path = layer_file(work / f"layer-{size}.tar.gz", size)
        data = path.read_bytes()
        location = "data:" + base64.b64encode(data).decode()
        count = 3 if cfg.quick else (20 if size == 1 << 20 else 5)
        with grpc.insecure_channel(wave.grpc_address, options=[("grpc.max_send_message_length", 256 << 20)]) as ch:
            stub = pb_grpc.AugmentServiceStub(ch)
            request = pb.CreateContainerRequest(
                container_image=images.ref("latest"),
                container_config=pb.ContainerConfig(layers=[pb.ContainerLayer(location=location)]),
            )
            start = time.perf_counter()
            for _ in range(count):
                stub.CreateContainer(request, timeout=300)
            elapsed = time.perf_counter() - start
        plain = pb.CreateContainerRequest(container_image=images.ref("latest"))
        with grpc.insecure_channel(wave.grpc_address) as ch:
            stub = pb_grpc.AugmentServiceStub(ch)
            start = time.perf_counter()
            for _ in range(count):
                stub.CreateContainer(plain, timeout=60)
            plain_elapsed = time.perf_counter() - start
        label = f"CreateContainer with a {size >> 20} MiB inline layer"
        rows.append(Row(label, "req/s", count / elapsed, "CreateContainer with no layer", count / plain_elapsed))

        # What the CLI does above its inline limit: stream the bytes, then create.
        with grpc.insecure_channel(wave.grpc_address) as ch:
            stub = pb_grpc.AugmentServiceStub(ch)
            start = time.perf_counter()
            for _ in range(count):
                chunks = [pb.UploadLayerRequest(chunk=data[i : i + (1 << 20)]) for i in range(0, len(data), 1 << 20)]
                uploaded = stub.UploadLayer(iter(chunks), timeout=300).layer
                stub.CreateContainer(
                    pb.CreateContainerRequest(
                        container_image=images.ref("latest"), container_config=pb.ContainerConfig(layers=[uploaded])
                    ),
                    timeout=60,
                )
            streamed = time.perf_counter() - start
        rows.append(
            Row(
                f"UploadLayer + CreateContainer, {size >> 20} MiB layer",
                "req/s",
                count / streamed,
                "CreateContainer with no layer",
                count / plain_elapsed,
            )
        )

        def verify(data: bytes = data) -> None:
            digester = LayerDigester()
            for start in range(0, len(data), 1 << 20):
                digester.update(data[start : start + (1 << 20)])
            digester.finish()

        ours = min(timed(verify) for _ in range(cfg.repeats))

        def gunzip_sha256(path: Path = path) -> None:
            subprocess.run(f"gzip -dc {path} | sha256sum >/dev/null", shell=True, check=True)  # noqa: S602

        shell = min(timed(gunzip_sha256) for _ in range(cfg.repeats))
        mb = len(data) / 1e6
        rows.append(Row(f"layer verification, {size >> 20} MiB", "MB/s", mb / ours, "gzip -dc | sha256sum", mb / shell))
    return rows
