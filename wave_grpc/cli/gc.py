"""``gc``: garbage-collect the layer store now, as the service does every ``gc_interval``."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from wave_grpc.cli.errors import RequestFailed
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.config import default_config_path, load_config
from wave_grpc.errors import WaveError
from wave_grpc.registry.client import RegistryClient
from wave_grpc.stores.gc import collect_layers, evict_cache
from wave_grpc.stores.layers import Collection
from wave_grpc.stores.open import open_layer_store, open_site_cache, open_token_store


async def _gc(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config) if args.config else default_config_path())
    upstream = RegistryClient(config)
    await upstream.start()
    tokens = open_token_store(config.service.store)
    evicted: Collection | None = None
    try:
        layers = open_layer_store(config, upstream)
        collected = await collect_layers(tokens, layers, config.layers.gc_grace.total_seconds(), dry_run=args.dry_run)
        site = open_site_cache(config, upstream)
        if site is not None:
            evicted = await evict_cache(tokens, config, site, dry_run=args.dry_run)
    except WaveError as exc:
        raise RequestFailed(exc.message, exc.kind.oci_code) from None
    finally:
        await tokens.close()
        await upstream.close()
    if collected is None:
        raise RequestFailed("another garbage collection is running (a service replica or `wave-grpc gc`); try later")
    if args.output == "json":
        removed = [{"digest": str(digest), "size": size} for digest, size in collected.removed]
        result = {"dryRun": args.dry_run, "removed": removed, "freed": collected.freed, "kept": collected.kept}
        print(json.dumps(result, indent=2))
        return 0
    verb = "would remove" if args.dry_run else "removed"
    for digest, size in collected.removed:
        print(f"{verb} {digest} ({size} bytes)")
    total = "would free" if args.dry_run else "freed"
    print(f"{verb} {len(collected.removed)} layer(s), {total} {collected.freed} bytes; kept {collected.kept}")
    if evicted is not None:
        for digest, size in evicted.removed:
            print(f"{verb} {digest} ({size} bytes) from the site cache")
        print(f"site cache: {verb} {len(evicted.removed)} blob(s), {total} {evicted.freed} bytes; kept {evicted.kept}")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    return asyncio.run(_gc(args))


def add_gc_command(sub: Subcommands) -> None:
    gc = sub.add_parser("gc", help="garbage-collect the layer store now (as the service does every gc_interval)")
    gc.add_argument("--config", help="the service's TOML config (default: the embedded configs/local.toml, as serve)")
    gc.add_argument("--dry-run", action="store_true", help="print what would be removed; remove nothing")
    gc.add_argument("-o", "--output", choices=("text", "json"), default="text")
    gc.set_defaults(func=cmd_gc)
