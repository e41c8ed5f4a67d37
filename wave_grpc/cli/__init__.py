"""The ``wave-grpc`` command: serve, augment, inspect, list, revoke, renew, gc.

One module per command family: ``serve`` (with the internal ``gateway-worker``), ``gc``,
``augment`` (its layers packed and sent by ``layers``), ``tokens`` (inspect, list, revoke, renew);
``client``, ``output`` and ``errors`` are what they share; ``entry`` builds the parser and runs
``main``. The names below stay importable from ``wave_grpc.cli``, as the console script
(``wave_grpc.cli:main``) and the tests import them.
"""

from __future__ import annotations

from wave_grpc.cli.client import DEFAULT_SERVER, explain_rpc_error
from wave_grpc.cli.entry import build_parser, main
from wave_grpc.cli.errors import CliError, RequestFailed
from wave_grpc.cli.layers import pack_layer
from wave_grpc.cli.output import Progress
from wave_grpc.cli.serve import WORKER_COMMAND, worker_parser
from wave_grpc.cli.tokens import token_of

__all__ = [
    "DEFAULT_SERVER",
    "WORKER_COMMAND",
    "CliError",
    "Progress",
    "RequestFailed",
    "build_parser",
    "explain_rpc_error",
    "main",
    "pack_layer",
    "token_of",
    "worker_parser",
]
