"""wave-grpc benchmarks against peers measured in the same run.

    python -m bench.run [--quick] [--out bench/results.md]

Starts its own components on loopback (docker-registry direct and as a
pull-through cache, wave-grpc, redis-server, a bare aiohttp ceiling), drives
them with wrk, skopeo and Python clients, and writes a table: for each figure
the gateway, the peer, and gateway/peer. Nothing here asserts a timing; the
test suite runs ``--quick`` and checks only that every figure was produced.

The figures live by subject: bench/warm.py (warm pulls, the ceilings, the event
loops), bench/streams.py (proxy streams, site cache hits and misses),
bench/creations.py (CreateContainer), and here the token store and memory;
bench/harness.py holds what they share.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import memory
from bench.creations import fig_create, fig_create_concurrent
from bench.harness import (
    Row,
    Settings,
    settings,
    started_components,
)
from bench.streams import fig_cache_hit, fig_cache_miss, fig_proxy_stream
from bench.warm import fig_access_log, fig_event_loop, fig_first_pull, fig_redirect, fig_skopeo, fig_warm_manifest
from wave_grpc.config import GatewayConfig
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb


def fig_token_store(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    from wave_grpc.stores.redis import RedisTokenStore
    from wave_grpc.stores.sqlite import SqliteTokenStore

    record = pb.ContainerRecord(container_image="docker.io/library/busybox:latest", owner="bench")
    record.expiration.FromSeconds(int(time.time()) + 36 * 3600)
    tokens = [f"{i:012d}" for i in range(cfg.tokens)]

    def fill_sqlite(path: Path) -> None:
        db = sqlite3.connect(path)
        SqliteTokenStore(path)  # creates the schema
        rows = []
        for token in tokens:
            record.container_token = token
            rows.append((token, "bench", record.expiration.seconds, record.SerializeToString()))
            if len(rows) == 50_000:
                db.executemany("INSERT INTO containers (token, owner, expires_at, record) VALUES (?,?,?,?)", rows)
                rows.clear()
        db.executemany("INSERT INTO containers (token, owner, expires_at, record) VALUES (?,?,?,?)", rows)
        db.commit()
        db.close()

    async def fill_redis(store: RedisTokenStore) -> None:
        redis = store._redis  # bulk load through the same keys the store uses
        for start in range(0, len(tokens), 10_000):
            async with redis.pipeline(transaction=False) as pipe:
                for token in tokens[start : start + 10_000]:
                    record.container_token = token
                    pipe.set(store._key(token), record.SerializeToString(), ex=36 * 3600)
                await pipe.execute()

    async def lookups(store: Any) -> float:
        sample = random.Random(1).sample(tokens, min(cfg.lookups, len(tokens)))  # noqa: S311
        times = []
        for token in sample:
            start = time.perf_counter()
            found = await store.get(token)
            times.append((time.perf_counter() - start) * 1000)
            assert found is not None
        await store.close()
        return statistics.quantiles(times, n=100)[98]

    sqlite_path = work / "tokens.db"
    fill_sqlite(sqlite_path)
    sqlite_p99 = asyncio.run(lookups(SqliteTokenStore(sqlite_path)))

    async def redis_run() -> float:
        store = RedisTokenStore.from_url(c["redis_url"])
        await fill_redis(store)
        return await lookups(store)

    redis_p99 = asyncio.run(redis_run())
    label = f"token lookup p99 with {cfg.tokens:,} live tokens"
    return [Row(label, "SQLite p99 ms", sqlite_p99, "Redis p99 ms", redis_p99, False)]


def fig_token_memory(c: dict[str, Any], cfg: Settings, work: Path) -> list[Row]:
    """Gateway memory per cached token (bench/memory.py), with every token cached."""
    count = 500 if cfg.quick else 10_000
    run = memory.measure(c["registry"], c["images"].ref("latest"), work / "memory", count)
    figure = f"gateway memory, {count:,} live tokens pulled once each"
    per_10k = "MiB per 10,000 cached tokens" + ("" if count == 10_000 else f" (extrapolated from {count:,})")
    defaults = (
        f"resolver cache with its defaults ({GatewayConfig.rewrite_cache_size:,} entries, "
        f"{GatewayConfig.content_cache_bytes >> 20} MiB at its accounting)"
    )
    return [
        Row(
            figure,
            "KiB per cached token",
            run.per_token_kib,
            "resolver's accounting per entry KiB",
            run.entry_bytes / 1024,
            False,
        ),
        Row(
            figure, per_10k, run.per_token_kib * 10_000 / 1024, "RSS MiB before the pulls", run.before_kib / 1024, False
        ),
        Row(
            figure,
            "serving process RSS MiB after the pulls",
            run.after_kib / 1024,
            "RSS MiB before the pulls",
            run.before_kib / 1024,
            False,
        ),
        Row(figure, "tokens still cached after the pulls", run.kept, "tokens pulled", count),
        Row(defaults, "tokens kept of 10,000 live (computed)", run.default_kept(10_000), "live tokens", 10_000),
    ]


FIGURES = [
    fig_warm_manifest,
    fig_access_log,
    fig_event_loop,
    fig_first_pull,
    fig_redirect,
    fig_skopeo,
    fig_proxy_stream,
    fig_cache_hit,
    fig_cache_miss,
    fig_create,
    fig_create_concurrent,
    fig_token_store,
    fig_token_memory,
]


def render(rows: list[Row], command: str, cfg: Settings, seconds: float) -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}; run took {seconds:.0f} s  ",
        f"Mode: {'quick' if cfg.quick else 'full'}; wrk -t1 -c64 -d{cfg.wrk_seconds}s",
        "",
        "| figure | metric | wave-grpc | peer | peer value | wave-grpc / peer |",
        "|---|---|---:|---|---:|---:|",
    ]
    for row in rows:
        ratio = "n/a" if row.ratio is None else f"{row.ratio:.2f}"
        peer = "n/a" if row.peer is None else f"{row.peer:,.2f}"
        peer_name = row.peer_name.replace("|", "\\|")  # a pipe inside a cell ends the cell
        lines.append(f"| {row.figure} | {row.metric} | {row.ours:,.2f} | {peer_name} | {peer} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and short runs (CI)")
    parser.add_argument("--out", type=Path, help="write the table here as well")
    parser.add_argument("--only", help="comma-separated figure function names")
    parser.add_argument("--blob-mib", type=int, help="size of the streamed blob (default 1024, quick 32)")
    args = parser.parse_args(argv)
    cfg = settings(args.quick)
    if args.blob_mib:
        cfg.big_blob = args.blob_mib << 20
    command = "python -m bench.run" + (" --quick" if args.quick else "")
    started = time.perf_counter()
    rows: list[Row] = []
    work = Path(tempfile.mkdtemp(prefix="wave-bench-"))
    try:
        with started_components(work, cfg) as c:
            for figure in FIGURES:
                if args.only and figure.__name__ not in args.only.split(","):
                    continue
                print(f"running {figure.__name__} ...", file=sys.stderr, flush=True)
                produced = figure(c, cfg, work)
                for row in produced:
                    print(f"  {row}", file=sys.stderr, flush=True)
                rows.extend(produced)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(rows, command, cfg, time.perf_counter() - started)
    print(table)
    if args.out:
        args.out.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
