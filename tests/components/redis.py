"""A throwaway redis-server for the scale-out tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.components.processes import Component, ManagedProcess, free_port, require_tool


@dataclass
class RedisServer(Component):
    """A throwaway redis-server on a loopback port: no persistence, stopped by PID."""

    url: str
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop()


def start_redis(workdir: Path, port: int = 0) -> RedisServer:
    """``port`` 0 picks a free one; give a stopped server's port to start it again there."""
    server = require_tool("redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = ManagedProcess([*argv, "--dir", workdir], log_path=workdir / "redis.log", name="redis-server")
    try:
        process.wait_tcp("127.0.0.1", port)
    except BaseException:
        process.stop()
        raise
    return RedisServer(f"redis://127.0.0.1:{port}/0", process)
