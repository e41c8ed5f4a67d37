"""Hostile inputs against the real service: SSRF, echoes, control characters, malformed
protobuf, and tokens kept out of logs.

The SSRF test runs a loopback listener that counts connections: for every spelling
of loopback that no ``[[registries]]`` entry lists, the service must answer
PERMISSION_DENIED naming the entry to add, and the listener must see no connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests import components
from tests.stack import WaveStack, registry_route
from wave_grpc.addresses import ip_literal, plain_host_name, public_unicast
from wave_grpc.config import parse_config
from wave_grpc.errors import WaveError, brief
from wave_grpc.image.digest import Digest
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb
from wave_grpc.redaction import redact_path, token_id
from wave_grpc.registry.policy import Listeners, PolicyConnector


@pytest.fixture(scope="module")
def listener() -> Iterator[components.LoopbackListener]:
    counting = components.LoopbackListener()
    yield counting
    counting.close()


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, registry: components.Registry, base_images: components.BaseImages
) -> Iterator[WaveStack]:
    # The default policy: anonymous callers, unlisted registries over https. Only the
    # test registry is listed.
    with WaveStack(tmp_path_factory.mktemp("hostile"), registries=[registry_route(registry)], verbose=True) as wave:
        yield wave.start()


def _create_error(stack: WaveStack, image: str, **kwargs: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        stack.create(image, **kwargs)
    error: Any = caught.value
    return error.code(), error.details()


def test_unlisted_internal_registries_are_never_contacted(
    stack: WaveStack, listener: components.LoopbackListener
) -> None:
    port = listener.port
    spellings = [
        f"127.0.0.1:{port}",
        f"localhost:{port}",
        f"127.1:{port}",
        f"0x7f.0.0.1:{port}",
        f"2130706433:{port}",
        f"[::1]:{port}",
        f"[::ffff:7f00:1]:{port}",
        f"0.0.0.0:{port}",
        f"169.254.169.254:{port}",
        f"10.1.2.3:{port}",  # private: refused before any packet leaves
        # The deployment's own gRPC port, as a "registry".
        stack.grpc_address,
    ]
    for host in spellings:
        code, details = _create_error(stack, f"{host}/library/busybox:latest")
        assert code == grpc.StatusCode.PERMISSION_DENIED, (host, details)
        assert f"add a [[registries]] entry with name = {host!r}" in details, details
    assert listener.connections == 0


def test_a_listed_registry_may_be_on_loopback(stack: WaveStack, registry: components.Registry) -> None:
    created = stack.create(f"{registry.host}/library/busybox:latest")
    assert created.container_token


def test_echoed_values_are_truncated(stack: WaveStack) -> None:
    huge = "A" * 20000
    code, details = _create_error(stack, f"docker.io/library/busybox:{huge}")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) < 600
    code, details = _create_error(stack, "docker.io/library/busybox:latest", container_platform=huge)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details) < 600


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (pb.ContainerConfig(env=["FOO=a\x00b"]), "container_config.env[0]"),
        (pb.ContainerConfig(env=["FOO=bar", "X=\x1b[31mred"]), "container_config.env[1]"),
        (pb.ContainerConfig(entrypoint=["/bin/sh", "-c\n"]), "container_config.entrypoint[1]"),
        (pb.ContainerConfig(cmd=["echo\x7f"]), "container_config.cmd[0]"),
        (pb.ContainerConfig(working_dir="/work\x00dir"), "container_config.working_dir"),
    ],
)
def test_control_characters_in_the_config_are_refused(
    stack: WaveStack, registry: components.Registry, config: pb.ContainerConfig, field: str
) -> None:
    code, details = _create_error(stack, f"{registry.host}/library/busybox:latest", container_config=config)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: holds the control character"), details


def test_malformed_protobuf_is_invalid_argument(stack: WaveStack) -> None:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        raw = channel.unary_unary(
            "/wave.augment.v1.AugmentService/CreateContainer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)  # a length-delimited field longer than the message
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf" in error.details()


def test_tokens_never_reach_the_logs(stack: WaveStack, registry: components.Registry) -> None:
    created = stack.create(f"{registry.host}/library/busybox:latest")
    token = created.container_token
    name = "/v2/" + created.target_image.split("/", 1)[1].rsplit(":", 1)[0]
    assert stack.http("GET", f"{name}/manifests/latest").status == 200
    assert stack.http("GET", f"{name}/blobs/sha256:{'0' * 64}").status == 404
    # An unknown token and a live token under another path answer alike.
    other = stack.http("GET", f"/v2/wt/{token}/library/other/manifests/latest")
    unknown = stack.http("GET", "/v2/wt/aaaaaaaaaaaa/library/busybox/manifests/latest")
    assert (other.status, other.body) == (unknown.status, unknown.body)
    log = stack.log_text()
    assert token not in log
    assert token_id(token) in log


def test_redaction_helpers() -> None:
    assert redact_path("/v2/wt/abcdefghijkl/library/busybox/manifests/latest") == (
        f"/v2/wt/{token_id('abcdefghijkl')}/library/busybox/manifests/latest"
    )
    assert "abcdefghijkl" not in redact_path("/container-token/abcdefghijkl")


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("::1", False),
        ("fe80::1", False),
        ("fd00::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:169.254.169.254", False),
        ("8.8.8.8", True),
        ("2606:4700::1111", True),
    ],
)
def test_public_unicast(address: str, public: bool) -> None:
    literal = ip_literal(address)
    assert literal is not None
    assert public_unicast(literal) is public


@pytest.mark.parametrize(
    "host", ["127.1", "0x7f.0.0.1", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]", "0x7f000001"]
)
def test_every_spelling_of_an_address_is_an_address(host: str) -> None:
    literal = ip_literal(host)
    assert literal is not None
    assert not public_unicast(literal)
    assert not plain_host_name(host)


async def test_the_connector_judges_resolved_addresses() -> None:
    listeners = Listeners(["127.0.0.1:50051", "0.0.0.0:9090"])
    public = PolicyConnector(public_only=True, listeners=listeners)
    trusted = PolicyConnector(public_only=False, listeners=listeners)
    try:
        assert not public.allowed("127.0.0.1", 5000)
        assert public.allowed("8.8.8.8", 443)
        assert trusted.allowed("127.0.0.1", 5000)
        assert not trusted.allowed("127.0.0.1", 50051)  # our own service
        assert not trusted.allowed("127.0.0.1", 9090)  # our own gateway, bound to every address
    finally:
        await public.close()
        await trusted.close()


def test_layer_hosts_name_hosts_only(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"layer_hosts\[0\].*host names only"):
        parse_config({"upstream": {"layer_hosts": ["127.0.0.1:8000"]}}, str(tmp_path / "c.toml"))


# -- property-based tests of the parsers (CI-sized budget) ---------------------

_BUDGET = settings(max_examples=200, deadline=None)
_T = TypeVar("_T")


def _parse(parse: Callable[[str], _T], text: str) -> tuple[_T | None, WaveError | None]:
    try:
        return parse(text), None
    except WaveError as exc:
        return None, exc


@_BUDGET
@given(st.text(max_size=300))
def test_image_references_parse_or_refuse_cleanly(text: str) -> None:
    ref, error = _parse(ImageRef.parse, text)
    if error is not None:
        assert error.message.startswith("container_image: ")
        assert len(error.message) < 600
        return
    assert ref is not None
    again = ImageRef.parse(str(ref))
    assert again == ref


@_BUDGET
@given(st.text(max_size=200))
def test_digests_parse_or_refuse_cleanly(text: str) -> None:
    digest, error = _parse(Digest.parse, text)
    if error is not None:
        assert len(error.message) < 400
        return
    assert digest is not None
    assert Digest.parse(str(digest)) == digest


@_BUDGET
@given(st.text(max_size=100))
def test_platforms_parse_or_refuse_cleanly(text: str) -> None:
    platform, error = _parse(Platform.parse, text)
    if error is not None:
        assert error.message.startswith("container_platform: ")
        assert len(error.message) < 600
        return
    assert platform is not None
    assert Platform.parse(str(platform)) == platform


@_BUDGET
@given(st.text(max_size=200))
def test_brief_is_bounded(text: str) -> None:
    assert len(brief(text)) <= 80 * 4 + 40  # repr may escape each character


def test_rest_bodies_are_bounded_before_they_are_read(stack: WaveStack) -> None:
    # A declared length over [gateway].max_body_size is refused without waiting for the body.
    answer = components.raw_exchange(
        stack.http_port,
        b"POST /v1alpha2/container HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1073741824\r\n\r\n{",
    )
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "[gateway].max_body_size" in answer


def test_deeply_nested_json_is_a_bad_request(stack: WaveStack) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    answer = components.http_request(
        "POST",
        f"{stack.gateway_url}/v1alpha2/container",
        headers=[("Content-Type", "application/json")],
        body=body,
    )
    assert answer.status == 400
    assert "nested too deeply" in answer.json()["message"]


def test_a_malformed_first_upload_message_is_invalid_argument(stack: WaveStack) -> None:
    with grpc.insecure_channel(stack.grpc_address) as channel:
        raw = channel.stream_unary(
            "/wave.augment.v1.AugmentService/UploadLayer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(iter([b"\x0a\xff\xff\xff\xff\x0f"]), timeout=10)
    error: Any = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("chunk: the request is not a valid wave.augment.v1.UploadLayerRequest")


def test_a_body_of_tiny_json_objects_is_refused_without_inflating(stack: WaveStack) -> None:
    assert stack.process is not None
    before = components.vm_hwm_kib(stack.process.pid) / 1024
    body = b'{"containerImage":"busybox","junk":[' + b"{}," * (5 << 20) + b"{}]}"  # about 15 MiB
    for _ in range(3):
        answer = components.http_request(
            "POST", f"{stack.gateway_url}/v1alpha2/container", headers=[("Content-Type", "application/json")], body=body
        )
        assert answer.status == 400
        assert "JSON objects and arrays" in answer.json()["message"]
    grown = components.vm_hwm_kib(stack.process.pid) / 1024 - before
    print(f"gateway peak RSS grew {grown:.1f} MiB for three 15 MiB bodies of tiny objects")
    assert grown < 256
