"""Immutable values: references, platforms, digests, layers, config."""

from __future__ import annotations

import base64
import gzip
import io
import tarfile
from pathlib import Path

import pytest

from wave_grpc.config import ConfigError, load_config, parse_config
from wave_grpc.errors import WaveError
from wave_grpc.image.digest import Digest
from wave_grpc.image.layers import LayerDigester, LayerFormatError, decode_data_location, digest_layer, pack_directory
from wave_grpc.image.platform import Platform
from wave_grpc.image.ref import ImageRef


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),
        ("user/tool:1.0", "docker.io/user/tool:1.0"),
        ("index.docker.io/library/ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("quay.io/biocontainers/samtools:1.17--h00cdaf9_0", "quay.io/biocontainers/samtools:1.17--h00cdaf9_0"),
        ("localhost/app", "localhost/app:latest"),
        ("127.0.0.1:5000/library/busybox:latest", "127.0.0.1:5000/library/busybox:latest"),
        ("alpine@sha256:" + "a" * 64, "docker.io/library/alpine@sha256:" + "a" * 64),
        ("alpine:3.19@sha256:" + "a" * 64, "docker.io/library/alpine:3.19@sha256:" + "a" * 64),
    ],
)
def test_image_ref_normalises(text: str, expected: str) -> None:
    assert str(ImageRef.parse(text)) == expected


def test_digest_wins() -> None:
    ref = ImageRef.parse("alpine:3.19@sha256:" + "a" * 64)
    assert ref.reference == "sha256:" + "a" * 64


@pytest.mark.parametrize("text", ["", "UPPER/case", "a//b", "alpine:bad tag", "alpine@sha256:zz", "http://x/y"])
def test_bad_refs_name_the_field(text: str) -> None:
    with pytest.raises(WaveError, match=r"^container_image: "):
        ImageRef.parse(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "linux/amd64"),
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64"),
        ("arm64/v8", "linux/arm64"),
        ("linux/arm64/v8", "linux/arm64"),
        ("arm/v7", "linux/arm/v7"),
        ("linux/amd64", "linux/amd64"),
    ],
)
def test_platform_aliases(text: str, expected: str) -> None:
    assert str(Platform.parse(text)) == expected


def test_platform_matching() -> None:
    arm64 = Platform.parse("arm64")
    assert arm64.matches({"os": "linux", "architecture": "arm64", "variant": "v8"})
    assert arm64.matches({"os": "linux", "architecture": "arm64"})
    assert not arm64.matches({"os": "linux", "architecture": "amd64"})
    assert not Platform.parse("arm/v7").matches({"os": "linux", "architecture": "arm", "variant": "v6"})
    with pytest.raises(WaveError, match="container_platform"):
        Platform.parse("linux/sparc")


def test_digest_validation() -> None:
    assert str(Digest.parse("sha256:" + "0" * 64)) == "sha256:" + "0" * 64
    for bad in ("sha256:abc", "md5:" + "0" * 32, "nocolon", "sha256:" + "G" * 64):
        with pytest.raises(WaveError):
            Digest.parse(bad)


def _tar_gz(files: dict[str, bytes]) -> tuple[bytes, bytes]:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue(), gzip.compress(raw.getvalue(), mtime=0)


def test_layer_digests_and_multi_member() -> None:
    tar, gz = _tar_gz({"a": b"x" * 5000})
    digests = digest_layer(gz)
    assert digests.tar_digest == Digest.of(tar)
    assert digests.gzip_digest == Digest.of(gz)
    assert digests.gzip_size == len(gz)
    # Two gzip members inflate to their concatenation, as gzip -d does.
    half = len(tar) // 2
    two = gzip.compress(tar[:half], mtime=0) + gzip.compress(tar[half:], mtime=0)
    assert digest_layer(two).tar_digest == Digest.of(tar)


def test_truncated_and_garbage_layers() -> None:
    _, gz = _tar_gz({"a": b"y" * 100000})
    digester = LayerDigester()
    digester.update(gz[:-20])
    with pytest.raises(LayerFormatError, match="truncated"):
        digester.finish()
    with pytest.raises(LayerFormatError, match="not a gzip"):
        digest_layer(b"definitely not gzip")


def test_zip_bomb_is_hashed_in_bounded_steps() -> None:
    bomb = gzip.compress(b"\0" * (64 << 20), mtime=0)
    assert len(bomb) < 200_000
    assert digest_layer(bomb).tar_digest == Digest.of(b"\0" * (64 << 20))


def test_data_locations() -> None:
    payload = base64.b64encode(b"hello").decode()
    assert decode_data_location(f"data:{payload}", "f") == b"hello"
    assert decode_data_location(f"data:application/gzip;base64,{payload}", "f") == b"hello"
    with pytest.raises(WaveError, match=r"^f: .*base64"):
        decode_data_location("data:!!!", "f")
    with pytest.raises(WaveError, match=r"^f: .*base64"):
        decode_data_location("data:text/plain,hello", "f")


def test_pack_directory_is_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "tools"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "run").write_text("#!/bin/sh\n")
    (root / "bin" / "run").chmod(0o755)
    (root / "link").symlink_to("bin/run")
    first, second = io.BytesIO(), io.BytesIO()
    d1 = pack_directory(root, first)
    (root / "bin" / "run").touch()  # a new mtime must not change the bytes
    d2 = pack_directory(root, second)
    assert d1 == d2
    assert first.getvalue() == second.getvalue()
    assert digest_layer(first.getvalue()) == d1
    with tarfile.open(fileobj=io.BytesIO(first.getvalue())) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert list(members) == ["bin", "bin/run", "link"]  # one global order by path
    assert members["bin/run"].mode & 0o111
    assert all(m.uid == 0 and m.gid == 0 and m.mtime == 0 and not m.uname for m in members.values())
    assert members["link"].issym()


def test_pack_directory_orders_entries_by_path(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name in ("b/z", "a-b/f", "a/x/deep", "c"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(name)
    out = io.BytesIO()
    pack_directory(root, out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
    assert names == sorted(names)
    assert names == ["a", "a-b", "a-b/f", "a/x", "a/x/deep", "b", "b/z", "c"]


def test_config_rejects_unknown_keys_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[gateway]\nlisten = "127.0.0.1:1"\nlisen = "x"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: \[gateway\]\.lisen: unknown key"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"\[nope\]: unknown section"):
        parse_config({"nope": {}}, "x.toml")
    with pytest.raises(ConfigError, match=r"\[\[registries\]\]\[0\]\.blobs: 'mirror' is not one of"):
        parse_config({"registries": [{"name": "r.io", "blobs": "mirror"}]}, "x.toml")
    with pytest.raises(ConfigError, match=r"\[service\]\.token_ttl: .* is not a duration"):
        parse_config({"service": {"token_ttl": "soon"}}, "x.toml")
    with pytest.raises(ConfigError, match="password_env: environment variable NOPE_NOT_SET is not set"):
        parse_config({"registries": [{"name": "r.io", "username": "u", "password_env": "NOPE_NOT_SET"}]}, "x.toml")


def test_config_routes_and_secrets() -> None:
    config = parse_config(
        {"registries": [{"name": "r.io", "endpoint": "http://127.0.0.1:1", "username": "u", "password": "s3cret"}]},
        "x.toml",
    )
    route = config.route_for("r.io")
    assert route is not None
    assert "s3cret" not in repr(route)
    assert "s3cret" not in repr(config)
    assert route.password is not None
    assert route.password.value == "s3cret"
    unlisted = config.route_for("127.0.0.1:5000")
    assert unlisted is not None
    assert unlisted.endpoint == "http://127.0.0.1:5000"
    public = config.route_for("quay.io")
    assert public is not None
    assert public.endpoint == "https://quay.io"
    denied = parse_config({"upstream": {"default_route": "deny"}}, "x.toml")
    assert denied.route_for("quay.io") is None


def test_push_repositories_say_where_freezes_may_push() -> None:
    config = parse_config(
        {"registries": [{"name": "r.io", "push_repositories": ["team/frozen", "ci/*"]}, {"name": "s.io"}]}, "x.toml"
    )
    route = config.route_for("r.io")
    assert route is not None
    assert route.allows_push("team/frozen")
    assert route.allows_push("ci/a/b")
    assert not route.allows_push("team/frozen2")
    assert not route.allows_push("ci")
    assert not route.allows_push("team")
    other = config.route_for("s.io")
    assert other is not None
    assert not other.allows_push("anything")
    assert (
        parse_config({"registries": [{"name": "r.io", "push_repositories": ["*"]}]}, "x.toml")
        .registries[0]
        .allows_push("any/thing")
    )
    with pytest.raises(ConfigError, match=r"push_repositories\[0\]: 'Team/\*\*' is not a repository"):
        parse_config({"registries": [{"name": "r.io", "push_repositories": ["Team/**"]}]}, "x.toml")
    with pytest.raises(ConfigError, match=r"\[service\]\.freeze_workers: must be between 1 and 64"):
        parse_config({"service": {"freeze_workers": 0}}, "x.toml")


def test_frozen_names_come_from_the_request() -> None:
    from wave_grpc.service.freeze import build_target, frozen_tag

    digest = Digest.of(b"manifest")
    assert frozen_tag(ImageRef.parse("alpine:3.19"), digest) == f"3.19-{digest.hex[:16]}"
    assert frozen_tag(ImageRef.parse(f"alpine@{digest}"), digest) == digest.hex[:16]
    assert len(frozen_tag(ImageRef.parse("alpine:" + "t" * 128), digest)) == 128
    target = build_target("registry.example.com/team/frozen")
    assert (target.registry, target.repository) == ("registry.example.com", "team/frozen")
    for bad in ("registry.example.com/team/frozen:v1", f"r.io/x@{digest}", " "):
        with pytest.raises(WaveError, match="build_repository"):
            build_target(bad)


def test_embedded_default_config_loads() -> None:
    from wave_grpc.config import default_config_path

    config = load_config(default_config_path())
    assert config.gateway.listen == "127.0.0.1:9090"
    assert config.service.store.startswith("sqlite:")
