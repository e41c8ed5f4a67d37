"""The egress proxy: every upstream exchange through a real forward proxy (tinyproxy, basic auth).

Creation, pulls in proxy mode and a freeze go through it (its log names each request),
HTTPS registries through CONNECT; a wrong proxy password is an error naming the key;
``no_proxy`` bypasses it; the address policy still judges an unlisted registry's target.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests import components
from tests.egressproxy import ForwardProxy, start_forward_proxy
from tests.stack import WaveStack, registry_route
from tests.test_freeze import freeze, freeze_request
from tests.tokenserver import make_pki
from wave_grpc.config import parse_config
from wave_grpc.config.table import ConfigError

pytestmark = pytest.mark.components

PROXY_PASSWORD = "proxy-s3cret-pw"  # noqa: S105 - the test proxy's
ACCEPT = [("Accept", t) for t in components.ALL_MANIFEST_TYPES]


@pytest.fixture(scope="module")
def tls_registry(
    tmp_path_factory: pytest.TempPathFactory, base_images: components.BaseImages
) -> Iterator[tuple[str, Path]]:
    """A registry speaking HTTPS (a private CA) holding busybox: (host, CA file)."""
    root = tmp_path_factory.mktemp("egress-tls")
    pki = make_pki(root / "pki", server_ip="127.0.0.1")
    with components.start_registry(root, tls=(pki.cert, pki.key)) as registry:
        host = registry.host
        components.skopeo_copy(base_images.ref("latest"), f"{host}/library/busybox:latest")
        yield host, pki.cert


@pytest.fixture
def proxy(tmp_path: Path, tls_registry: tuple[str, Path]) -> Iterator[ForwardProxy]:
    port = int(tls_registry[0].rsplit(":", 1)[1])
    with start_forward_proxy(
        tmp_path / "proxy", user="wave", password=PROXY_PASSWORD, connect_ports=(port,)
    ) as started:
        yield started


def _upstream(proxy: ForwardProxy, **extra: object) -> dict[str, object]:
    return {"proxy": proxy.url, "proxy_password_env": "WAVE_TEST_PROXY_PASSWORD", **extra}


def test_creation_pulls_and_a_freeze_go_through_the_proxy(
    tmp_path: Path, registry: components.Registry, base_images: components.BaseImages, proxy: ForwardProxy
) -> None:
    route = registry_route(registry, blobs="proxy", push_repositories=["egress/*"])
    with WaveStack(
        tmp_path / "wave",
        registries=[route],
        upstream=_upstream(proxy),
        env={"WAVE_TEST_PROXY_PASSWORD": PROXY_PASSWORD},
    ).start() as wave:
        created = wave.create(base_images.ref("latest"))
        seen = proxy.log_text()
        assert f"GET {registry.url}/v2/library/busybox/manifests/latest" in seen

        # A pull in proxy mode: the manifest, then every base blob streamed through the proxy.
        name, tag = created.target_image.split("/", 1)[1].rsplit(":", 1)
        manifest = wave.http("GET", f"/v2/{name}/manifests/{tag}", [("Accept", components.OCI_MANIFEST)])
        assert manifest.status == 200, manifest.body[:300]
        base_layer = manifest.json()["layers"][0]["digest"]
        blob = wave.http("GET", f"/v2/{name}/blobs/{base_layer}")
        assert blob.status == 200
        assert f"GET {registry.url}/v2/library/busybox/blobs/{base_layer}" in proxy.log_text()

        # A freeze's pushes too.
        _, status = freeze(wave, freeze_request(base_images.ref("latest"), f"{registry.host}/egress/frozen"))
        assert status.succeeded, status.reason
        pushed = proxy.log_text()
        assert f"PUT {registry.url}/v2/egress/frozen/manifests/" in pushed
        assert f"{registry.url}/v2/egress/frozen/blobs/uploads/" in pushed

        # An unlisted registry whose name resolves to loopback stays refused, though the proxy would reach it.
        with pytest.raises(grpc.RpcError) as caught:
            wave.create(f"localhost:{registry.port}/library/busybox:latest")
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "has no [[registries]] entry" in str(caught.value.details())
        assert "localhost" not in proxy.log_text()
        assert PROXY_PASSWORD not in wave.log_text()


def test_https_through_connect_a_wrong_password_and_no_proxy(
    tmp_path: Path, tls_registry: tuple[str, Path], proxy: ForwardProxy
) -> None:
    host, ca_file = tls_registry
    route = {"name": host, "endpoint": f"https://{host}", "ca_file": str(ca_file)}
    image = f"{host}/library/busybox:latest"
    env = {"WAVE_TEST_PROXY_PASSWORD": PROXY_PASSWORD}
    with WaveStack(tmp_path / "good", registries=[route], upstream=_upstream(proxy), env=env).start() as wave:
        assert wave.create(image).container_token
    assert f"CONNECT {host}" in proxy.log_text()

    wrong = {"WAVE_TEST_PROXY_PASSWORD": "not-the-password"}
    with WaveStack(tmp_path / "wrong", registries=[route], upstream=_upstream(proxy), env=wrong).start() as wave:
        with pytest.raises(grpc.RpcError) as caught:
            wave.create(image)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        details = str(caught.value.details())
        assert f"the egress proxy http://127.0.0.1:{proxy.port} refused our credentials" in details
        assert "[upstream].proxy_password_env WAVE_TEST_PROXY_PASSWORD" in details
        assert "not-the-password" not in details + wave.log_text()

    # The same wrong password, but the registry is reached directly: no_proxy bypasses the proxy.
    before = proxy.log_text().count("CONNECT ")
    with WaveStack(
        tmp_path / "bypass", registries=[route], upstream=_upstream(proxy, no_proxy=["127.0.0.1"]), env=wrong
    ).start() as wave:
        assert wave.create(image).container_token
    assert proxy.log_text().count("CONNECT ") == before


def test_proxy_settings_are_judged_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"\[upstream\]\.proxy: must not hold a password"):
        parse_config({"upstream": {"proxy": "http://u:pw@proxy:3128"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"\[upstream\]\.proxy_password_env: environment variable NOPE_X is not set"):
        parse_config({"upstream": {"proxy": "http://u@proxy:3128", "proxy_password_env": "NOPE_X"}}, "c.toml")
    with pytest.raises(ConfigError, match=r"\[upstream\]\.proxy: 'socks5://proxy:1080' must be an http:// proxy URL"):
        parse_config({"upstream": {"proxy": "socks5://proxy:1080"}}, "c.toml")
    monkeypatch.setenv("HTTPS_PROXY", "http://env-user:env-pw@proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.corp.example, 10.0.0.1")
    proxy = parse_config({"upstream": {"proxy": "env"}}, "c.toml").upstream.egress_proxy
    assert proxy is not None
    assert (proxy.url, proxy.username, proxy.password) == ("http://proxy.corp:3128", "env-user", "env-pw")
    assert "env-pw" not in repr(proxy)
    assert proxy.bypassed_by("localhost")
    assert proxy.bypassed_by("registry.corp.example")
    assert proxy.bypassed_by("10.0.0.1")
    assert not proxy.bypassed_by("docker.io")
    direct = parse_config(
        {"registries": [{"name": "r.example", "proxy": "direct"}], "upstream": {"proxy": "env"}}, "c.toml"
    )
    assert direct.registries[0].proxy == "direct"
