"""A gRPC channel to the AugmentService, shared by the gateway and the CLI (both are its clients)."""

from __future__ import annotations

from pathlib import Path

import grpc

# Metadata a trusted proxy (the gateway's REST API) sends with its client's address;
# the service believes it only from [service].trusted_proxies.
CLIENT_ADDRESS_METADATA = "x-wave-client-address"


def service_channel(
    address: str,
    ca_file: str = "",
    options: list[tuple[str, int]] | None = None,
    *,
    cert_file: str = "",
    key_file: str = "",
) -> grpc.aio.Channel:
    """A channel to the AugmentService: TLS verified against ``ca_file`` when given, else plaintext;
    presenting the client certificate ``cert_file`` (key ``key_file``) when given (mutual TLS)."""
    if ca_file:
        client = (Path(key_file).read_bytes(), Path(cert_file).read_bytes()) if cert_file else (None, None)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(ca_file).read_bytes(), private_key=client[0], certificate_chain=client[1]
        )
        return grpc.aio.secure_channel(address, credentials, options=options)
    return grpc.aio.insecure_channel(address, options=options)
