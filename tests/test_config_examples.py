"""Every example config in configs/examples/ loads, so the examples stay valid."""

from __future__ import annotations

import base64
import json
import tomllib
from pathlib import Path

import pytest

from wave_grpc.config import Config, load_config

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "configs" / "examples").glob("*.toml"))


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


def test_there_are_examples_for_the_common_registries() -> None:
    names = {p.stem for p in EXAMPLES}
    assert {"dockerhub", "ghcr", "quay", "private"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_loads(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = path.read_text()
    assert text.startswith("#"), f"{path.name}: start with a comment that says what the example is for"
    config = _load(path, tmp_path, monkeypatch)
    assert config.registries, f"{path.name} routes no registry"
    for route in config.registries:
        assert route.endpoint.startswith("https://"), f"{path.name}: {route.name} must use https"
        assert route.password is None or route.credentials_from != "password in the config", (
            f"{path.name}: {route.name}: examples keep passwords out of the file"
        )
    assert config.upstream.default_route == "deny" or path.stem == "dockerhub-mirror"


def test_examples_route_what_they_say(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    by_name = {p.stem: p for p in EXAMPLES}
    hub = _load(by_name["dockerhub"], tmp_path / "a", monkeypatch).route_for("docker.io")
    assert hub is not None
    assert hub.endpoint == "https://registry-1.docker.io"
    assert hub.has_credentials
    mirror = _load(by_name["dockerhub-mirror"], tmp_path / "b", monkeypatch).route_for("docker.io")
    assert mirror is not None
    assert mirror.repository_prefix == "dockerhub-proxy"
    quay = _load(by_name["quay"], tmp_path / "c", monkeypatch).route_for("quay.io")
    assert quay is not None
    assert quay.username == "robot+user"
    assert quay.credentials_from.startswith("docker_config")
    private = _load(by_name["private"], tmp_path / "d", monkeypatch)
    assert private.route_for("ghcr.io") is None  # default_route = "deny"
    assert private.upstream.layer_hosts == ("layers.example.com", "*.s3.eu-west-1.amazonaws.com")
    route = private.route_for("registry.example.com")
    assert route is not None
    assert route.blobs == "proxy"
