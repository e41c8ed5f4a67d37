"""Real-component test harness: a real registry, real images and real pulling clients.

Everything runs offline on 127.0.0.1 from Debian packages (see
``/work/shared/REAL-COMPONENTS.md``): CNCF distribution (``docker-registry``), skopeo,
umoci, podman, containerd/ctr, htpasswd and busybox-static.

Processes are started as children of the test process, remembered by their
``ManagedProcess`` object (never in module globals) and stopped by PID.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import http.client
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tarfile
import tempfile
import time
import urllib.parse
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NoReturn, overload

import pytest

__all__ = [
    "ALL_MANIFEST_TYPES",
    "BASE_REPOSITORY",
    "DOCKER_CONFIG",
    "DOCKER_LAYER_GZIP",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER_GZIP",
    "OCI_MANIFEST",
    "BaseImages",
    "Containerd",
    "HttpResponse",
    "ImageManifest",
    "ManagedProcess",
    "Registry",
    "TaggedImage",
    "ToolError",
    "free_port",
    "get_blob",
    "get_manifest",
    "http_request",
    "iter_tar_names",
    "podman_cleanup",
    "podman_inspect",
    "podman_pull",
    "podman_runroot",
    "push_blob",
    "push_busybox_images",
    "put_manifest",
    "read_oci_image_config",
    "require_tool",
    "run_tool",
    "sha256_digest",
    "skopeo_copy_to_oci",
    "skopeo_inspect",
    "start_registry",
    "umoci_unpack",
]

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
#: Sent as four separate ``Accept`` headers (distribution 2.8 reads them as a list).
ALL_MANIFEST_TYPES: tuple[str, ...] = (
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
)
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

BASE_REPOSITORY = "library/busybox"
REGISTRY_BIN = "/usr/bin/docker-registry"
BUSYBOX_BIN = "/bin/busybox"
EPOCH = "1970-01-01T00:00:00Z"

JSONDict = dict[str, Any]


# --------------------------------------------------------------------------- basics


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_APT_PACKAGES: Mapping[str, str] = {
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "busybox": "busybox-static",
    "ctr": "containerd",
    "redis-server": "redis-server",
}


def missing_component(message: str) -> NoReturn:
    """A real component is not installed: the test fails, it never skips.

    A green run that quietly skipped the real-component tests proves nothing;
    ``make test`` (scripts/install-test-deps.sh) installs every component.
    """
    pytest.fail(f"{message}; `make test` installs every component the suite needs")


def require_tool(name: str) -> str:
    """Path of executable ``name``; a missing one fails the test with the package to install."""
    path = shutil.which(name)
    if path is None:
        package = _APT_PACKAGES.get(name, name)
        missing_component(f"{name} missing; install it (apt-get install {package})")
    return path


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class ToolError(subprocess.CalledProcessError):
    """``CalledProcessError`` whose message includes the command's stderr/stdout."""

    def __str__(self) -> str:
        def text(value: object) -> str:
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return "" if value is None else str(value)

        parts = [super().__str__()]
        err, out = text(self.stderr).strip(), text(self.output).strip()
        if err:
            parts.append(f"stderr:\n{err[-4000:]}")
        if out:
            parts.append(f"stdout:\n{out[-2000:]}")
        return "\n".join(parts)


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a command to completion and return its stdout; raise ``ToolError`` on failure."""
    args = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise ToolError(proc.returncode, args, output=proc.stdout, stderr=proc.stderr)
    return proc.stdout


# ----------------------------------------------------------------------- processes


class ManagedProcess:
    """A background server process, stopped and reaped by PID.

    Output (stdout and stderr) goes to ``log_path``. The process runs in its own
    session so a signal to it reaches no one else.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        try:
            self._proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(ValueError):
            self._log.flush()
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _check_alive(self, waiting_for: str) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with {self._proc.returncode} "
                f"while waiting for {waiting_for}; log:\n{self.log_text()[-4000:]}"
            )

    def wait_tcp(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Wait until ``host:port`` accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(f"{host}:{port}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not listen on {host}:{port} in {timeout}s; log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_unix(self, path: Path, timeout: float = 15.0) -> None:
        """Wait until the unix socket ``path`` accepts connections."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(str(path))
            if path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(os.fspath(path))
                        return
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not listen on {path} in {timeout}s; log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_http(
        self,
        url: str,
        timeout: float = 15.0,
        *,
        statuses: frozenset[int] | None = None,
    ) -> int:
        """Wait until ``GET url`` answers (any status < 500, or one of ``statuses``)."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while True:
            self._check_alive(url)
            try:
                status = http_request("GET", url, timeout=1.0).status
                if (statuses is None and status < 500) or (statuses is not None and status in statuses):
                    return status
                last = f"status {status}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {url} did not answer in {timeout}s ({last}); log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait up to ``timeout`` s, then SIGKILL; reap. Idempotent."""
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                    self._proc.wait()
            return self._proc.returncode
        finally:
            self._log.close()

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} rc={self._proc.poll()}>"


# ---------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def _basic_auth(creds: tuple[str, str]) -> str:
    raw = f"{creds[0]}:{creds[1]}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def http_request(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """One plain-HTTP request; headers are a list, so a name may repeat (``Accept``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {k.lower() for k, _ in headers}
        for key, value in headers:
            conn.putheader(key, value)
        if auth is not None and "authorization" not in sent:
            conn.putheader("Authorization", _basic_auth(auth))
        if body is not None or method in ("PUT", "POST", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, list(resp.getheaders()), data)
    finally:
        conn.close()


def get_manifest(
    registry_url: str,
    repo: str,
    ref: str,
    *,
    auth: tuple[str, str] | None = None,
    accept: Sequence[str] = ALL_MANIFEST_TYPES,
) -> tuple[bytes, str, str]:
    """``GET /v2/<repo>/manifests/<ref>`` -> (bytes, media type, digest).

    The digest is the sha256 of the bytes; it must match ``Docker-Content-Digest``
    and, when ``ref`` is a digest, ``ref`` itself.
    """
    url = f"{registry_url.rstrip('/')}/v2/{repo}/manifests/{ref}"
    resp = http_request("GET", url, headers=[("Accept", a) for a in accept], auth=auth)
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {resp.body[:500]!r}")
    digest = sha256_digest(resp.body)
    header_digest = resp.header("Docker-Content-Digest")
    if header_digest is not None and header_digest != digest:
        raise RuntimeError(f"GET {url}: Docker-Content-Digest {header_digest} != {digest}")
    if ref.startswith("sha256:") and ref != digest:
        raise RuntimeError(f"GET {url}: body digest {digest} != {ref}")
    media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
    body_type = json.loads(resp.body).get("mediaType")
    if isinstance(body_type, str) and body_type and body_type != media_type:
        raise RuntimeError(f"GET {url}: Content-Type {media_type} != mediaType {body_type}")
    return resp.body, media_type, digest


def get_blob(registry_url: str, repo: str, digest: str, *, auth: tuple[str, str] | None = None) -> bytes:
    """``GET /v2/<repo>/blobs/<digest>`` with the digest checked."""
    url = f"{registry_url.rstrip('/')}/v2/{repo}/blobs/{digest}"
    resp = http_request("GET", url, auth=auth)
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {resp.body[:500]!r}")
    if sha256_digest(resp.body) != digest:
        raise RuntimeError(f"GET {url}: body does not match its digest")
    return resp.body


def push_blob(registry_url: str, repo: str, data: bytes, *, auth: tuple[str, str] | None = None) -> str:
    """Upload a blob (``POST`` an upload, then one ``PUT ?digest=``); returns its digest."""
    digest = sha256_digest(data)
    base = registry_url.rstrip("/")
    start = http_request("POST", f"{base}/v2/{repo}/blobs/uploads/", auth=auth)
    location = start.header("Location")
    if start.status != 202 or location is None:
        raise RuntimeError(f"POST upload to {repo}: {start.status} {start.body[:500]!r}")
    location = urllib.parse.urljoin(base + "/", location)
    sep = "&" if "?" in location else "?"
    done = http_request(
        "PUT",
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        headers=[("Content-Type", "application/octet-stream")],
        body=data,
        auth=auth,
    )
    if done.status != 201:
        raise RuntimeError(f"PUT blob {digest} to {repo}: {done.status} {done.body[:500]!r}")
    return digest


def put_manifest(
    registry_url: str,
    repo: str,
    ref: str,
    body: bytes,
    media_type: str,
    *,
    auth: tuple[str, str] | None = None,
) -> str:
    """``PUT /v2/<repo>/manifests/<ref>``; returns the digest of ``body``."""
    url = f"{registry_url.rstrip('/')}/v2/{repo}/manifests/{ref}"
    resp = http_request("PUT", url, headers=[("Content-Type", media_type)], body=body, auth=auth)
    if resp.status not in (200, 201):
        raise RuntimeError(f"PUT {url}: {resp.status} {resp.body[:1000]!r}")
    digest = sha256_digest(body)
    got = resp.header("Docker-Content-Digest")
    if got is not None and got != digest:
        raise RuntimeError(f"PUT {url}: registry says {got}, body is {digest}")
    return digest


# ------------------------------------------------------------------------ registry


def _deep_merge(base: JSONDict, extra: Mapping[str, Any]) -> JSONDict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Registry:
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

    def __enter__(self) -> Registry:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_registry(
    workdir: Path,
    *,
    htpasswd: tuple[str, str] | None = None,
    proxy_remote_url: str | None = None,
    extra_config: Mapping[str, Any] | None = None,
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
        url = f"http://127.0.0.1:{port}"
        try:
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


# ---------------------------------------------------------------- base image build


def _gzip(data: bytes) -> bytes:
    """gzip with a fixed 10-byte header (mtime 0, no name, OS=255): same bytes anywhere
    the same zlib is used."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    deflated = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + deflated + trailer


TarEntry = tuple[str, Literal["dir", "file", "symlink"], bytes | str, int]


def _tar(entries: Sequence[TarEntry]) -> bytes:
    """A reproducible tar: sorted names, uid/gid 0, no names, mtime 0, PAX format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                assert isinstance(payload, str)
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, **extra: Any) -> JSONDict:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


class _Layout:
    """A minimal OCI image layout writer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[JSONDict] = []

    def add(self, blob: _Blob) -> _Blob:
        path = self.root / "blobs" / "sha256" / blob.digest.split(":", 1)[1]
        path.write_bytes(blob.data)
        return blob

    def tag(self, name: str, blob: _Blob) -> None:
        self.refs.append(blob.descriptor(annotations={"org.opencontainers.image.ref.name": name}))

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.root / "index.json").write_bytes(_canonical(index))


def _build_single(layout: _Layout, arch: str, marker: bytes) -> _Blob:
    busybox = Path(BUSYBOX_BIN).read_bytes()
    base: list[TarEntry] = [
        ("bin", "dir", b"", 0o755),
        ("bin/busybox", "file", busybox, 0o755),
        ("etc", "dir", b"", 0o755),
        ("etc/marker", "file", marker, 0o644),
    ]
    base += [(f"bin/{a}", "symlink", "busybox", 0o777) for a in ("sh", "ls", "cat", "echo", "true")]
    second: list[TarEntry] = [("etc", "dir", b"", 0o755), ("etc/second", "file", b"two\n", 0o644)]
    tars = [_tar(base), _tar(second)]
    layers = [layout.add(_Blob(_gzip(t), OCI_LAYER_GZIP)) for t in tars]
    config = {
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo hi"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
        "history": [
            {"created": EPOCH, "created_by": "realcomp: busybox base layer"},
            {"created": EPOCH, "created_by": "realcomp: /etc/second"},
        ],
    }
    config_blob = layout.add(_Blob(_canonical(config), OCI_CONFIG))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return layout.add(_Blob(_canonical(manifest), OCI_MANIFEST))


@dataclass(frozen=True)
class ImageManifest:
    """One single-platform manifest as read back from the registry."""

    platform: str  # "linux/amd64"
    digest: str
    media_type: str
    size: int
    config_digest: str
    layer_digests: tuple[str, ...]  # compressed blobs, in manifest order
    diff_ids: tuple[str, ...]  # uncompressed tar digests from the config


@dataclass(frozen=True)
class TaggedImage:
    """What one tag of ``library/busybox`` points at."""

    tag: str
    ref: str  # "127.0.0.1:PORT/library/busybox:TAG"
    digest: str  # digest of the top-level manifest / index
    media_type: str
    manifests: tuple[ImageManifest, ...]  # one for a manifest, per platform for an index

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def platform(self, platform: str = "linux/amd64") -> ImageManifest:
        for m in self.manifests:
            if m.platform == platform:
                return m
        raise KeyError(f"{self.ref} has no {platform}")


@dataclass(frozen=True)
class BaseImages:
    """The busybox test images pushed by ``push_busybox_images``.

    * ``latest``: OCI manifest, linux/amd64, two layers (/bin/busybox + symlinks and
      /etc/marker = "hello\\n"; then /etc/second = "two\\n"); entrypoint ["/bin/sh"],
      cmd ["-c", "echo hi"], env ["PATH=/bin"], working dir "/".
    * ``v2s2``: the same image as Docker v2 schema 2 (same layer blobs).
    * ``multi``: OCI index of linux/amd64 (= ``latest``) and linux/arm64 (marker
      "arm64\\n", config architecture arm64).
    * ``dockerlist``: Docker manifest list of the two as v2 schema 2 manifests.
    """

    registry_host: str
    registry_url: str
    repository: str
    layout_dir: Path  # local OCI layout with refs "amd64", "arm64", "multi"
    latest: TaggedImage
    v2s2: TaggedImage
    multi: TaggedImage
    dockerlist: TaggedImage

    def by_tag(self, tag: str) -> TaggedImage:
        images = {i.tag: i for i in (self.latest, self.v2s2, self.multi, self.dockerlist)}
        return images[tag]

    @property
    def tags(self) -> tuple[str, ...]:
        return ("latest", "v2s2", "multi", "dockerlist")

    def ref(self, tag: str = "latest") -> str:
        return f"{self.registry_host}/{self.repository}:{tag}"


def _read_back(registry: Registry, repo: str, tag: str, ref: str) -> TaggedImage:
    body, media_type, digest = registry.get_manifest(repo, ref)
    doc = json.loads(body)

    def single(platform: str, m_digest: str, m_body: bytes, m_type: str) -> ImageManifest:
        m = json.loads(m_body)
        cfg_digest = m["config"]["digest"]
        cfg = json.loads(registry.get_blob(repo, cfg_digest))
        got_platform = f"{cfg['os']}/{cfg['architecture']}"
        if platform and platform != got_platform:
            raise RuntimeError(f"{ref}: index says {platform}, config says {got_platform}")
        return ImageManifest(
            platform=got_platform,
            digest=m_digest,
            media_type=m_type,
            size=len(m_body),
            config_digest=cfg_digest,
            layer_digests=tuple(layer["digest"] for layer in m["layers"]),
            diff_ids=tuple(cfg["rootfs"]["diff_ids"]),
        )

    manifests: list[ImageManifest] = []
    if media_type in INDEX_TYPES:
        for desc in doc["manifests"]:
            p = desc["platform"]
            m_body, m_type, m_digest = registry.get_manifest(repo, desc["digest"])
            if m_digest != desc["digest"] or m_type != desc["mediaType"]:
                raise RuntimeError(f"{ref}: child {desc['digest']} read back differently")
            manifests.append(single(f"{p['os']}/{p['architecture']}", m_digest, m_body, m_type))
    else:
        manifests.append(single("", digest, body, media_type))
    return TaggedImage(
        tag=tag,
        ref=registry.ref(repo, tag),
        digest=digest,
        media_type=media_type,
        manifests=tuple(manifests),
    )


def push_busybox_images(workdir: Path, registry: Registry, repository: str = BASE_REPOSITORY) -> BaseImages:
    """Build the busybox test images offline (reproducibly) and push all four tags.

    Layer tars and gzip streams are written by Python with fixed metadata, so digests
    are the same on every run that uses the same ``/bin/busybox`` and zlib. The
    ``v2s2`` and ``dockerlist`` manifests are converted by skopeo (deterministic too).
    """
    skopeo = require_tool("skopeo")
    if not os.path.exists(BUSYBOX_BIN):
        require_tool("busybox")  # fails with the install hint
    workdir.mkdir(parents=True, exist_ok=True)
    layout_dir = workdir / "oci"
    layout = _Layout(layout_dir)
    amd64 = _build_single(layout, "amd64", b"hello\n")
    arm64 = _build_single(layout, "arm64", b"arm64\n")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            amd64.descriptor(platform={"architecture": "amd64", "os": "linux"}),
            arm64.descriptor(platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    index_blob = layout.add(_Blob(_canonical(index), OCI_INDEX))
    layout.tag("amd64", amd64)
    layout.tag("arm64", arm64)
    layout.tag("multi", index_blob)
    layout.write_index()

    creds: list[str] = []
    if registry.creds_arg is not None:
        creds = ["--dest-creds", registry.creds_arg]
    base = [skopeo, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", *creds]
    dest = f"docker://{registry.host}/{repository}"
    src = f"oci:{layout_dir}"
    run_tool([*base, f"{src}:amd64", f"{dest}:latest"])
    run_tool([*base, "--format", "v2s2", f"{src}:amd64", f"{dest}:v2s2"])
    run_tool([*base, "--all", f"{src}:multi", f"{dest}:multi"])

    # Docker manifest list: convert each arch to v2s2 in a local dir, push its
    # manifest by digest (the blobs are in the repository already), then the list.
    entries: list[JSONDict] = []
    for arch in ("amd64", "arm64"):
        conv = workdir / f"v2s2-{arch}"
        if conv.exists():
            shutil.rmtree(conv)
        run_tool(
            [
                skopeo,
                "--insecure-policy",
                "copy",
                "--quiet",
                "--format",
                "v2s2",
                f"{src}:{arch}",
                f"dir:{conv}",
            ]
        )
        m_body = (conv / "manifest.json").read_bytes()
        m = json.loads(m_body)
        for blob in [m["config"], *m["layers"]]:
            head = http_request(
                "HEAD",
                f"{registry.url}/v2/{repository}/blobs/{blob['digest']}",
                auth=registry.credentials,
            )
            if head.status != 200:
                raise RuntimeError(f"blob {blob['digest']} of {arch} v2s2 not in registry")
        m_digest = put_manifest(
            registry.url,
            repository,
            sha256_digest(m_body),
            m_body,
            DOCKER_MANIFEST,
            auth=registry.credentials,
        )
        entries.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "size": len(m_body),
                "digest": m_digest,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    mlist = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": entries}
    put_manifest(
        registry.url,
        repository,
        "dockerlist",
        json.dumps(mlist, indent=3).encode(),
        DOCKER_MANIFEST_LIST,
        auth=registry.credentials,
    )

    images = {tag: _read_back(registry, repository, tag, tag) for tag in ("latest", "v2s2", "multi", "dockerlist")}
    if images["latest"].digest != amd64.digest or images["multi"].digest != index_blob.digest:
        raise RuntimeError("skopeo changed the OCI manifests while pushing")
    return BaseImages(
        registry_host=registry.host,
        registry_url=registry.url,
        repository=repository,
        layout_dir=layout_dir,
        **images,
    )


# ------------------------------------------------------------------------ runtimes


def _docker_ref(image_ref: str) -> str:
    return image_ref if image_ref.startswith("docker://") else f"docker://{image_ref}"


def skopeo_copy_to_oci(
    image_ref: str,
    layout_dir: Path,
    tag: str = "latest",
    *,
    arch: str | None = None,
    src_creds: str | None = None,
) -> None:
    """``skopeo copy docker://REF oci:DIR:TAG`` (verifies every blob digest)."""
    skopeo = require_tool("skopeo")
    argv = [skopeo, "--insecure-policy"]
    if arch is not None:
        argv += ["--override-arch", arch]
    argv += ["copy", "--quiet", "--src-tls-verify=false"]
    if src_creds is not None:
        argv += ["--src-creds", src_creds]
    argv += [_docker_ref(image_ref), f"oci:{layout_dir}:{tag}"]
    run_tool(argv)


@overload
def skopeo_inspect(
    image_ref: str, raw: Literal[False] = ..., *, creds: str | None = ..., no_tags: bool = ...
) -> JSONDict: ...
@overload
def skopeo_inspect(image_ref: str, raw: Literal[True], *, creds: str | None = ..., no_tags: bool = ...) -> bytes: ...
def skopeo_inspect(
    image_ref: str, raw: bool = False, *, creds: str | None = None, no_tags: bool = False
) -> JSONDict | bytes:
    """``skopeo inspect [--raw]``; the parsed JSON, or the raw manifest bytes.

    Without ``no_tags`` (and without ``raw``) skopeo also calls ``/tags/list``.
    """
    skopeo = require_tool("skopeo")
    argv = [skopeo, "--insecure-policy", "inspect", "--tls-verify=false"]
    if raw:
        argv.append("--raw")
    if no_tags:
        argv.append("--no-tags")
    if creds is not None:
        argv += ["--creds", creds]
    argv.append(_docker_ref(image_ref))
    proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise ToolError(proc.returncode, argv, output=proc.stdout, stderr=proc.stderr)
    if raw:
        return proc.stdout
    result: JSONDict = json.loads(proc.stdout)
    return result


def umoci_unpack(layout_dir: Path, tag: str, bundle_dir: Path) -> tuple[Path, JSONDict]:
    """``umoci unpack`` into ``bundle_dir`` -> (rootfs path, runtime config.json).

    ``--rootless`` is added when not root. Note umoci puts ``TERM=xterm`` into the
    runtime spec's env; use ``read_oci_image_config`` for the image's own config.
    """
    umoci = require_tool("umoci")
    argv = [umoci, "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout_dir}:{tag}", os.fspath(bundle_dir)]
    run_tool(argv)
    runtime: JSONDict = json.loads((bundle_dir / "config.json").read_text())
    return bundle_dir / "rootfs", runtime


def read_oci_image_config(layout_dir: Path, tag: str, *, platform: str = "linux/amd64") -> JSONDict:
    """The image config JSON of ``tag`` in an OCI layout (index.json -> manifest ->
    config), following an index to ``platform``. Every blob's digest is checked."""

    def blob(digest: str) -> bytes:
        algo, hexdigest = digest.split(":", 1)
        data = (layout_dir / "blobs" / algo / hexdigest).read_bytes()
        if sha256_digest(data) != digest:
            raise RuntimeError(f"{layout_dir}: blob {digest} does not match its digest")
        return data

    top = json.loads((layout_dir / "index.json").read_text())
    for desc in top["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            break
    else:
        raise KeyError(f"{layout_dir} has no ref {tag!r}")
    doc = json.loads(blob(desc["digest"]))
    if desc["mediaType"] in INDEX_TYPES or "manifests" in doc:
        os_, arch = platform.split("/")[:2]
        for child in doc["manifests"]:
            p = child.get("platform", {})
            if p.get("os") == os_ and p.get("architecture") == arch:
                doc = json.loads(blob(child["digest"]))
                break
        else:
            raise KeyError(f"{layout_dir}:{tag} has no {platform}")
    config: JSONDict = json.loads(blob(doc["config"]["digest"]))
    return config


def podman_runroot(root: Path) -> Path:
    """The run directory podman uses for the store under ``root``.

    podman refuses a ``--runroot`` longer than 50 characters, so it lives at a short
    path derived from ``root`` (stable, so every call on ``root`` agrees). Remove it
    with ``podman_cleanup``.
    """
    tag = hashlib.sha256(os.fspath(root.resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"podman-run-{tag}"  # noqa: S108 - private name, root only


def podman_cleanup(root: Path) -> None:
    """Remove the short-path run directory of the podman store under ``root``."""
    shutil.rmtree(podman_runroot(root), ignore_errors=True)


def _podman_base(root: Path) -> list[str]:
    podman = require_tool("podman")
    return [
        podman,
        "--root", os.fspath(root / "storage"),
        "--runroot", os.fspath(podman_runroot(root)),
        "--tmpdir", os.fspath(root / "tmp"),
        "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
    ]  # fmt: skip


def _podman_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = os.fspath(root / "tmp")  # image blobs are staged here
    env.pop("CONTAINERS_CONF", None)
    env.pop("CONTAINERS_STORAGE_CONF", None)
    return env


def podman_pull(image_ref: str, root: Path, *, arch: str | None = None, creds: str | None = None) -> str:
    """``podman pull`` into a private vfs store under ``root``; returns the image id."""
    argv = [*_podman_base(root), "pull", "--quiet", "--tls-verify=false"]
    if arch is not None:
        argv += ["--arch", arch]
    if creds is not None:
        argv += ["--creds", creds]
    argv.append(image_ref.removeprefix("docker://"))
    out = run_tool(argv, env=_podman_env(root), timeout=180)
    return out.strip().splitlines()[-1].strip()


def podman_inspect(image_ref: str, root: Path) -> JSONDict:
    """``podman image inspect`` of an image in the store under ``root``."""
    argv = [*_podman_base(root), "image", "inspect", image_ref.removeprefix("docker://")]
    out = json.loads(run_tool(argv, env=_podman_env(root)))
    result: JSONDict = out[0]
    return result


class Containerd:
    """A private containerd (CRI disabled) on its own socket, driven with ``ctr``.

    ``ctr images pull`` (containerd 1.6) needs no ``--platform`` for an index: it
    fetches only the children for ``platform`` (default: the host's; ``--all-platforms``
    fetches every child) and unpacks that one with the ``native`` snapshotter. It
    verifies every blob's digest and size against its descriptor and, on unpack, each
    layer's uncompressed digest against the config's ``rootfs.diff_ids`` ("wrong diff
    id calculated on extraction"). It does NOT check a single manifest's config
    platform: an arm64-only manifest pulls fine on amd64 without ``--platform``.
    """

    def __init__(self, workdir: Path, *, timeout: float = 20.0) -> None:
        self.containerd = require_tool("containerd")
        self.ctr = require_tool("ctr")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to ~107 bytes: fall back to a short temp dir
        self._sockdir: str | None = None
        sock = workdir / "containerd.sock"
        if len(os.fspath(sock)) > 100:
            self._sockdir = tempfile.mkdtemp(prefix="ctrd-", dir="/tmp")
            sock = Path(self._sockdir) / "containerd.sock"
        self.address = sock
        root, state = workdir / "root", workdir / "state"
        config = "\n".join(
            [
                "version = 2",
                f"root = {json.dumps(os.fspath(root))}",
                f"state = {json.dumps(os.fspath(state))}",
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "",
                "[grpc]",
                f"  address = {json.dumps(os.fspath(sock))}",
                "",
                "[ttrpc]",
                f"  address = {json.dumps(os.fspath(sock) + '.ttrpc')}",
                "",
                "[debug]",
                '  address = ""',
                "",
                "[metrics]",
                '  address = ""',
                "",
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {json.dumps(os.fspath(workdir / 'opt'))}",
                "",
            ]
        )
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(config)
        self.process = ManagedProcess(
            [self.containerd, "--config", self.config_path],
            log_path=workdir / "containerd.log",
            name="containerd",
        )
        try:
            self.process.wait_unix(sock, timeout)
        except BaseException:
            self.stop()
            raise

    def ctr_cmd(self, *args: str, timeout: float = 180.0) -> str:
        return run_tool([self.ctr, "--address", self.address, *args], timeout=timeout)

    def pull(
        self,
        image_ref: str,
        platform: str | None = None,
        *,
        user: str | None = None,
        all_platforms: bool = False,
    ) -> str:
        """``ctr images pull --plain-http --snapshotter native [--platform P] REF``."""
        argv = ["images", "pull", "--plain-http", "--snapshotter", "native"]
        if platform is not None:
            argv += ["--platform", platform]
        if all_platforms:
            argv.append("--all-platforms")
        if user is not None:
            argv += ["--user", user]
        argv.append(image_ref.removeprefix("docker://"))
        return self.ctr_cmd(*argv)

    def image_list(self) -> str:
        return self.ctr_cmd("images", "list")

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            if self._sockdir is not None:
                shutil.rmtree(self._sockdir, ignore_errors=True)
                self._sockdir = None

    def __enter__(self) -> Containerd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def iter_tar_names(data: bytes) -> Iterator[str]:
    """Names in a (possibly gzipped) tar blob; handy for checking layer content."""
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            yield member.name


# --------------------------------------------------------------------------- redis


@dataclass
class RedisServer:
    """A throwaway redis-server on a loopback port: no persistence, stopped by PID."""

    url: str
    process: ManagedProcess

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_redis(workdir: Path) -> RedisServer:
    server = require_tool("redis-server")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = ManagedProcess([*argv, "--dir", workdir], log_path=workdir / "redis.log", name="redis-server")
    try:
        process.wait_tcp("127.0.0.1", port)
    except BaseException:
        process.stop()
        raise
    return RedisServer(f"redis://127.0.0.1:{port}/0", process)
