"""Mutual TLS on the gRPC hop: the service asks for client certificates; the gateway presents its own."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

pytestmark = pytest.mark.components

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


class Ca:
    """A test CA that signs a server certificate and client certificates, each written as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wave-grpc test CA")])
        cert = self._builder(self.name, self.key.public_key()).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        self.cert = directory / "ca.pem"
        self.cert.write_bytes(cert.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    def issue(self, common_name: str, *, server: bool = False) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key.public_key())
        if server:
            names = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert_path, key_path = self.directory / f"{common_name}.pem", self.directory / f"{common_name}-key.pem"
        cert_path.write_bytes(builder.sign(self.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        return cert_path, key_path


def test_mutual_tls(tmp_path: Path, registry: components.Registry, base_images: components.BaseImages) -> None:
    ca = Ca(tmp_path / "pki")
    server_cert, server_key = ca.issue("wave-service", server=True)
    gateway_cert, gateway_key = ca.issue("wave-gateway")
    client_cert, client_key = ca.issue("pipeline-runner")
    with WaveStack(
        tmp_path / "mtls",
        registries=[registry_route(registry)],
        service={
            "tls_cert": str(server_cert),
            "tls_key": str(server_key),
            "tls_client_ca": str(ca.cert),
            "gateway_subject": "wave-gateway",
        },
        gateway={
            "service_tls_ca": str(ca.cert),
            "service_tls_cert": str(gateway_cert),
            "service_tls_key": str(gateway_key),
        },
    ).start() as wave:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=ca.cert.read_bytes(),
            private_key=client_key.read_bytes(),
            certificate_chain=client_cert.read_bytes(),
        )
        with grpc.secure_channel(wave.grpc_address, credentials) as channel:
            created = pb_grpc.AugmentServiceStub(channel).CreateContainer(
                pb.CreateContainerRequest(container_image=base_images.ref("latest")), timeout=60
            )
        # The gateway reaches the service with its own certificate: pulls work.
        name, tag = created.target_image.split("/", 1)[1].rsplit(":", 1)
        assert wave.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT).status == 200

        cli = [sys.executable, "-m", "wave_grpc.cli", "augment", base_images.ref("latest")]
        cli += ["--server", wave.grpc_address, "--tls-ca", str(ca.cert)]
        refused = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
        assert refused.returncode == 1
        assert "closed the TLS connection" in refused.stderr, refused.stderr
        assert "pass --tls-cert and --tls-key" in refused.stderr
        ok = subprocess.run(
            [*cli, "--tls-cert", str(client_cert), "--tls-key", str(client_key)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(f"{wave.gateway_host}/wt/")
