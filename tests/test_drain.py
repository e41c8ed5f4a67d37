"""Draining on SIGTERM, against real processes: readiness drops at once, the listener closes,
a slow blob stream in flight finishes byte for byte, the process exits 0; and a rolling restart
of one of two gateways behind a real haproxy, under a steady pull load, loses no request."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


def _readyz(port: int) -> int:
    try:
        return components.http_request("GET", f"http://127.0.0.1:{port}/readyz", timeout=2).status
    except OSError:
        return 0  # refused: not ready either


def _wait_ready(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while _readyz(port) != 200:
        assert time.monotonic() < deadline, f"/readyz on {port} never answered 200"
        time.sleep(0.1)


class SlowReader(threading.Thread):
    """GETs a blob through a tiny receive buffer, a few KiB at a time: a stream that lasts."""

    def __init__(self, port: int, path: str) -> None:
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.body = b""
        self.status = ""
        self.error: BaseException | None = None
        self.started_reading = threading.Event()

    def run(self) -> None:
        try:
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
                sock.settimeout(60)
                sock.connect(("127.0.0.1", self.port))
                sock.sendall(f"GET {self.path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                data = b""
                while chunk := sock.recv(8192):
                    data += chunk
                    self.started_reading.set()
                    time.sleep(0.004)
            head, _, self.body = data.partition(b"\r\n\r\n")
            self.status = head.split(b"\r\n", 1)[0].decode()
        except BaseException as exc:
            self.error = exc
            self.started_reading.set()


def test_sigterm_drops_readiness_at_once_and_lets_a_slow_stream_finish(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages
) -> None:
    blob, _ = components.layer_tar_gz({"opt/big.bin": os.urandom(3 << 20)}, mode=0o644)
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    admin_port = components.free_port()
    wave = WaveStack(
        tmp_path, registries=[registry_route(registry)], admin={"listen": f"127.0.0.1:{admin_port}"}
    ).start()
    try:
        _wait_ready(admin_port)
        created = wave.create(
            base_images.ref("latest"),
            container_config=pb.ContainerConfig(
                layers=[pb.ContainerLayer(location="data:" + base64.b64encode(blob).decode())]
            ),
        )
        name = created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        reader = SlowReader(wave.http_port, f"/v2/{name}/blobs/{digest}")
        reader.start()
        assert reader.started_reading.wait(10)
        assert wave.process is not None
        os.kill(wave.process.pid, signal.SIGTERM)
        signalled = time.monotonic()
        while _readyz(admin_port) == 200:
            assert time.monotonic() - signalled < 1.0, "readiness still 200 a second after SIGTERM"
            time.sleep(0.02)
        reader.join(60)
        assert reader.error is None, reader.error
        assert reader.status.endswith("200 OK"), reader.status
        assert hashlib.sha256(reader.body).hexdigest() == digest.removeprefix("sha256:")
        assert len(reader.body) == len(blob)
        assert wave.process.stop(timeout=30) == 0  # already exiting: stop() only waits and reaps
        # The stream really was in flight when the signal came (it lasted past it).
        assert time.monotonic() - signalled > 0.2
    finally:
        wave.stop()


def _haproxy(tmp_path: Path, port: int, backends: list[tuple[int, int]]) -> components.ManagedProcess:
    lines = [
        "global",
        "  maxconn 256",
        "defaults",
        "  mode http",
        "  timeout connect 2s",
        "  timeout client 30s",
        "  timeout server 30s",
        "  timeout check 3s",
        "  retries 3",
        "  option redispatch 1",
        "  retry-on conn-failure empty-response response-timeout 503",
        "frontend pulls",
        f"  bind 127.0.0.1:{port}",
        "  default_backend gateways",
        "backend gateways",
        "  balance roundrobin",
        "  option httpchk GET /readyz",
        "  http-check expect status 200",
    ]
    for i, (http_port, admin_port) in enumerate(backends):
        lines.append(f"  server g{i} 127.0.0.1:{http_port} check port {admin_port} inter 300ms fall 2 rise 2")
    config = tmp_path / "haproxy.cfg"
    config.write_text("\n".join(lines) + "\n")
    haproxy = components.require_tool("haproxy")
    process = components.ManagedProcess([haproxy, "-db", "-f", str(config)], log_path=tmp_path / "haproxy.log")
    process.wait_tcp("127.0.0.1", port, timeout=15)
    return process


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    with components.start_redis(tmp_path / "redis") as server:
        yield server.url


def test_a_rolling_restart_behind_haproxy_loses_no_pull(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, redis_url: str
) -> None:
    replicas = []
    for name in ("a", "b"):
        admin_port = components.free_port()
        stack = WaveStack(
            tmp_path / name,
            registries=[registry_route(registry)],
            service={"store": redis_url},
            gateway={"shared_cache": redis_url, "record_cache_ttl": "1s"},
            admin={"listen": f"127.0.0.1:{admin_port}"},
        )
        replicas.append((stack.start(), admin_port))
    lb_port = components.free_port()
    haproxy = _haproxy(tmp_path, lb_port, [(stack.http_port, admin) for stack, admin in replicas])
    outcomes: dict[str, int] = {"ok": 0, "failed": 0}
    failures: list[str] = []
    stop = threading.Event()
    try:
        for _, admin in replicas:
            _wait_ready(admin)
        created = replicas[0][0].create(base_images.ref("latest"))
        name, tag = created.target_image.split("/", 1)[1].rsplit(":", 1)

        def pull_loop() -> None:
            while not stop.is_set():
                try:
                    manifest = components.http_request(
                        "GET", f"http://127.0.0.1:{lb_port}/v2/{name}/manifests/{tag}", headers=ACCEPT, timeout=10
                    )
                    ok = manifest.status == 200
                    if ok:
                        digest = manifest.header("Docker-Content-Digest") or ""
                        again = components.http_request(
                            "HEAD", f"http://127.0.0.1:{lb_port}/v2/{name}/manifests/{digest}", headers=ACCEPT
                        )
                        ok = again.status == 200
                        if not ok:
                            failures.append(f"HEAD by digest: {again.status} {again.body[:200]!r}")
                    elif not ok:
                        failures.append(f"GET: {manifest.status} {manifest.body[:200]!r}")
                    outcomes["ok" if ok else "failed"] += 1
                except OSError as exc:
                    outcomes["failed"] += 1
                    failures.append(repr(exc))

        loaders = [threading.Thread(target=pull_loop, daemon=True) for _ in range(4)]
        for loader in loaders:
            loader.start()
        time.sleep(1.5)
        for stack, admin in replicas:
            stack.stop()  # SIGTERM: readiness 503 at once, listener closed, in-flight finished
            time.sleep(0.5)
            stack.start()
            _wait_ready(admin)
            time.sleep(1.0)
        stop.set()
        for loader in loaders:
            loader.join(30)
    finally:
        stop.set()
        haproxy.stop()
        for stack, _ in replicas:
            stack.stop()
    print(f"rolling restart under load: {outcomes['ok']} pulls ok, {outcomes['failed']} failed")
    assert outcomes["ok"] > 50
    assert outcomes["failed"] == 0, failures[:5]
