"""A real forward proxy for the egress tests: Debian's tinyproxy with basic auth, on loopback."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests import components


@dataclass
class ForwardProxy(components.Component):
    """tinyproxy in the foreground, stopped by PID; its log names every request it forwarded."""

    port: int
    user: str
    password: str
    process: components.ManagedProcess
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{self.user}@127.0.0.1:{self.port}"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        self.process.stop()


def start_forward_proxy(
    workdir: Path, *, user: str, password: str, connect_ports: tuple[int, ...] = ()
) -> ForwardProxy:
    binary = components.require_tool("tinyproxy")
    workdir.mkdir(parents=True, exist_ok=True)
    port = components.free_port()
    log_path = workdir / "tinyproxy.log"
    lines = [
        f"Port {port}",
        "Listen 127.0.0.1",
        "Timeout 60",
        f'LogFile "{log_path}"',
        "LogLevel Connect",  # one line per connection and per request line
        "MaxClients 64",
        "Allow 127.0.0.1",
        f"BasicAuth {user} {password}",
        *(f"ConnectPort {p}" for p in connect_ports),  # HTTPS targets: CONNECT only to these
    ]
    conf = workdir / "tinyproxy.conf"
    conf.write_text("\n".join(lines) + "\n")
    process = components.ManagedProcess([binary, "-d", "-c", conf], log_path=workdir / "stdout.log", name="tinyproxy")
    try:
        process.wait_tcp("127.0.0.1", port)
    except BaseException:
        process.stop()
        raise
    return ForwardProxy(port, user, password, process, log_path)
