"""A real CNCF distribution registry (``docker-registry``) on a loopback port."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.components.http import get_blob, get_manifest
from tests.components.oci import JSONDict
from tests.components.processes import Component, ManagedProcess, free_port, require_tool, run_tool

REGISTRY_BIN = "/usr/bin/docker-registry"


def _deep_merge(base: JSONDict, extra: Mapping[str, Any]) -> JSONDict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Registry(Component):
    """A running CNCF distribution 2.8 registry on a loopback port."""

    host: str
    url: str
    process: ManagedProcess
    workdir: Path
    credentials: tuple[str, str] | None = None
    config: JSONDict = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    def ref(self, repo: str, tag_or_digest: str) -> str:
        """``host/repo:tag`` or ``host/repo@sha256:...``."""
        sep = "@" if tag_or_digest.startswith("sha256:") else ":"
        return f"{self.host}/{repo}{sep}{tag_or_digest}"

    @property
    def creds_arg(self) -> str | None:
        """``user:pass`` for skopeo ``--*-creds`` / ctr ``--user``."""
        return None if self.credentials is None else ":".join(self.credentials)

    def get_manifest(self, repo: str, ref: str) -> tuple[bytes, str, str]:
        return get_manifest(self.url, repo, ref, auth=self.credentials)

    def get_blob(self, repo: str, digest: str) -> bytes:
        return get_blob(self.url, repo, digest, auth=self.credentials)

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> None:
        self.process.stop()


def start_registry(
    workdir: Path,
    *,
    htpasswd: tuple[str, str] | None = None,
    proxy_remote_url: str | None = None,
    extra_config: Mapping[str, Any] | None = None,
    tls: tuple[Path, Path] | None = None,
    timeout: float = 15.0,
) -> Registry:
    """Start ``docker-registry serve cfg.yml`` with its storage under ``workdir``.

    ``extra_config`` is deep-merged into the generated config (dicts merge, other
    values replace). The config is written as JSON, which YAML reads as flow style.
    """
    binary = REGISTRY_BIN if os.path.exists(REGISTRY_BIN) else require_tool("docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    config: JSONDict = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": os.fspath(workdir / "reg")},
            "delete": {"enabled": True},
        },
        "http": {"addr": "", "secret": "test-only"},
    }
    if htpasswd is not None:
        tool = require_tool("htpasswd")
        line = run_tool([tool, "-Bbn", htpasswd[0], htpasswd[1]]).strip()
        (workdir / "htpasswd").write_text(line + "\n")
        config["auth"] = {"htpasswd": {"realm": "basic-realm", "path": os.fspath(workdir / "htpasswd")}}
    if proxy_remote_url is not None:
        config["proxy"] = {"remoteurl": proxy_remote_url}
    if tls is not None:  # (certificate, key): the registry speaks HTTPS only
        config["http"]["tls"] = {"certificate": os.fspath(tls[0]), "key": os.fspath(tls[1])}
    if extra_config:
        config = _deep_merge(config, extra_config)

    last_error: Exception | None = None
    for attempt in range(3):  # a "free" port can be taken by someone else meanwhile
        port = free_port()
        config["http"]["addr"] = f"127.0.0.1:{port}"
        cfg_path = workdir / "cfg.yml"
        cfg_path.write_text(json.dumps(config, indent=2) + "\n")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.fspath(workdir)}
        proc = ManagedProcess(
            [binary, "serve", cfg_path],
            log_path=workdir / f"registry-{attempt}.log",
            env=env,
            cwd=workdir,
            name=f"docker-registry:{port}",
        )
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        try:
            if tls:
                proc.wait_tcp("127.0.0.1", port, timeout)
            else:
                proc.wait_http(url + "/v2/", timeout, statuses=frozenset({200, 401}))
        except (RuntimeError, TimeoutError) as exc:
            proc.stop()
            last_error = exc
            if "address already in use" in proc.log_text():
                continue
            raise
        return Registry(
            host=f"127.0.0.1:{port}",
            url=url,
            process=proc,
            workdir=workdir,
            credentials=htpasswd,
            config=config,
        )
    assert last_error is not None
    raise last_error
