"""Real upstream registries the way the internet has them, on 127.0.0.1.

* a token server (``tests/tokenserver.py``) and registries that want its
  Bearer tokens (Docker Hub, ghcr.io, quay.io style);
* htpasswd Basic-auth registries (a private registry, ECR style);
* registries whose blob GETs redirect to a separate static file server (the
  CDN case: distribution's ``redirect`` storage middleware with a baseurl);
* a fault proxy (``tests/faultproxy.py``) to put in front of any of them.

All registries here can share one storage directory: auth and redirects are
properties of the server, not of the data, so one push serves them all.
Every process is a ``components.ManagedProcess``, stopped by PID.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import components
from tests.tokenserver import Pki, issued_tokens, make_pki, registry_auth_config
from wave_grpc.image.layers import pack_directory
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

HERE = Path(__file__).resolve().parent


def _python_env() -> dict[str, str]:
    # The helpers are run by path; they need only the venv's packages.
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class TokenServer(components.Component):
    workdir: Path
    users: dict[str, str]
    public: tuple[str, ...] = ("library/",)
    expires_in: int = 300
    port: int = 0
    pki: Pki = field(init=False)
    process: components.ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.pki = make_pki(self.workdir)
        self.port = self.port or components.free_port()
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            HERE / "tokenserver.py",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--key",
            self.pki.key,
            "--cert",
            self.pki.cert,
            "--log",
            self.log_path,
            "--expires-in",
            str(self.expires_in),
        ]
        for user, password in self.users.items():
            argv += ["--user", f"{user}:{password}"]
        for prefix in self.public:
            argv += ["--public", prefix]
        self.process = components.ManagedProcess(
            argv, log_path=self.workdir / "tokenserver.log", env=_python_env(), name="tokenserver"
        )
        self.process.wait_tcp("127.0.0.1", self.port, timeout=20)

    @property
    def log_path(self) -> Path:
        return self.workdir / "issued.jsonl"

    @property
    def realm(self) -> str:
        return f"http://127.0.0.1:{self.port}/token"

    def auth_config(self) -> dict[str, object]:
        return registry_auth_config(self.realm, self.pki)

    def issued(self) -> list[dict[str, Any]]:
        return issued_tokens(self.log_path)

    def tokens(self) -> list[str]:
        return [str(entry["token"]) for entry in self.issued()]

    def stop(self) -> None:
        self.process.stop()


@dataclass
class StaticServer(components.Component):
    """``python -m http.server`` over a directory: a CDN without auth."""

    root: Path
    workdir: Path
    port: int = 0
    process: components.ManagedProcess = field(init=False)

    def __post_init__(self) -> None:
        self.port = self.port or components.free_port()
        self.process = components.ManagedProcess(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", self.root, str(self.port)],
            log_path=self.workdir / f"static-{self.port}.log",
            env=_python_env(),
            name="static",
        )
        self.process.wait_tcp("127.0.0.1", self.port, timeout=20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> int:
        """How many blob GETs/HEADs it answered (from its log)."""
        return sum(1 for line in self.process.log_text().splitlines() if '"GET /docker/' in line or '"HEAD /' in line)

    def stop(self) -> None:
        self.process.stop()


@dataclass
class FaultProxy(components.Component):
    target: str
    workdir: Path
    record: Path | None = None
    port: int = 0
    process: components.ManagedProcess | None = None
    _starts: int = 0

    def __post_init__(self) -> None:
        self.port = self.port or components.free_port()
        self.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> None:
        self._starts += 1
        argv: list[str | os.PathLike[str]] = [
            sys.executable,
            HERE / "faultproxy.py",
            "--listen",
            self.host,
            "--target",
            self.target,
        ]
        if self.record is not None:
            argv += ["--record", self.record]
        self.process = components.ManagedProcess(
            argv, log_path=self.workdir / f"faultproxy-{self.port}-{self._starts}.log", env=_python_env(), name="proxy"
        )
        self.process.wait_http(f"{self.url}/__fault__", timeout=20)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def set(self, mode: str, **options: Any) -> None:
        body = json.dumps({"mode": mode, **options}).encode()
        resp = components.http_request(
            "POST", f"{self.url}/__fault__", headers=[("Content-Type", "application/json")], body=body
        )
        assert resp.status == 200, resp.body

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = components.http_request("GET", f"{self.url}/__fault__").json()
        return stats


def storage_root(registry: components.Registry) -> Path:
    return Path(registry.config["storage"]["filesystem"]["rootdirectory"])


def start_shared_registry(
    workdir: Path,
    storage: Path,
    *,
    htpasswd: tuple[str, str] | None = None,
    token_server: TokenServer | None = None,
    cdn: StaticServer | None = None,
) -> components.Registry:
    """A distribution registry over ``storage`` with the given auth and blob redirects."""
    extra: dict[str, Any] = {"storage": {"filesystem": {"rootdirectory": os.fspath(storage)}}}
    if token_server is not None:
        extra["auth"] = token_server.auth_config()
    if cdn is not None:
        extra["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": cdn.url + "/"}}]}
    return components.start_registry(workdir, htpasswd=htpasswd, extra_config=extra)


def copy_image(registry: components.Registry, source: str, dest: str) -> None:
    """``skopeo copy`` between two repositories of an open registry."""
    skopeo = components.require_tool("skopeo")
    components.run_tool(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            "--dest-tls-verify=false",
            f"docker://{registry.host}/{source}",
            f"docker://{registry.host}/{dest}",
        ]
    )


def hello_layer(workdir: Path) -> tuple[bytes, pb.ContainerLayer]:
    """A small injected layer (``/usr/local/bin/hello.sh``) as bytes and as an inline ``data:`` layer."""
    root = workdir / "hello-layer"
    script = root / "usr" / "local" / "bin" / "hello.sh"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text("#!/bin/sh\necho hello from an injected layer\n")
    script.chmod(0o755)
    out = io.BytesIO()
    digests = pack_directory(root, out)
    data = out.getvalue()
    layer = pb.ContainerLayer(
        location="data:" + base64.b64encode(data).decode(),
        gzip_digest=str(digests.gzip_digest),
        gzip_size=digests.gzip_size,
        tar_digest=str(digests.tar_digest),
    )
    return data, layer


def pull_and_check(target: str, workdir: Path, *, podman: bool = True) -> Path:
    """Pull ``target`` with skopeo (then unpack with umoci) and podman; check the files.

    Both verify every digest; the base layer's /etc/marker and the injected
    /usr/local/bin/hello.sh must be in the root fs. Answers the root fs path.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    layout = workdir / "oci"
    components.skopeo_copy_to_oci(target, layout, "latest")
    rootfs, _ = components.umoci_unpack(layout, "latest", workdir / "bundle")
    assert (rootfs / "etc" / "marker").read_text() == "hello\n"
    assert (rootfs / "bin" / "busybox").exists()
    assert (rootfs / "usr" / "local" / "bin" / "hello.sh").read_text().startswith("#!/bin/sh")
    if podman:
        root = workdir / "podman"
        try:
            components.podman_pull(target, root)
            info = components.podman_inspect(target, root)
            assert len(info["RootFS"]["Layers"]) == 3  # two base layers and the injected one
        finally:
            components.podman_cleanup(root)
    return rootfs


@dataclass
class AuthUpstreams:
    """Registries over one storage, each guarded differently, plus their token server and CDN."""

    tokens: TokenServer
    cdn: StaticServer
    basic: components.Registry  # htpasswd
    bearer: components.Registry  # token auth; library/ is public
    cdn_bearer: components.Registry  # token auth, blobs redirected to the CDN
    open_cdn: components.Registry  # no auth, blobs redirected to the CDN


def start_auth_upstreams(
    workdir: Path,
    root: Path,
    started: contextlib.ExitStack,
    *,
    token_user: tuple[str, str],
    basic_user: tuple[str, str],
) -> AuthUpstreams:
    """Start them all; ``started`` stops them (in reverse order)."""
    tokens = TokenServer(workdir / "tokens", users=dict([token_user]), public=("library/",))
    started.callback(tokens.stop)
    cdn = StaticServer(root, workdir)
    started.callback(cdn.stop)
    registries = []
    for name, options in (
        ("basic", {"htpasswd": basic_user}),
        ("bearer", {"token_server": tokens}),
        ("cdn_bearer", {"token_server": tokens, "cdn": cdn}),
        ("open_cdn", {"cdn": cdn}),
    ):
        registry = start_shared_registry(workdir / name, root, **options)
        started.callback(registry.stop)
        registries.append(registry)
    return AuthUpstreams(tokens, cdn, *registries)
