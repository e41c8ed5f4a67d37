"""A wave-grpc deployment for tests: ``wave-grpc serve`` as a real process.

The stack writes a TOML config with free loopback ports, starts the CLI's
``serve`` in a subprocess (so restarts, signals and logs are real), and offers
a gRPC stub and an HTTP helper to talk to it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from tests import components
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as TOML")


def write_toml(path: Path, sections: Mapping[str, Any]) -> Path:
    lines: list[str] = []
    for name, body in sections.items():
        if isinstance(body, list):
            for entry in body:
                lines.append(f"[[{name}]]")
                lines.extend(f"{k} = {toml_value(v)}" for k, v in entry.items())
                lines.append("")
        else:
            lines.append(f"[{name}]")
            lines.extend(f"{k} = {toml_value(v)}" for k, v in body.items())
            lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class WaveStack(components.Component):
    workdir: Path
    registries: list[dict[str, Any]] = field(default_factory=list)
    service: dict[str, Any] = field(default_factory=dict)
    gateway: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    layers: dict[str, Any] = field(default_factory=dict)
    admin: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    # [auth]: e.g. {"verifiers": ["oidc"], "oidc": [{"issuer": ..., "audience": ...}]} (entries as inline tables).
    auth: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    # Serve with debug logging (``wave-grpc -v serve``): leak tests read every line.
    verbose: bool = False
    grpc_port: int = 0
    http_port: int = 0
    process: components.ManagedProcess | None = None
    _starts: int = 0

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = self.grpc_port or components.free_port()
        self.http_port = self.http_port or components.free_port()

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def gateway_host(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://{self.gateway_host}"

    @property
    def config_path(self) -> Path:
        return self.workdir / "wave.toml"

    def write_config(self) -> Path:
        data = self.workdir / "data"
        return write_toml(
            self.config_path,
            {
                "service": {
                    "listen": self.grpc_address,
                    "store": f"sqlite:///{data}/wave.db",
                    "anonymous": True,
                    **self.service,
                },
                "gateway": {
                    "listen": self.gateway_host,
                    "public_host": self.gateway_host,
                    "service": self.grpc_address,
                    **self.gateway,
                },
                "layers": {"store": f"file://{data}/layers", **self.layers},
                "upstream": {"connect_timeout": "3s", "read_timeout": "10s", **self.upstream},
                "registries": self.registries,
                **({"admin": self.admin} if self.admin else {}),
                **({"limits": self.limits} if self.limits else {}),
                **({"auth": self.auth} if self.auth else {}),
            },
        )

    def start(self, only: str | None = None) -> WaveStack:
        """Start ``serve``; on a first start, a port taken meanwhile by someone else means new ports."""
        for attempt in range(3):
            try:
                return self._start_once(only)
            except (RuntimeError, TimeoutError):
                taken = "cannot listen on" in self.log_text()
                if self._starts > 1 or not taken or attempt == 2:
                    raise
                self.grpc_port, self.http_port = components.free_port(), components.free_port()
                self._starts = 0
        raise AssertionError("unreachable")

    def _start_once(self, only: str | None) -> WaveStack:
        self.write_config()
        self._starts += 1
        argv = [sys.executable, "-m", "wave_grpc.cli", *(["-v"] if self.verbose else []), "serve"]
        argv += ["--config", str(self.config_path)]
        if only:
            argv += ["--only", only]
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        self.process = components.ManagedProcess(
            argv, log_path=self.workdir / f"serve-{self._starts}.log", env=env, name="wave-grpc"
        )
        try:
            if only in (None, "service"):
                self.process.wait_tcp("127.0.0.1", self.grpc_port, timeout=30)
            if only in (None, "gateway"):
                self.process.wait_http(f"{self.gateway_url}/v2/", timeout=30)
        except BaseException:
            self.stop()  # a server that never came up is not left behind
            raise
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("serve-*.log")))

    @contextmanager
    def stub(self, metadata: Sequence[tuple[str, str]] = ()) -> Iterator[pb_grpc.AugmentServiceStub]:
        with grpc.insecure_channel(self.grpc_address, options=[("grpc.max_send_message_length", 128 << 20)]) as channel:
            yield pb_grpc.AugmentServiceStub(channel)

    def create(self, image: str, **kwargs: Any) -> pb.CreateContainerResponse:
        metadata = kwargs.pop("metadata", ())
        with self.stub() as stub:
            response: pb.CreateContainerResponse = stub.CreateContainer(
                pb.CreateContainerRequest(container_image=image, **kwargs), metadata=metadata, timeout=60
            )
        return response

    def http(self, method: str, path: str, headers: Sequence[tuple[str, str]] = ()) -> components.HttpResponse:
        return components.http_request(method, f"{self.gateway_url}{path}", headers=headers)

    def post_json(self, path: str, body: Any) -> components.HttpResponse:
        """A REST call to the gateway (Wave's API) with a JSON body."""
        return components.http_request(
            "POST",
            f"{self.gateway_url}{path}",
            headers=[("Content-Type", "application/json")],
            body=json.dumps(body).encode(),
        )


def registry_route(registry: components.Registry, **extra: Any) -> dict[str, Any]:
    return {"name": registry.host, "endpoint": registry.url, **extra}


def await_done(stack: WaveStack, request_id: str, timeout: float = 60.0) -> pb.GetContainerStatusResponse:
    deadline = time.monotonic() + timeout
    with stack.stub() as stub:
        while True:
            status: pb.GetContainerStatusResponse = stub.GetContainerStatus(
                pb.GetContainerStatusRequest(request_id=request_id), timeout=10
            )
            if status.status == pb.CONTAINER_STATUS_DONE:
                return status
            assert time.monotonic() < deadline, f"freeze still {pb.ContainerStatus.Name(status.status)}"
            time.sleep(0.2)
