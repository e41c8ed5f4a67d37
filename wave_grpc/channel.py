"""A gRPC channel to the AugmentService, shared by the gateway and the CLI (both are its clients)."""

from __future__ import annotations

from pathlib import Path

import grpc

# Metadata a trusted proxy (the gateway's REST API) sends with its client's address;
# the service believes it only from [service].trusted_proxies.
CLIENT_ADDRESS_METADATA = "x-wave-client-address"


def service_channel(address: str, ca_file: str = "", options: list[tuple[str, int]] | None = None) -> grpc.aio.Channel:
    """A channel to the AugmentService: TLS verified against ``ca_file`` when given, else plaintext."""
    if ca_file:
        credentials = grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)
