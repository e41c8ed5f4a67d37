"""The ``wave-grpc`` command line: the parser each command family adds its subcommand to,
and ``main``, which runs one command and turns its failure into an exit code."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from wave_grpc import __version__
from wave_grpc.cli.augment import add_augment_command
from wave_grpc.cli.errors import CliError, RequestFailed
from wave_grpc.cli.gc import add_gc_command
from wave_grpc.cli.logs import configure_logging
from wave_grpc.cli.output import report_failure
from wave_grpc.cli.serve import WORKER_COMMAND, add_serve_command, worker_parser
from wave_grpc.cli.status import add_status_command
from wave_grpc.cli.tokens import add_inspect_command, add_list_command, add_renew_command, add_revoke_command
from wave_grpc.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wave-grpc", description="Extend container images without rebuilding them.")
    parser.add_argument("--version", action="version", version=f"wave-grpc {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{serve,augment,status,inspect,list,revoke,renew,gc}", title="commands"
    )
    # In the order --help lists them.
    add_serve_command(sub)
    add_augment_command(sub)
    add_status_command(sub)
    add_inspect_command(sub)
    add_revoke_command(sub)
    add_renew_command(sub)
    add_gc_command(sub)
    add_list_command(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    internal = words[:1] == [WORKER_COMMAND]
    args = worker_parser().parse_args(words[1:]) if internal else build_parser().parse_args(words)
    configure_logging(args.verbose)
    as_json = getattr(args, "output", "text") == "json"
    try:
        return int(args.func(args))
    except (CliError, ConfigError) as exc:
        return report_failure(str(exc), "USAGE", 2, as_json)
    except RequestFailed as exc:
        return report_failure(str(exc), exc.code, 1, as_json)
    except KeyboardInterrupt:
        print("wave-grpc: interrupted", file=sys.stderr)
        return 130
