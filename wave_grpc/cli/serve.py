"""``serve`` (the AugmentService and the gateway in one process) and the internal
``gateway-worker`` command that ``serve`` starts for each process of the gateway pool."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

from wave_grpc.cli.errors import CliError
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.config import default_config_path, load_config
from wave_grpc.serving import loop_factory, run_gateway_worker, run_servers

log = logging.getLogger("wave_grpc")

# The first word of a worker's argv (wave_grpc/serving.py starts `-m wave_grpc.cli gateway-worker`).
WORKER_COMMAND = "gateway-worker"


def cmd_serve(args: argparse.Namespace) -> int:
    path = Path(args.config) if args.config else default_config_path()
    config = load_config(path)
    log.info("config %s", path)
    try:
        with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
            runner.run(run_servers(config, args.only, ready=lambda line: print(line, flush=True)))
    except OSError as exc:
        raise CliError(str(exc)) from None
    return 0


def add_serve_command(sub: Subcommands) -> None:
    serve = sub.add_parser("serve", help="run the AugmentService and the gateway")
    serve.add_argument("--config", help="TOML config (default: the embedded configs/local.toml)")
    serve.add_argument("--only", choices=("service", "gateway"), help="run just one of them")
    serve.set_defaults(func=cmd_serve)


def cmd_gateway_worker(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    with asyncio.Runner(loop_factory=loop_factory(config)) as runner:
        runner.run(run_gateway_worker(config, args.fd))
    return 0


def worker_parser() -> argparse.ArgumentParser:
    """The internal ``gateway-worker`` command: one process of the gateway pool (wave_grpc/serving.py),
    started by ``serve``; kept out of the user-facing parser and its --help."""
    worker = argparse.ArgumentParser(prog="wave-grpc gateway-worker")
    worker.add_argument("--config", required=True)
    worker.add_argument("--fd", type=int, required=True)
    worker.add_argument("-v", "--verbose", action="store_true")
    worker.set_defaults(func=cmd_gateway_worker)
    return worker
