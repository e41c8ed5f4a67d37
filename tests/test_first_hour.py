"""An operator's first hour, against real processes: what the log says when a client gets a
port wrong, what a runtime's TLS probe leaves behind, and what ``-v`` adds."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli

# The start of a TLS ClientHello: what a runtime sends when it tries https on a plain-http port.
_TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)


def _admin(stack: WaveStack) -> str:
    return str(stack.admin["listen"])


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(tmp_path_factory.mktemp("first-hour"), registries=[registry_route(registry)], admin=admin) as wave:
        yield wave.start()


def _log_after(stack: WaveStack, mark: int, settle: float = 0.6) -> str:
    """What the server logged since ``mark`` (the access log is written in batches every 0.2 s)."""
    time.sleep(settle)
    return stack.log_text()[mark:]


def _send_raw(address: str, data: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096)


def test_the_listen_lines_are_printed_once(stack: WaveStack) -> None:
    log = stack.log_text()
    for line in ("AugmentService listening on", "gateway listening on", "admin endpoints on"):
        assert log.count(line) == 1, log


@pytest.mark.parametrize("port", ["gateway", "admin"])
def test_a_grpc_client_on_an_http_port_is_one_warning_line(stack: WaveStack, port: str) -> None:
    address = stack.gateway_host if port == "gateway" else _admin(stack)
    mark = len(stack.log_text())
    failed = cli("list", "--server", address, check=False)
    assert failed.returncode == 1
    assert "[service].listen" in failed.stderr
    log = _log_after(stack, mark)
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log
    (warning,) = [line for line in log.splitlines() if "spoke HTTP/2" in line]
    assert " WARNING " in warning
    assert "[service].listen" in warning
    assert '"UNKNOWN /"' not in log, log


def test_a_tls_probe_on_the_gateway_leaves_no_access_line(stack: WaveStack) -> None:
    mark = len(stack.log_text())
    assert _send_raw(stack.gateway_host, _TLS_HELLO).startswith(b"HTTP/1.0 400")
    assert stack.http("GET", "/v2/").status == 200
    log = _log_after(stack, mark)
    assert '"GET /v2/" 200' in log, log  # the access log works, and is flushed
    assert "UNKNOWN" not in log, log
    assert "Traceback" not in log, log
    assert "unparsable" not in log, log  # a TLS probe is a debug line: not shown without -v


def test_verbose_serve_shows_wave_grpc_debug_lines_not_grpc_cores(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry
) -> None:
    with WaveStack(tmp_path_factory.mktemp("verbose"), registries=[registry_route(registry)], verbose=True) as wave:
        wave.start(only="service")
        for _ in range(3):
            cli("list", "--server", wave.grpc_address)
        log = wave.log_text()
    assert " DEBUG wave_grpc" in log, log  # -v still shows our own debug lines
    assert " DEBUG grpc" not in log, log
    assert "Loaded running loop" not in log, log
