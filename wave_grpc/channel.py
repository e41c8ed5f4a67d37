"""A gRPC channel to the AugmentService, shared by the gateway and the CLI (both are its clients)."""

from __future__ import annotations

from pathlib import Path

import grpc


def service_channel(address: str, ca_file: str = "", options: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
    """A channel to the AugmentService: TLS verified against ``ca_file`` when given, else plaintext."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)
