"""Byte streams: a big base blob relayed in proxy mode, and the site cache's hits and
misses, each beside a peer reading the same bytes (docker-registry, nginx, a bare relay)."""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from pathlib import Path
from typing import Any

from bench import barerelay, cache
from bench.harness import (
    Row,
    Settings,
    cpu_seconds,
    make_big_image,
    peak_rss_mb,
    reset_peak_rss,
    stream_get,
    timed,
)
from tests import components
from tests.stack import WaveStack, registry_route


def sha256_seconds_per_gb(size: int = 256 << 20) -> float:
    """CPU seconds hashlib's sha256 takes per GB on this machine: the floor of a hashing relay."""
    data = random.Random(3).randbytes(1 << 20)  # noqa: S311 - filler bytes, not crypto
    hasher = hashlib.sha256()
    started = time.process_time()
    for _ in range(size >> 20):
        hasher.update(data)
    return (time.process_time() - started) / (size / 1e9)


def fig_proxy_stream(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    """A big base layer through a ``blobs = "proxy"`` route against the same client reading the registry.

    Interleaved rounds, medians compared. The gateway's CPU seconds per GB are beside
    what sha256 alone costs here: each byte is read from one socket, hashed (a wrong
    byte from upstream must cut the connection) and written to another, on the same
    two cores as the client and the registry.
    """
    registry: components.Registry = c["registry"]
    layer = make_big_image(registry, work, cfg.big_blob)
    wave = WaveStack(
        work / "proxy", registries=[registry_route(registry, blobs="proxy")], gateway={"access_log": False}
    )
    wave.start()
    ours, direct, cpu, bare, bare_cpu = [], [], [], [], []
    try:
        created = wave.create(f"{registry.host}/bench/big:v1")
        name = created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
        assert wave.process is not None
        pid = wave.process.pid
        reset_peak_rss(pid)
        base_rss = peak_rss_mb(pid)
        with barerelay.running(registry.host, work) as (relay_url, relay_pid):
            for _ in range(cfg.repeats):
                started = cpu_seconds(pid)
                took = time.perf_counter()
                size, digest = stream_get(f"{wave.gateway_url}/v2/{name}/blobs/{layer}")
                ours.append(time.perf_counter() - took)
                cpu.append((cpu_seconds(pid) - started) / (size / 1e9))
                if (size, digest) != (cfg.big_blob, layer):
                    raise RuntimeError(f"the gateway streamed {size} bytes of {digest}, not the blob")
                direct.append(timed(lambda: stream_get(f"{registry.url}/v2/bench/big/blobs/{layer}")))
                # The floor of any Python relay that hashes each byte (bench/barerelay.py).
                started = cpu_seconds(relay_pid)
                bare.append(timed(lambda: stream_get(f"{relay_url}/v2/bench/big/blobs/{layer}")))
                bare_cpu.append((cpu_seconds(relay_pid) - started) / (cfg.big_blob / 1e9))
        rss = peak_rss_mb(pid)
    finally:
        wave.stop()
    mb = cfg.big_blob / 1e6
    figure = f"proxy-mode stream of a {cfg.big_blob >> 20} MiB blob"
    return [
        Row(
            figure,
            "MB/s",
            mb / statistics.median(ours),
            "docker-registry blob GET direct",
            mb / statistics.median(direct),
        ),
        Row(
            figure,
            "MB/s",
            mb / statistics.median(ours),
            "bare Python relay (recv_into, sha256, sendall)",
            mb / statistics.median(bare),
        ),
        Row(
            figure,
            "gateway CPU s per GB",
            statistics.median(cpu),
            "bare Python relay, s per GB",
            statistics.median(bare_cpu),
            False,
        ),
        Row(figure, "gateway peak RSS MB", rss, "gateway RSS before the transfer", base_rss, False),
        Row(
            figure,
            "gateway CPU s per GB",
            statistics.median(cpu),
            "sha256 alone, s per GB",
            sha256_seconds_per_gb(),
            False,
        ),
    ]


def fig_cache_hit(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    """Site cache hits (sendfile from a file:// store) beside nginx serving the same file (bench/cache.py)."""
    registry: components.Registry = c["registry"]
    layer = make_big_image(registry, work, cfg.big_blob)
    blob = cache.BigBlob(registry, "bench/big", "v1", layer, cfg.big_blob)
    rates = cache.measure_hits(blob, work, cfg.wrk_seconds, stream_get)
    figure = f"site cache hit, a {cfg.big_blob >> 20} MiB blob"
    return [
        Row(
            f"{figure}, {count} client{'s' if count > 1 else ''}",
            "MB/s",
            rates.gateway[count],
            "nginx (sendfile on) serving the same file",
            rates.nginx[count],
        )
        for count in sorted(rates.gateway)
    ]


def fig_cache_miss(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    """Site cache first pulls (fetched, streamed, written, verified, published) beside a direct read
    (bench/cache.py)."""
    registry: components.Registry = c["registry"]
    layer = make_big_image(registry, work, cfg.big_blob)
    blob = cache.BigBlob(registry, "bench/big", "v1", layer, cfg.big_blob)
    times = cache.measure_misses(blob, work, cfg.repeats, stream_get)
    ours, direct = times.mb_per_s(cfg.big_blob)
    # The floor of any Python relay that hashes each byte and writes and fsyncs it to a
    # file (bench/barerelay.py), measured right after the misses (not interleaved with them).
    bare = []
    with barerelay.running(registry.host, work, work / "barerelay.bin") as (relay_url, _):
        for _ in range(cfg.repeats):
            bare.append(timed(lambda: stream_get(f"{relay_url}/v2/bench/big/blobs/{layer}")))
    (work / "barerelay.bin").unlink(missing_ok=True)
    figure = f"site cache miss (first pull) of a {cfg.big_blob >> 20} MiB blob"
    return [
        Row(figure, "MB/s", ours, "docker-registry blob GET direct", direct),
        Row(
            figure,
            "MB/s",
            ours,
            "bare Python relay writing the file (recv_into, sha256, write, fsync)",
            cfg.big_blob / 1e6 / statistics.median(bare),
        ),
    ]
