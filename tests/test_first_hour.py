"""An operator's first hour, against real processes: what the log says when a client gets a
port wrong, what a runtime's TLS probe leaves behind, and what ``-v`` adds."""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.test_e2e_augment import cli
from wave_grpc.admin import problem_text

# The start of a TLS ClientHello: what a runtime sends when it tries https on a plain-http port.
_TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(32)


def _admin(stack: WaveStack) -> str:
    return str(stack.admin["listen"])


# Listing needs a caller token (anonymous callers are refused): the operator's own.
OP_TOKEN = "op-token-0123456789"  # noqa: S105 (a test caller token)
OP_TOKENS = [{"user": "op", "sha256": hashlib.sha256(OP_TOKEN.encode()).hexdigest()}]
AS_OP = ("--token", OP_TOKEN)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, registry: components.Registry) -> Iterator[WaveStack]:
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    # A route nobody listens on, where freezes may push: its freezes fail.
    dead = f"127.0.0.1:{components.free_port()}"
    routes = [
        registry_route(registry, push_repositories=["*"]),
        {"name": dead, "endpoint": f"http://{dead}", "push_repositories": ["*"], "connect_timeout": "1s"},
    ]
    # One gateway process: every metric family is exported from the start (in multiprocess
    # mode a family shows once it has a sample; tests/test_admin.py covers that mode).
    with WaveStack(
        tmp_path_factory.mktemp("first-hour"),
        registries=routes,
        admin=admin,
        gateway={"workers": 1},
        service={"tokens": OP_TOKENS},
    ) as wave:
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
    # Listing needs a caller token: one static token makes three RPCs that succeed.
    service = {"tokens": OP_TOKENS}
    with WaveStack(
        tmp_path_factory.mktemp("verbose"), registries=[registry_route(registry)], service=service, verbose=True
    ) as wave:
        wave.start(only="service")
        for _ in range(3):
            cli("list", "--server", wave.grpc_address, *AS_OP)
        log = wave.log_text()
    assert " DEBUG wave_grpc" in log, log  # -v still shows our own debug lines
    assert " DEBUG grpc" not in log, log
    assert "Loaded running loop" not in log, log


def _dead_route(stack: WaveStack) -> str:
    (route,) = [r["name"] for r in stack.registries if r["name"] != stack.registries[0]["name"]]
    return str(route)


def test_status_follows_a_freeze_started_without_await(
    stack: WaveStack, registry: components.Registry, base_images: components.BaseImages, tmp_path: Path
) -> None:
    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "hello").write_text("hi\n")
    server = ("--server", stack.grpc_address, *AS_OP)
    args = ("augment", base_images.ref("latest"), "--layer", str(tmp_path / "tools"), *server)
    started = cli(*args, "--freeze", "--build-repo", f"{registry.host}/frozen/first-hour", "-o", "json")
    request_id = json.loads(started.stdout)["requestId"]
    assert f"wave-grpc status {request_id} --await" in started.stderr
    waited = cli("status", request_id, "--await", *server)
    assert waited.stdout.splitlines()[1].split()[:2] == ["status", "ready"], waited.stdout
    again = json.loads(cli("status", request_id, *server, "-o", "json").stdout)
    assert again["succeeded"] is True
    assert again["status"] == "CONTAINER_STATUS_DONE"
    # inspect takes tokens: a request id is pointed at status.
    wrong = cli("inspect", request_id, *server, check=False)
    assert wrong.returncode == 2
    assert f"wave-grpc status {request_id}" in wrong.stderr
    # list says each entry's state: the freeze's, or "live" for a token.
    bearer = (("authorization", f"Bearer {OP_TOKEN}"),)
    token = stack.create(base_images.ref("latest"), metadata=bearer).container_token
    lines = cli("list", *server).stdout.splitlines()
    assert lines[0].split() == ["TOKEN", "STATUS", "EXPIRES", "SOURCE", "TARGET"]
    assert any(line.split()[:2] == [token, "live"] for line in lines), lines
    assert any(line.split()[:2] == ["(freeze)", "ready"] for line in lines), lines
    listed = json.loads(cli("list", *server, "-o", "json").stdout)
    assert {"live", "ready"} <= {item["status"] for item in listed}


def test_status_of_a_failed_freeze_exits_1_with_the_reason(
    stack: WaveStack, base_images: components.BaseImages
) -> None:
    server = ("--server", stack.grpc_address)
    started = cli(
        "augment",
        base_images.ref("latest"),
        *server,
        "--freeze",
        "--build-repo",
        f"{_dead_route(stack)}/x",
        "-o",
        "json",
    )
    request_id = json.loads(started.stdout)["requestId"]
    failed = cli("status", request_id, "--await", *server, check=False)
    assert failed.returncode == 1, failed.stderr
    assert "failed" in failed.stdout
    assert f"the freeze {request_id} failed" in failed.stderr
    assert cli("status", "not-a-request-id", *server, check=False).returncode == 2


def test_repeated_platforms_add_up(stack: WaveStack, base_images: components.BaseImages) -> None:
    server = ("--server", stack.grpc_address)
    created = cli(
        "augment",
        base_images.ref("multi"),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
        *server,
        "-o",
        "json",
    )
    token = json.loads(created.stdout)["containerToken"]
    described = json.loads(cli("inspect", token, *server, "-o", "json").stdout)
    assert described["containerPlatform"] == "linux/amd64,linux/arm64"


def test_server_takes_an_http_url_and_refuses_https_naming_tls_ca(stack: WaveStack) -> None:
    assert cli("list", "--server", f"http://{stack.grpc_address}/", *AS_OP).returncode == 0
    refused = cli("list", "--server", f"https://{stack.grpc_address}", check=False)
    assert refused.returncode == 2
    assert "--tls-ca" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_gc_defaults_to_the_embedded_config_and_speaks_json(tmp_path: Path) -> None:
    # The embedded configs/local.toml keeps its state under ./.wave-grpc, as serve does.
    result = subprocess.run(
        [sys.executable, "-m", "wave_grpc.cli", "gc", "--dry-run", "-o", "json"],
        cwd=tmp_path,
        env={**os.environ, "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"dryRun": True, "removed": [], "freed": 0, "kept": 0}


def _make_dry_run(target: str, venv: Path) -> list[str]:
    """The commands ``make TARGET`` would run with ``VENV=venv`` (``make -n``: nothing runs)."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        ["make", "-n", "-C", str(root), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in result.stdout.splitlines() if line and not line.startswith("make")]


def test_make_run_installs_runtime_dependencies_once(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    fresh = _make_dry_run("run", venv)
    assert fresh[0].endswith("-m venv " + str(venv)), fresh
    pips = [line for line in fresh if "pip install" in line and " -e " in line]
    assert pips == [f"{venv}/bin/pip install -q -e ."], fresh  # not '.[test]'
    assert fresh[-1].endswith("wave-grpc serve --config configs/local.toml")
    # Installed (the stamps newer than pyproject.toml): no pip at all.
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()
    for stamp in (".installed-runtime", ".installed-test"):
        (venv / stamp).touch()
    again = _make_dry_run("run", venv)
    assert not [line for line in again if "pip" in line], again
    # `make install` (what `make test` runs) still installs the test extras when they are missing.
    (venv / ".installed-test").unlink()
    assert f"{venv}/bin/pip install -q -e '.[test]'" in _make_dry_run("install", venv)


_README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_metrics() -> set[str]:
    """The metric names of the README's metrics table (its rows start with a wave_grpc_ name)."""
    return set(re.findall(r"^\| `(wave_grpc_[a-z_]+)` \|", _README.read_text(), re.MULTILINE))


def _exported_families(text: str) -> set[str]:
    """wave_grpc_ families in a scrape, by their # TYPE lines (a counter's _created series left out)."""
    typed = dict(re.findall(r"^# TYPE (wave_grpc_\w+) (\w+)$", text, re.MULTILINE))
    return {
        name
        for name, kind in typed.items()
        if not (name.endswith("_created") and kind == "gauge" and name.removesuffix("_created") + "_total" in typed)
        and not (name.endswith("_created") and name.removesuffix("_created") in typed)
    }


def test_the_readme_metrics_table_is_what_metrics_exports(stack: WaveStack) -> None:
    cli("list", "--server", stack.grpc_address, *AS_OP)
    text = components.http_request("GET", f"http://{_admin(stack)}/metrics", timeout=10).body.decode()
    documented, exported = _readme_metrics(), _exported_families(text)
    assert documented, "no metrics table in README.md"
    assert exported - documented == set(), "exported but not in README.md's table"
    assert documented - exported == set(), "in README.md's table but not exported"
    assert re.search(r"^process_cpu_seconds_total ", text, re.MULTILINE), text
    assert re.search(r"^process_open_fds ", text, re.MULTILINE), text
    listed = 'wave_grpc_rpcs_total{code="OK",method="wave.augment.v1.AugmentService/ListContainers"}'
    assert listed in text, text
    assert "wave_grpc_rpc_duration_seconds_count" in text


def test_rpc_metrics_count_failures_by_code_with_bounded_methods(stack: WaveStack) -> None:
    cli("inspect", "abcdefabcdef", "--server", stack.grpc_address, check=False)
    cli("status", "0" * 32, "--server", stack.grpc_address, check=False)
    text = components.http_request("GET", f"http://{_admin(stack)}/metrics", timeout=10).body.decode()
    assert 'wave_grpc_rpcs_total{code="NOT_FOUND",method="wave.augment.v1.AugmentService/DescribeContainer"}' in text
    assert 'wave_grpc_rpcs_total{code="NOT_FOUND",method="wave.augment.v1.AugmentService/GetContainerStatus"}' in text
    methods = set(re.findall(r'^wave_grpc_rpcs_total\{code="\w+",method="([^"]+)"\}', text, re.MULTILINE))
    assert methods
    assert all(m.startswith(("wave.augment.v1.", "grpc.")) or m == "other" for m in methods), methods


def test_a_gateway_alone_warns_once_at_start_when_its_service_is_unreachable(
    tmp_path: Path, registry: components.Registry
) -> None:
    nobody = f"127.0.0.1:{components.free_port()}"
    admin = {"listen": f"127.0.0.1:{components.free_port()}"}
    with WaveStack(
        tmp_path / "gateway", registries=[registry_route(registry)], gateway={"service": nobody}, admin=admin
    ) as gateway:
        gateway.start(only="gateway")
        ready = components.http_request("GET", f"http://{admin['listen']}/readyz", timeout=10)
        assert ready.status == 503
        (failing,) = ready.json()["failing"]
        assert failing["problem"] == "UNAVAILABLE: connection refused", failing
        deadline = time.monotonic() + 10
        while "is not answering" not in gateway.log_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = gateway.log_text()
    (warning,) = [line for line in log.splitlines() if "is not answering" in line]
    assert " WARNING " in warning
    assert "[gateway].service" in warning
    assert nobody in warning
    assert "connection refused" in warning
    assert "Traceback" not in log, log


def test_readiness_problems_read_as_text_cut_at_a_word() -> None:
    assert problem_text(ConnectionRefusedError(111, "Connection refused")) == "connection refused"
    long = problem_text(RuntimeError("word " * 100))
    assert long.endswith("word…"), long
    assert len(long) <= 200
