"""The service under test and its healthy caller, for bench/findings.py (issue 18's findings)."""

from __future__ import annotations

import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests import components
from tests.components.hostile import HostileRegistry
from tests.stack import write_toml
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

# Each stub its own connection (no shared subchannel): "another caller" is another connection.
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 128 << 20),
    ("grpc.max_receive_message_length", 128 << 20),
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class Scale:
    """How big each input is (the issue's sizes unless scaled down to finish in about a minute)."""

    drips: tuple[int, ...] = (100, 300)
    drip_deadline: float = 5.0
    fat_mib: int = 31
    layers: tuple[int, ...] = (20_000, 400)
    includes: int = 10
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64", "linux/ppc64le")
    platform_mib: int = 114
    env_entries: int = 3_000_000
    env_mib: int = 100
    freeze_wait: float = 60.0
    guess_seconds: float = 10.0


def vm_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    return 0


def rpc_outcome(error: grpc.RpcError) -> dict[str, Any]:
    details = error.details() or ""
    code = error.code()
    return {"code": code.name, "message": details[:300], "message_chars": len(details)}


def attempt(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[dict[str, Any], float, Any]:
    """(outcome, seconds, answer or None) of one RPC, ``call(*args, **kwargs)``."""
    started = time.monotonic()
    try:
        answer, outcome = call(*args, **kwargs), {"code": "OK"}
    except grpc.RpcError as error:
        answer, outcome = None, rpc_outcome(error)
    return outcome, round(time.monotonic() - started, 2), answer


@dataclass
class Service(components.Component):
    """``CHECKOUT/.venv/bin/python -m wave_grpc.cli serve`` on free loopback ports, stopped by PID."""

    checkout: Path
    workdir: Path
    sections: dict[str, Any]
    dropped: list[str] = field(default_factory=list)
    grpc_port: int = field(default_factory=components.free_port)
    http_port: int = field(default_factory=components.free_port)
    process: components.ManagedProcess | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def config(self, optional: Mapping[str, Mapping[str, Any]]) -> Path:
        data = self.workdir / "data"
        base: dict[str, Any] = {
            "service": {"listen": self.grpc_address, "store": f"sqlite:///{data}/wave.db", "anonymous": True},
            "gateway": {
                "listen": f"127.0.0.1:{self.http_port}",
                "public_host": f"127.0.0.1:{self.http_port}",
                "service": self.grpc_address,
            },
            "layers": {"store": f"file://{data}/layers"},
            "upstream": {"connect_timeout": "3s", "read_timeout": "10s", "tag_cache_ttl": "off"},
        }
        for name, body in self.sections.items():
            base[name] = {**base.get(name, {}), **body} if isinstance(body, dict) else body
        path = self.workdir / "wave.toml"
        for section, keys in optional.items():
            for key, value in keys.items():
                trial = {**base, section: {**base.get(section, {}), key: value}}
                write_toml(path, trial)
                if self._accepts(path):
                    base = trial
                else:
                    self.dropped.append(f"[{section}].{key}")
        return write_toml(path, base)

    def _accepts(self, path: Path) -> bool:
        probe = "import sys, pathlib; from wave_grpc.config import load_config; load_config(pathlib.Path(sys.argv[1]))"
        python = self.checkout / ".venv/bin/python"
        # cwd: the checkout's own code, not this worktree's (python -c puts the cwd first on sys.path).
        done = subprocess.run([python, "-c", probe, path], capture_output=True, check=False, cwd=self.checkout)
        return done.returncode == 0

    def start(self, optional: Mapping[str, Mapping[str, Any]] = {}) -> Service:
        self.workdir.mkdir(parents=True, exist_ok=True)
        path = self.config(optional)
        argv: list[str | os.PathLike[str]] = [
            self.checkout / ".venv/bin/python",
            "-m",
            "wave_grpc.cli",
            "serve",
            "--config",
            path,
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("VIRTUAL_ENV", None)
        self.process = components.ManagedProcess(
            argv, log_path=self.workdir / "serve.log", env=env, cwd=self.checkout, name="wave-grpc"
        )
        self.process.wait_tcp("127.0.0.1", self.grpc_port, timeout=60)
        self.process.wait_http(f"{self.gateway_url}/v2/", timeout=60)
        # Writing 5 to clear_refs resets VmHWM to the current RSS: the peak is this scenario's own.
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        return self

    def memory(self) -> dict[str, int]:
        return {"vm_hwm_kib": vm_kib(self.pid, "VmHWM"), "vm_rss_kib": vm_kib(self.pid, "VmRSS")}

    @contextmanager
    def stub(self) -> Iterator[pb_grpc.AugmentServiceStub]:
        with grpc.insecure_channel(self.grpc_address, options=CHANNEL_OPTIONS) as channel:
            yield pb_grpc.AugmentServiceStub(channel)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


class HealthyCaller(threading.Thread):
    """Creates from the real registry in a loop on its own channel; each call's latency is kept."""

    def __init__(self, service: Service, image: str) -> None:
        super().__init__(daemon=True)
        self.service, self.image = service, image
        self.samples: list[tuple[float, float, str]] = []  # (start, seconds, code)
        self.done = threading.Event()

    def run(self) -> None:
        with self.service.stub() as stub:
            count = 0
            while not self.done.is_set():
                count += 1
                request = pb.CreateContainerRequest(
                    container_image=self.image, container_config=pb.ContainerConfig(env=[f"HEALTHY={count}"])
                )
                started = time.monotonic()
                try:
                    stub.CreateContainer(request, timeout=60)
                    code = "OK"
                except grpc.RpcError as error:
                    code = error.code().name
                self.samples.append((started, time.monotonic() - started, code))
                self.done.wait(0.2)

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        window = [s for s in self.samples if since <= s[0] <= until]
        if not window:
            return {"calls": 0}
        seconds = [s[1] for s in window]
        failures = sorted({s[2] for s in window if s[2] != "OK"})
        return {
            "calls": len(window),
            "p50_ms": round(statistics.median(seconds) * 1000, 1),
            "max_ms": round(max(seconds) * 1000, 1),
            "failed": sum(1 for s in window if s[2] != "OK"),
            "failure_codes": failures,
        }

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=90)


@contextmanager
def healthy_caller(service: Service, image: str) -> Iterator[HealthyCaller]:
    caller = HealthyCaller(service, image)
    caller.start()
    try:
        yield caller
    finally:
        caller.stop()


@dataclass
class Bench:
    """What every scenario shares: the checkout, the upstreams, a work directory."""

    checkout: Path
    workdir: Path
    scale: Scale
    registry: components.Registry
    base_image: str
    hostile: HostileRegistry  # drip at 1 s a byte, the fat config, deep JSON, the empty blob
    hostile_small: HostileRegistry  # drips at 10 s a byte (the freeze)
    # Five dripping registries: the old client's pool was 256 connections, 64 per host.
    drip_hosts: tuple[HostileRegistry, ...]
    small_disk: Path | None
    runs: int = 0

    def route(self, registry: components.Registry | HostileRegistry, **extra: Any) -> dict[str, Any]:
        return {"name": registry.host, "endpoint": registry.url, **extra}

    @contextmanager
    def service(
        self, sections: dict[str, Any] | None = None, optional: Mapping[str, Mapping[str, Any]] = {}
    ) -> Iterator[Service]:
        self.runs += 1
        hostiles = (self.hostile, self.hostile_small, *self.drip_hosts)
        registries = [*(self.route(hostile) for hostile in hostiles), self.route(self.registry)]
        merged: dict[str, Any] = {"registries": registries, **(sections or {})}
        with Service(self.checkout, self.workdir / f"service-{self.runs}", merged) as service:
            yield service.start(optional)
