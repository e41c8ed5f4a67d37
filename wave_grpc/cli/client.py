"""What every client command shares: its options, the caller's credentials, the stub, and
gRPC failures explained as what to change."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeAlias

import grpc

from wave_grpc.channel import service_channel
from wave_grpc.cli.errors import CliError, RequestFailed
from wave_grpc.cli.subcommands import Subcommands
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

DEFAULT_SERVER = "127.0.0.1:50051"

CallerMetadata: TypeAlias = tuple[tuple[str, str], ...]


def server_address(value: str) -> str:
    """``--server``: host:port; an ``http://`` URL is taken for its host:port, an ``https://`` one refused
    (TLS is --tls-ca's to say, and the CLI would otherwise talk plaintext to a TLS port)."""
    address = value.strip()
    if address.lower().startswith("https://"):
        bare = address[len("https://") :].split("/", 1)[0]
        raise argparse.ArgumentTypeError(
            f"{value} is a URL: --server takes the AugmentService's host:port; for TLS use --tls-ca CA.pem, "
            f"e.g. --server {bare} --tls-ca CA.pem"
        )
    if address.lower().startswith("http://"):
        address = address[len("http://") :].split("/", 1)[0]
    return address


def add_client_command(sub: Subcommands, name: str, help_text: str) -> argparse.ArgumentParser:
    """A subcommand that talks to the AugmentService, with the options every such command takes."""
    parser = sub.add_parser(name, help=help_text)
    parser.add_argument(
        "--server",
        default=os.environ.get("WAVE_GRPC_SERVER", DEFAULT_SERVER),
        type=server_address,
        help=f"AugmentService address host:port (default {DEFAULT_SERVER}; env WAVE_GRPC_SERVER); "
        "an http:// prefix is dropped; for TLS use --tls-ca",
    )
    parser.add_argument("--tls-ca", help="PEM CA bundle: reach the service over TLS (env WAVE_GRPC_TLS_CA)")
    parser.add_argument(
        "--tls-cert", help="PEM client certificate for mutual TLS, with --tls-key (env WAVE_GRPC_TLS_CERT)"
    )
    parser.add_argument("--tls-key", help="PEM key of --tls-cert (env WAVE_GRPC_TLS_KEY)")
    parser.add_argument("--token", help="caller token sent as 'authorization: Bearer' (env WAVE_GRPC_TOKEN)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    return parser


def caller_metadata(args: argparse.Namespace) -> CallerMetadata:
    token = args.token or os.environ.get("WAVE_GRPC_TOKEN", "")
    return (("authorization", f"Bearer {token}"),) if token else ()


def tls_ca_of(args: argparse.Namespace) -> str:
    tls_ca: str = args.tls_ca or os.environ.get("WAVE_GRPC_TLS_CA", "")
    if tls_ca and not Path(tls_ca).is_file():
        raise CliError(f"--tls-ca {tls_ca}: no such file")
    return tls_ca


def client_certificate_of(args: argparse.Namespace) -> tuple[str, str]:
    """(certificate, key) for mutual TLS, or ("", ""): both or neither, each an existing file."""
    cert: str = getattr(args, "tls_cert", None) or os.environ.get("WAVE_GRPC_TLS_CERT", "")
    key: str = getattr(args, "tls_key", None) or os.environ.get("WAVE_GRPC_TLS_KEY", "")
    if bool(cert) != bool(key):
        raise CliError("give both --tls-cert and --tls-key (env WAVE_GRPC_TLS_CERT, WAVE_GRPC_TLS_KEY), or neither")
    for option, path in (("--tls-cert", cert), ("--tls-key", key)):
        if path and not Path(path).is_file():
            raise CliError(f"{option} {path}: no such file")
    if cert and not tls_ca_of(args):
        raise CliError("--tls-cert needs --tls-ca (the CA that signed the service's certificate)")
    return cert, key


@contextlib.asynccontextmanager
async def service_stub(args: argparse.Namespace) -> AsyncIterator[pb_grpc.AugmentServiceAsyncStub]:
    options = [("grpc.max_send_message_length", 128 << 20), ("grpc.max_receive_message_length", 128 << 20)]
    cert, key = client_certificate_of(args)
    async with service_channel(args.server, tls_ca_of(args), options, cert_file=cert, key_file=key) as channel:
        try:
            yield pb_grpc.AugmentServiceStub(channel)
        except grpc.aio.AioRpcError as exc:
            raise explain_rpc_error(exc, args.server, bool(tls_ca_of(args)), bool(cert)) from None


def explain_rpc_error(
    exc: grpc.aio.AioRpcError, server: str, tls: bool = False, client_cert: bool = False
) -> RequestFailed:
    """A gRPC failure as one line that says what to change."""
    code, details = exc.code(), exc.details() or ""
    lowered = f"{details} {exc.debug_error_string()}".lower()
    if "http1.x server" in lowered or "http/1" in lowered:
        return RequestFailed(
            f"{server} answered with HTTP/1 (is it the gateway's port?); --server takes the AugmentService's "
            f"address, [service].listen ({DEFAULT_SERVER} by default)",
            code.name,
        )
    tls_hint = (
        "check that --tls-ca is the CA that signed the service's [service].tls_cert, or omit --tls-ca if the "
        "service does not speak TLS"
        if tls
        else "if the service speaks TLS ([service].tls_cert is set), pass --tls-ca CA.pem"
    )
    if tls:
        tls_hint += (
            "; if it asks for client certificates ([service].tls_client_ca), check that that CA signed --tls-cert"
            if client_cert
            else "; if it asks for client certificates ([service].tls_client_ca is set), pass --tls-cert and --tls-key"
        )
    if any(word in lowered for word in ("ssl", "tls", "handshake", "certificate")):
        return RequestFailed(f"TLS with the AugmentService at {server} failed ({details}); {tls_hint}", code.name)
    if code == grpc.StatusCode.UNAVAILABLE and "socket closed" in lowered:
        # The port took the connection and dropped it: another protocol than the one we spoke.
        connection = "TLS connection" if tls else "connection"
        return RequestFailed(f"the AugmentService at {server} closed the {connection}; {tls_hint}", code.name)
    if code == grpc.StatusCode.UNAVAILABLE and ("failed to connect" in lowered or "connection refused" in lowered):
        return RequestFailed(
            f"cannot reach the AugmentService at {server} ({details}); check --server (env WAVE_GRPC_SERVER) "
            "and that `wave-grpc serve` is running",
            code.name,
        )
    return RequestFailed(f"{code.name}: {details}", code.name)
