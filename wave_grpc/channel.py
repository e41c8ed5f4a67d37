"""A gRPC channel to the AugmentService, shared by the gateway and the CLI (both are its clients)."""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from pathlib import Path

import grpc

# Metadata the gateway sends with its REST client's address; the service believes it only
# from a caller that proves it is the gateway (GATEWAY_PROOF_METADATA), never by peer address alone.
CLIENT_ADDRESS_METADATA = "x-wave-client-address"
# The gateway's proof: the shared secret ([service].gateway_secret_env), compared in constant time.
GATEWAY_PROOF_METADATA = "x-wave-gateway-secret"

Metadata = tuple[tuple[str, str], ...]


def gateway_proof(secret: str) -> Metadata:
    """The metadata that proves a call comes from the gateway (none without a secret)."""
    return ((GATEWAY_PROOF_METADATA, secret),) if secret else ()


def proves_gateway(metadata: Iterable[tuple[str, str | bytes]] | None, secret: str) -> bool:
    """Does ``metadata`` carry ``secret``? Constant time, so a caller learns nothing from timing."""
    if not secret:
        return False
    for key, value in metadata or ():
        if key == GATEWAY_PROOF_METADATA and isinstance(value, str):
            return hmac.compare_digest(value.encode(), secret.encode())
    return False


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
