"""TLS on the gRPC hop: the service speaks TLS only, the gateway and the CLI verify it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from tests import components
from tests.stack import WaveStack, registry_route
from tests.tokenserver import make_pki
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.proto.wave.augment.v1 import augment_pb2_grpc as pb_grpc

pytestmark = pytest.mark.components

ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


def test_service_over_tls(tmp_path: Path, registry: components.Registry, base_images: components.BaseImages) -> None:
    pki = make_pki(tmp_path / "pki", server_ip="127.0.0.1")
    with WaveStack(
        tmp_path / "tls",
        registries=[registry_route(registry)],
        service={"tls_cert": str(pki.cert), "tls_key": str(pki.key)},
        gateway={"service_tls_ca": str(pki.cert)},
    ).start() as wave:
        credentials = grpc.ssl_channel_credentials(root_certificates=pki.cert.read_bytes())
        with grpc.secure_channel(wave.grpc_address, credentials) as channel:
            created = pb_grpc.AugmentServiceStub(channel).CreateContainer(
                pb.CreateContainerRequest(container_image=base_images.ref("latest")), timeout=60
            )
        # The gateway looks the token up over the verified TLS channel.
        name, tag = created.target_image.split("/", 1)[1].rsplit(":", 1)
        assert wave.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT).status == 200

        # A plaintext client gets nowhere.
        with pytest.raises(grpc.RpcError) as caught, wave.stub() as stub:
            stub.CreateContainer(pb.CreateContainerRequest(container_image=base_images.ref("latest")), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE

        cli = [
            sys.executable,
            "-m",
            "wave_grpc.cli",
            "augment",
            base_images.ref("latest"),
            "--server",
            wave.grpc_address,
        ]
        ok = subprocess.run([*cli, "--tls-ca", str(pki.cert)], capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stderr
        assert ok.stdout.startswith(f"{wave.gateway_host}/wt/")
        missing = subprocess.run(
            [*cli, "--tls-ca", str(tmp_path / "nope.pem")], capture_output=True, text=True, timeout=60, check=False
        )
        assert missing.returncode == 2
        assert "--tls-ca" in missing.stderr
        # A plaintext client against the TLS service, and a CA file that is not the service's:
        # failed requests (1), each with the hint about --tls-ca.
        plaintext = subprocess.run(cli, capture_output=True, text=True, timeout=60, check=False)
        assert plaintext.returncode == 1
        assert "--tls-ca" in plaintext.stderr
        other = make_pki(tmp_path / "other-pki", server_ip="127.0.0.1")
        wrong = subprocess.run(
            [*cli, "--tls-ca", str(other.cert)], capture_output=True, text=True, timeout=60, check=False
        )
        assert wrong.returncode == 1
        assert "--tls-ca" in wrong.stderr


def test_private_ca_registry(tmp_path: Path, registry: components.Registry, base_images: components.BaseImages) -> None:
    """A source registry with a certificate from a private CA: refused with a hint, then trusted via ca_file."""
    pki = make_pki(tmp_path / "pki", server_ip="127.0.0.1")
    with components.start_registry(tmp_path, tls=(pki.cert, pki.key)) as tls_registry:
        host = tls_registry.host
        components.skopeo_copy(base_images.ref("latest"), f"{host}/library/busybox:latest")
        image = f"{host}/library/busybox:latest"
        route = {"name": host, "endpoint": f"https://{host}"}
        with WaveStack(tmp_path / "untrusted", registries=[route]).start() as wave:
            with pytest.raises(grpc.RpcError) as caught:
                wave.create(image)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            details = str(caught.value.details())
            assert "TLS certificate" in details
            assert "ca_file" in details
        with WaveStack(tmp_path / "trusted", registries=[{**route, "ca_file": str(pki.cert)}]).start() as wave:
            created = wave.create(image)
            name, tag = created.target_image.split("/", 1)[1].rsplit(":", 1)
            assert wave.http("GET", f"/v2/{name}/manifests/{tag}", ACCEPT).status == 200
        with WaveStack(tmp_path / "unverified", registries=[{**route, "tls_verify": False}]).start() as wave:
            assert wave.create(image).container_token
