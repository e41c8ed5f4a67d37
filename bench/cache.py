"""The site cache (``blobs = "cache"``) measured beside its peers (bench/run.py turns these into rows).

* A hit: the blob is in a ``file://`` store and the gateway answers it with sendfile.
  Its peer is nginx (``sendfile on``, one process, like the gateway here) serving the
  very same file from the cache's directory. wrk reads both at 1 and 16 connections
  and throws the bytes away, so what is measured is the servers, not a hashing client.
* A miss: the first pull of a blob, fetched from the docker-registry upstream while it
  is streamed to the client and written to staging, then verified, fsynced and
  published before the stream ends. Its peer is the same client reading the blob
  straight from that registry. The cached file is removed before each round.
"""

from __future__ import annotations

import re
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests import components
from tests.stack import WaveStack, registry_route, toml_value

_WRK_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


@dataclass
class CacheStack(WaveStack):
    """A stack whose config also has a ``[cache]`` section."""

    cache: dict[str, Any] = field(default_factory=dict)

    def write_config(self) -> Path:
        path = super().write_config()
        lines = "".join(f"{key} = {toml_value(value)}\n" for key, value in self.cache.items())
        path.write_text(path.read_text() + "\n[cache]\n" + lines)
        return path


def wrk_mb_per_s(url: str, seconds: int, connections: int) -> float:
    """What wrk read per second (decimal MB/s) from ``url`` with ``connections`` connections, one thread."""
    argv = [components.require_tool("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", url]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 120).stdout
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if bad:
        raise RuntimeError(f"{url}: {bad.group(1)} non-2xx answers under load:\n{out}")
    rate = re.search(r"Transfer/sec:\s+([\d.]+)([KMGT]?B)", out)
    if rate is None:
        raise RuntimeError(f"cannot read wrk's transfer rate:\n{out}")
    return float(rate.group(1)) * _WRK_UNITS[rate.group(2)] / 1e6


def start_nginx(root: Path, work: Path) -> tuple[components.ManagedProcess, str]:
    """nginx serving ``root`` on a free loopback port: one process, sendfile on, no access log."""
    port = components.free_port()
    prefix = work / "nginx"
    prefix.mkdir(parents=True, exist_ok=True)
    temp = {name: prefix / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    conf = prefix / "nginx.conf"
    conf.write_text(
        "daemon off;\n"
        "master_process off;\n"  # one process, as the gateway here; it also never changes user
        f"pid {prefix / 'nginx.pid'};\n"
        f"error_log {prefix / 'error.log'} warn;\n"
        "events { worker_connections 1024; }\n"
        "http {\n"
        "  access_log off;\n"
        "  sendfile on;\n"
        "  tcp_nopush on;\n"
        "  default_type application/octet-stream;\n"
        + "".join(f"  {name}_temp_path {path};\n" for name, path in temp.items())
        + f"  server {{ listen 127.0.0.1:{port}; root {root}; }}\n"
        "}\n"
    )
    nginx = components.ManagedProcess(
        [components.require_tool("nginx"), "-p", str(prefix), "-c", str(conf)],
        log_path=prefix / "nginx.log",
    )
    try:
        nginx.wait_http(f"http://127.0.0.1:{port}/", 15)
    except BaseException:
        nginx.stop()
        raise
    return nginx, f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class HitRates:
    """MB/s by connection count, for the gateway's cache hits and for nginx on the same file."""

    gateway: dict[int, float]
    nginx: dict[int, float]


@dataclass(frozen=True)
class BigBlob:
    """A base image in the registry whose one layer is big: ``registry.host/repository:tag``."""

    registry: components.Registry
    repository: str
    tag: str
    layer: str
    size: int

    @property
    def image(self) -> str:
        return f"{self.registry.host}/{self.repository}:{self.tag}"


def cache_stack(work: Path, registry: components.Registry) -> CacheStack:
    return CacheStack(
        work,
        registries=[registry_route(registry, blobs="cache")],
        gateway={"access_log": False},
        cache={"store": f"file://{work / 'cache'}"},
    )


def blob_url(stack: WaveStack, target: str, layer: str) -> str:
    name = target.split("/", 1)[1].rsplit(":", 1)[0]
    return f"{stack.gateway_url}/v2/{name}/blobs/{layer}"


def cached_file(stack: WaveStack, layer: str) -> Path:
    return stack.workdir / "cache" / "blobs" / "sha256" / layer.removeprefix("sha256:")


CLIENTS = (1, 16)
Reader = Callable[[str], tuple[int, str]]  # GET a URL: (bytes read, their sha256 digest)


def measure_hits(blob: BigBlob, work: Path, seconds: int, stream: Reader) -> HitRates:
    """Fill the cache with one pull (checked by ``stream``), then wrk on the gateway and on nginx, interleaved."""
    stack = cache_stack(work / "cache-hit", blob.registry)
    stack.start()
    nginx: components.ManagedProcess | None = None
    try:
        url = blob_url(stack, stack.create(blob.image).target_image, blob.layer)
        if stream(url) != (blob.size, blob.layer):
            raise RuntimeError("the gateway's first pull of the blob was not the blob")
        stored = cached_file(stack, blob.layer)
        if stored.stat().st_size != blob.size:
            raise RuntimeError(f"the site cache did not keep {blob.layer}")
        nginx, nginx_url = start_nginx(stack.workdir / "cache", work)
        peer_url = f"{nginx_url}/blobs/sha256/{stored.name}"
        if stream(peer_url) != (blob.size, blob.layer):
            raise RuntimeError("nginx did not serve the cached file whole")
        ours, peer = {}, {}
        for count in CLIENTS:
            ours[count] = wrk_mb_per_s(url, seconds, count)
            peer[count] = wrk_mb_per_s(peer_url, seconds, count)
        return HitRates(ours, peer)
    finally:
        if nginx is not None:
            nginx.stop()
        stack.stop()


@dataclass(frozen=True)
class MissTimes:
    """Seconds per whole read: first pulls through the cache, and the same blob read from the registry."""

    gateway: list[float]
    direct: list[float]

    def mb_per_s(self, size: int) -> tuple[float, float]:
        return size / 1e6 / statistics.median(self.gateway), size / 1e6 / statistics.median(self.direct)


def measure_misses(blob: BigBlob, work: Path, rounds: int, stream: Reader) -> MissTimes:
    """``rounds`` first pulls of the blob (removed from the cache before each), interleaved with direct reads."""
    stack = cache_stack(work / "cache-miss", blob.registry)
    stack.start()
    ours, direct = [], []
    try:
        url = blob_url(stack, stack.create(blob.image).target_image, blob.layer)
        stored = cached_file(stack, blob.layer)
        for _ in range(rounds):
            stored.unlink(missing_ok=True)
            started = time.perf_counter()
            if stream(url) != (blob.size, blob.layer):
                raise RuntimeError("a first pull through the site cache was not the blob")
            ours.append(time.perf_counter() - started)
            if not stored.exists():
                raise RuntimeError("a first pull ended before its blob was published")
            started = time.perf_counter()
            if stream(f"{blob.registry.url}/v2/{blob.repository}/blobs/{blob.layer}") != (blob.size, blob.layer):
                raise RuntimeError("the registry's blob was not the blob")
            direct.append(time.perf_counter() - started)
    finally:
        stack.stop()
    return MissTimes(ours, direct)
