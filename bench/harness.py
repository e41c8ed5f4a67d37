"""What every figure uses: the table's row, the settings, wrk and process readings, the
big blobs, and the components the run shares (docker-registry direct and pull-through,
Redis and a default wave-grpc stack)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests import components
from tests.stack import WaveStack, registry_route

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


@dataclass(frozen=True)
class Row:
    figure: str
    metric: str
    ours: float
    peer_name: str
    peer: float | None
    higher_is_better: bool = True

    @property
    def ratio(self) -> float | None:
        if self.peer is None or self.peer == 0:
            return None
        return self.ours / self.peer


@dataclass
class Settings:
    quick: bool
    wrk_seconds: int
    tokens: int
    big_blob: int
    lookups: int
    repeats: int


def settings(quick: bool) -> Settings:
    if quick:
        return Settings(quick, wrk_seconds=2, tokens=10_000, big_blob=32 << 20, lookups=2_000, repeats=1)
    return Settings(quick, wrk_seconds=10, tokens=1_000_000, big_blob=1 << 30, lookups=20_000, repeats=3)


# -- helpers -------------------------------------------------------------------


@dataclass(frozen=True)
class WrkResult:
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    requests: int = 0


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"cannot read wrk latency {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def wrk(url: str, seconds: int, headers: list[tuple[str, str]] = (), connections: int = 64) -> WrkResult:  # type: ignore[assignment]
    argv = [components.require_tool("wrk"), "-t1", f"-c{connections}", f"-d{seconds}s", "--latency"]
    # wrk keeps one value per header name, so several Accept types go comma-joined.
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name, []).append(value)
    for name, values in merged.items():
        argv += ["-H", f"{name}: {', '.join(values)}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return WrkResult(rps, p50, p99, int(bad.group(1)) if bad else 0, int(total.group(1)) if total else 0)


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def peak_rss_mb(pid: int) -> float:
    return components.vm_hwm_kib(pid) / 1024


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used, seconds (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def stream_get(url: str, chunk: int = 1 << 20) -> tuple[int, str]:
    """GET url, following one redirect; answer (bytes read, sha256) without keeping the body."""
    for _ in range(3):
        parts = url.split("/", 3)
        conn = http.client.HTTPConnection(parts[2], timeout=120)
        conn.request("GET", "/" + parts[3])
        resp = conn.getresponse()
        if resp.status in (301, 302, 307):
            url = resp.getheader("Location") or ""
            conn.close()
            continue
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
        hasher, total = hashlib.sha256(), 0
        while data := resp.read(chunk):
            hasher.update(data)
            total += len(data)
        conn.close()
        return total, "sha256:" + hasher.hexdigest()
    raise RuntimeError(f"too many redirects for {url}")


def push_big_blob(registry: components.Registry, repo: str, path: Path) -> str:
    """Monolithic upload of a file, streamed from disk."""
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            hasher.update(chunk)
    digest = "sha256:" + hasher.hexdigest()
    conn = http.client.HTTPConnection(registry.host, timeout=600)
    conn.request("POST", f"/v2/{repo}/blobs/uploads/")
    resp = conn.getresponse()
    resp.read()
    location = resp.getheader("Location") or ""
    location = location.split(registry.host, 1)[-1]
    sep = "&" if "?" in location else "?"
    with path.open("rb") as handle:
        conn.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            body=handle,
            headers={"Content-Length": str(path.stat().st_size), "Content-Type": "application/octet-stream"},
        )
        done = conn.getresponse()
        done.read()
    conn.close()
    if done.status != 201:
        raise RuntimeError(f"big blob upload: {done.status}")
    return digest


def make_big_image(registry: components.Registry, workdir: Path, size: int) -> str:
    """An image whose single base layer is ``size`` bytes (not a real tar: only streamed)."""
    blob = workdir / "big.bin"
    with blob.open("wb") as handle:
        rng = random.Random(7)  # noqa: S311 - filler bytes, not crypto
        chunk = rng.randbytes(1 << 20)
        for i in range(size >> 20):
            handle.write(chunk[i % 7 :] + chunk[: i % 7])
    repo = "bench/big"
    layer = push_big_blob(registry, repo, blob)
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": [layer]}}
    ).encode()
    config_digest = components.push_blob(registry.url, repo, config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": components.OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": len(config),
        },
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer, "size": size}],
    }
    components.put_manifest(registry.url, repo, "v1", json.dumps(manifest).encode(), components.OCI_MANIFEST)
    blob.unlink()
    return layer


def layer_file(path: Path, size: int) -> Path:
    """A gzip layer of about ``size`` compressed bytes (incompressible content)."""
    raw = io.BytesIO()
    import tarfile

    payload = random.Random(size).randbytes(size - (size >> 6))  # noqa: S311 - leaves room for tar+gzip overhead
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    path.write_bytes(gzip.compress(raw.getvalue(), compresslevel=1, mtime=0))
    return path


# -- the figures ---------------------------------------------------------------


@contextmanager
def started_components(work: Path, cfg: Settings) -> Iterator[dict[str, Any]]:
    with ExitStack() as stack:
        registry = components.start_registry(work / "registry")
        stack.callback(registry.stop)
        images = components.push_busybox_images(work / "images", registry)
        pull_through = components.start_registry(work / "pull-through", proxy_remote_url=registry.url)
        stack.callback(pull_through.stop)
        redis = components.start_redis(work / "redis")
        stack.callback(redis.stop)
        wave = WaveStack(work / "wave", registries=[registry_route(registry)], gateway={"access_log": False})
        wave.start()
        stack.callback(wave.stop)
        yield {
            "registry": registry,
            "images": images,
            "pull_through": pull_through,
            "wave": wave,
            "redis_url": redis.url,
        }
