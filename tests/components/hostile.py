"""The hostile registry (``tests/hostile.py``) as a component: a subprocess on a free loopback port."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.components.http import http_request
from tests.components.processes import Component, ManagedProcess, free_port

SERVER = Path(__file__).resolve().parent.parent / "hostile.py"


@dataclass
class HostileRegistry(Component):
    """Repositories ``<mode>/<name>`` misbehave as ``tests/hostile.py`` says; stopped by PID."""

    workdir: Path
    drip_interval: float = 1.0
    fat_mib: int = 31
    layers: int = 20_000
    port: int = 0
    process: ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            SERVER,
            "--listen",
            self.host,
            "--drip-interval",
            str(self.drip_interval),
            "--fat-mib",
            str(self.fat_mib),
            "--layers",
            str(self.layers),
        ]
        self.process = ManagedProcess(
            argv,
            log_path=self.workdir / f"hostile-{self.port}.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            name="hostile",
        )
        self.process.wait_http(f"{self.url}/v2/", timeout=60)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def counters(self) -> dict[str, int]:
        counters: dict[str, int] = json.loads(http_request("GET", f"{self.url}/__hostile__").body)
        return counters

    def stop(self) -> None:
        self.process.stop()
