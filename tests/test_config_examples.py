"""Every example config in configs/examples/ loads and starts, so the examples stay valid.

The examples start as shipped: only private.toml needs something from the
environment (its credentials are the point of it). The others carry their
optional credentials as commented-out lines (``# username = ...``,
``# password_env = ...``, ``# docker_config = ...``); the tests also load each
file with those lines enabled, so what a user uncomments works too.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests import components
from tests.stack import write_toml
from wave_grpc.config import Config, load_config

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "configs" / "examples").glob("*.toml"))

# The one example that needs its credentials' environment variables to start.
NEEDS_ENVIRONMENT = "private"

_COMMENTED_CREDENTIAL = re.compile(r"^# ((?:username|password_env|docker_config) = .*)$", re.MULTILINE)

_LOAD_SNIPPET = """
import sys
from pathlib import Path
from wave_grpc.config import ConfigError, load_config
try:
    load_config(Path(sys.argv[1]))
except ConfigError as exc:
    print(exc, file=sys.stderr)
    sys.exit(1)
"""


def _header(path: Path) -> str:
    """The comment block a file starts with."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def _with_credentials(path: Path, directory: Path) -> Path:
    """A copy of ``path`` with its commented-out credential lines enabled."""
    directory.mkdir(parents=True, exist_ok=True)
    enabled = directory / path.name
    enabled.write_text(_COMMENTED_CREDENTIAL.sub(r"\1", path.read_text()))
    return enabled


def _load(path: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Config:
    """Load an example with every password_env set and a docker config.json under a fake HOME."""
    raw = tomllib.loads(path.read_text())
    monkeypatch.setenv("HOME", str(home))
    auths = {}
    for route in raw.get("registries", []):
        if "password_env" in route:
            monkeypatch.setenv(route["password_env"], f"secret-for-{route['name']}")
        if "docker_config" in route:
            assert route["docker_config"].startswith("~/"), "examples point docker_config at the user's home"
            auths[route["name"]] = {"auth": base64.b64encode(b"robot+user:robot-secret").decode()}
            config_path = Path(route["docker_config"]).expanduser()
            config_path.parent.mkdir(parents=True, exist_ok=True)
            config_path.write_text(json.dumps({"auths": auths}))
    return load_config(path)


def _load_in_empty_environment(
    path: Path, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Load ``path`` in a fresh interpreter whose environment is ``env`` (default: empty)."""
    return subprocess.run(
        [sys.executable, "-c", _LOAD_SNIPPET, str(path)],
        env=env or {},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _check(path: Path, config: Config) -> None:
    assert config.registries, f"{path.name} routes no registry"
    for route in config.registries:
        assert route.endpoint.startswith("https://"), f"{path.name}: {route.name} must use https"
        assert route.password is None or route.credentials_from != "password in the config", (
            f"{path.name}: {route.name}: examples keep passwords out of the file"
        )
    assert config.upstream.default_route == "deny" or path.stem == "dockerhub-mirror"


def test_there_are_examples_for_the_common_registries() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"dockerhub", "ghcr", "quay", "private"} <= names
    assert NEEDS_ENVIRONMENT in names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: start with a comment that says what the example is for"
    _check(path, _load(path, tmp_path / "home", monkeypatch))
    # With the commented-out credentials enabled, as a user would.
    _check(path, _load(_with_credentials(path, tmp_path / "enabled"), tmp_path / "home-enabled", monkeypatch))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_says_at_its_top_what_it_needs_and_how_to_run_it(path: Path, tmp_path: Path) -> None:
    header = _header(path)
    assert "Needs" in header, f"{path.name}: the top comment says what the example needs"
    assert f"wave-grpc serve --config configs/examples/{path.name}" in header, (
        f"{path.name}: the top comment shows how to run it"
    )
    raw = tomllib.loads(_with_credentials(path, tmp_path).read_text())
    for route in raw.get("registries", []):
        if "password_env" in route:
            assert route["password_env"] in header, f"{path.name}: the top comment names {route['password_env']}"


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem != NEEDS_ENVIRONMENT], ids=lambda p: p.name)
def test_example_starts_as_shipped_with_an_empty_environment(path: Path, tmp_path: Path) -> None:
    result = _load_in_empty_environment(path, tmp_path)
    assert result.returncode == 0, f"{path.name} needs something from the environment:\n{result.stderr}"


def test_private_example_names_the_variable_it_needs(tmp_path: Path) -> None:
    (path,) = (p for p in EXAMPLES if p.stem == NEEDS_ENVIRONMENT)
    variables = [
        r["password_env"] for r in tomllib.loads(path.read_text()).get("registries", []) if "password_env" in r
    ]
    assert variables, f"{path.name} keeps its credentials"
    result = _load_in_empty_environment(path, tmp_path)
    assert result.returncode != 0
    assert f"environment variable {variables[0]} is not set" in result.stderr, result.stderr
    # Each variable, when it is the only one missing, is the one the failure names.
    for missing in variables:
        env = {name: "secret" for name in variables if name != missing}
        result = _load_in_empty_environment(path, tmp_path, env)
        assert result.returncode != 0
        assert f"environment variable {missing} is not set" in result.stderr, result.stderr
    everything = _load_in_empty_environment(path, tmp_path, dict.fromkeys(variables, "secret"))
    assert everything.returncode == 0, everything.stderr


def test_examples_route_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = {p.stem: p for p in EXAMPLES}
    shipped_hub = _load(by_name["dockerhub"], tmp_path / "a0", monkeypatch).route_for("docker.io")
    assert shipped_hub is not None
    assert not shipped_hub.has_credentials  # anonymous as shipped
    hub_file = _with_credentials(by_name["dockerhub"], tmp_path / "e")
    hub = _load(hub_file, tmp_path / "a", monkeypatch).route_for("docker.io")
    assert hub is not None
    assert hub.endpoint == "https://registry-1.docker.io"
    assert hub.has_credentials
    mirror = _load(by_name["dockerhub-mirror"], tmp_path / "b", monkeypatch).route_for("docker.io")
    assert mirror is not None
    assert mirror.repository_prefix == "dockerhub-proxy"
    shipped_quay = _load(by_name["quay"], tmp_path / "c0", monkeypatch).route_for("quay.io")
    assert shipped_quay is not None
    assert not shipped_quay.has_credentials
    quay = _load(_with_credentials(by_name["quay"], tmp_path / "e"), tmp_path / "c", monkeypatch).route_for("quay.io")
    assert quay is not None
    assert quay.username == "robot+user"
    assert quay.credentials_from.startswith("docker_config")
    private = _load(by_name["private"], tmp_path / "d", monkeypatch)
    assert private.route_for("ghcr.io") is None  # default_route = "deny"
    assert private.upstream.layer_hosts == ("layers.example.com", "*.s3.eu-west-1.amazonaws.com")
    route = private.route_for("registry.example.com")
    assert route is not None
    assert route.blobs == "proxy"
    assert route.has_credentials


_LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "[::1]"}


def _listens(raw: dict[str, Any]) -> dict[str, str]:
    """What an example binds, with the defaults for what it leaves out."""
    return {
        "[service].listen": raw.get("service", {}).get("listen", "127.0.0.1:50051"),
        "[gateway].listen": raw.get("gateway", {}).get("listen", "127.0.0.1:9090"),
        "[admin].listen": raw.get("admin", {}).get("listen", ""),
    }


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_binds_loopback_with_the_admin_endpoints_on(path: Path) -> None:
    text = path.read_text()
    for key, listen in _listens(tomllib.loads(text)).items():
        assert listen, f"{path.name}: {key} is not set: every example serves /metrics, /healthz and /readyz"
        assert listen.rsplit(":", 1)[0] in _LOOPBACK_HOSTS, f"{path.name}: {key} = {listen} binds beyond loopback"
    # The comment next to the addresses says what a real deployment changes.
    assert "0.0.0.0:" in text, f"{path.name}: say which listen address a real deployment sets"


def _on_free_ports(path: Path, directory: Path) -> tuple[Path, str]:
    """A copy of ``path`` on free loopback ports (one gateway process); answers it and its admin address."""
    raw = tomllib.loads(path.read_text())
    admin = f"127.0.0.1:{components.free_port()}"
    raw.setdefault("service", {})["listen"] = f"127.0.0.1:{components.free_port()}"
    gateway = raw.setdefault("gateway", {})
    gateway.update(listen=f"127.0.0.1:{components.free_port()}", workers=1)
    if gateway.get("service", "127.0.0.1:50051").startswith("127.0.0.1:"):
        gateway["service"] = raw["service"]["listen"]
    raw["admin"]["listen"] = admin
    directory.mkdir(parents=True, exist_ok=True)
    return write_toml(directory / path.name, raw), admin


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_serves_admin_endpoints_and_logs_no_traceback(path: Path, tmp_path: Path) -> None:
    copy, admin = _on_free_ports(path, tmp_path / "config")
    raw = tomllib.loads(path.read_text())
    secrets = {r["password_env"]: "secret" for r in raw.get("registries", []) if "password_env" in r}
    env = {**os.environ, **secrets, "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    argv = [sys.executable, "-m", "wave_grpc.cli", "serve", "--config", str(copy)]
    with components.ManagedProcess(
        argv, log_path=tmp_path / "serve.log", env=env, cwd=tmp_path, name=path.stem
    ) as process:
        process.wait_http(f"http://{admin}/readyz", timeout=60, statuses=frozenset({200, 503}))
        metrics = components.http_request("GET", f"http://{admin}/metrics", timeout=10)
        assert metrics.status == 200
        assert b"wave_grpc_" in metrics.body
        time.sleep(1.0)  # the freeze resumption's first look, right after the start
    log = process.log_text()
    assert "Traceback" not in log, f"{path.name}:\n{log}"
    assert " ERROR " not in log, f"{path.name}:\n{log}"
    if "redis://" in raw.get("service", {}).get("store", ""):
        # Redis is not there: said in one line each, by the start and by the freeze resumption.
        (resumption,) = [line for line in log.splitlines() if "looking for interrupted freezes failed" in line]
        assert " WARNING " in resumption
        assert "[service].store" in resumption
