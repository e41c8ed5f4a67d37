"""The busybox test images, built offline and reproducibly, and readers of image bytes.

``push_busybox_images`` writes layer tars and gzip streams in Python with fixed
metadata, so the same ``/bin/busybox`` and zlib give the same digests everywhere.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import tarfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tests.components.http import http_request, put_manifest
from tests.components.oci import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    INDEX_TYPES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    JSONDict,
    sha256_digest,
)
from tests.components.processes import require_tool, run_tool
from tests.components.registry import Registry

BASE_REPOSITORY = "library/busybox"
BUSYBOX_BIN = "/bin/busybox"
EPOCH = "1970-01-01T00:00:00Z"


def _gzip(data: bytes) -> bytes:
    """gzip with a fixed 10-byte header (mtime 0, no name, OS=255): same bytes anywhere
    the same zlib is used."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS, 9)
    deflated = comp.compress(data) + comp.flush()
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"
    trailer = struct.pack("<II", zlib.crc32(data) & 0xFFFFFFFF, len(data) & 0xFFFFFFFF)
    return header + deflated + trailer


TarEntry = tuple[str, Literal["dir", "file", "symlink"], bytes | str, int]


def _tar(entries: Sequence[TarEntry]) -> bytes:
    """A reproducible tar: sorted names, uid/gid 0, no names, mtime 0, PAX format."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, mode in sorted(entries, key=lambda e: e[0]):
            info = tarfile.TarInfo(name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                assert isinstance(payload, str)
                info.type = tarfile.SYMTYPE
                info.linkname = payload
                tar.addfile(info)
            else:
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class _Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return sha256_digest(self.data)

    def descriptor(self, **extra: Any) -> JSONDict:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


class _Layout:
    """A minimal OCI image layout writer."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list[JSONDict] = []

    def add(self, blob: _Blob) -> _Blob:
        path = self.root / "blobs" / "sha256" / blob.digest.split(":", 1)[1]
        path.write_bytes(blob.data)
        return blob

    def tag(self, name: str, blob: _Blob) -> None:
        self.refs.append(blob.descriptor(annotations={"org.opencontainers.image.ref.name": name}))

    def write_index(self) -> None:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": self.refs}
        (self.root / "index.json").write_bytes(_canonical(index))


def _build_single(layout: _Layout, arch: str, marker: bytes) -> _Blob:
    busybox = Path(BUSYBOX_BIN).read_bytes()
    base: list[TarEntry] = [
        ("bin", "dir", b"", 0o755),
        ("bin/busybox", "file", busybox, 0o755),
        ("etc", "dir", b"", 0o755),
        ("etc/marker", "file", marker, 0o644),
    ]
    base += [(f"bin/{a}", "symlink", "busybox", 0o777) for a in ("sh", "ls", "cat", "echo", "true")]
    second: list[TarEntry] = [("etc", "dir", b"", 0o755), ("etc/second", "file", b"two\n", 0o644)]
    tars = [_tar(base), _tar(second)]
    layers = [layout.add(_Blob(_gzip(t), OCI_LAYER_GZIP)) for t in tars]
    config = {
        "created": EPOCH,
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": ["/bin/sh"],
            "Cmd": ["-c", "echo hi"],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(t) for t in tars]},
        "history": [
            {"created": EPOCH, "created_by": "components: busybox base layer"},
            {"created": EPOCH, "created_by": "components: /etc/second"},
        ],
    }
    config_blob = layout.add(_Blob(_canonical(config), OCI_CONFIG))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    return layout.add(_Blob(_canonical(manifest), OCI_MANIFEST))


@dataclass(frozen=True)
class ImageManifest:
    """One single-platform manifest as read back from the registry."""

    platform: str  # "linux/amd64"
    digest: str
    media_type: str
    size: int
    config_digest: str
    layer_digests: tuple[str, ...]  # compressed blobs, in manifest order
    diff_ids: tuple[str, ...]  # uncompressed tar digests from the config


@dataclass(frozen=True)
class TaggedImage:
    """What one tag of ``library/busybox`` points at."""

    tag: str
    ref: str  # "127.0.0.1:PORT/library/busybox:TAG"
    digest: str  # digest of the top-level manifest / index
    media_type: str
    manifests: tuple[ImageManifest, ...]  # one for a manifest, per platform for an index

    @property
    def is_index(self) -> bool:
        return self.media_type in INDEX_TYPES

    def platform(self, platform: str = "linux/amd64") -> ImageManifest:
        for m in self.manifests:
            if m.platform == platform:
                return m
        raise KeyError(f"{self.ref} has no {platform}")


@dataclass(frozen=True)
class BaseImages:
    """The busybox test images pushed by ``push_busybox_images``.

    * ``latest``: OCI manifest, linux/amd64, two layers (/bin/busybox + symlinks and
      /etc/marker = "hello\\n"; then /etc/second = "two\\n"); entrypoint ["/bin/sh"],
      cmd ["-c", "echo hi"], env ["PATH=/bin"], working dir "/".
    * ``v2s2``: the same image as Docker v2 schema 2 (same layer blobs).
    * ``multi``: OCI index of linux/amd64 (= ``latest``) and linux/arm64 (marker
      "arm64\\n", config architecture arm64).
    * ``dockerlist``: Docker manifest list of the two as v2 schema 2 manifests.
    """

    registry_host: str
    registry_url: str
    repository: str
    layout_dir: Path  # local OCI layout with refs "amd64", "arm64", "multi"
    latest: TaggedImage
    v2s2: TaggedImage
    multi: TaggedImage
    dockerlist: TaggedImage

    def by_tag(self, tag: str) -> TaggedImage:
        images = {i.tag: i for i in (self.latest, self.v2s2, self.multi, self.dockerlist)}
        return images[tag]

    @property
    def tags(self) -> tuple[str, ...]:
        return ("latest", "v2s2", "multi", "dockerlist")

    def ref(self, tag: str = "latest") -> str:
        return f"{self.registry_host}/{self.repository}:{tag}"


def _read_back(registry: Registry, repo: str, tag: str, ref: str) -> TaggedImage:
    body, media_type, digest = registry.get_manifest(repo, ref)
    doc = json.loads(body)

    def single(platform: str, m_digest: str, m_body: bytes, m_type: str) -> ImageManifest:
        m = json.loads(m_body)
        cfg_digest = m["config"]["digest"]
        cfg = json.loads(registry.get_blob(repo, cfg_digest))
        got_platform = f"{cfg['os']}/{cfg['architecture']}"
        if platform and platform != got_platform:
            raise RuntimeError(f"{ref}: index says {platform}, config says {got_platform}")
        return ImageManifest(
            platform=got_platform,
            digest=m_digest,
            media_type=m_type,
            size=len(m_body),
            config_digest=cfg_digest,
            layer_digests=tuple(layer["digest"] for layer in m["layers"]),
            diff_ids=tuple(cfg["rootfs"]["diff_ids"]),
        )

    manifests: list[ImageManifest] = []
    if media_type in INDEX_TYPES:
        for desc in doc["manifests"]:
            p = desc["platform"]
            m_body, m_type, m_digest = registry.get_manifest(repo, desc["digest"])
            if m_digest != desc["digest"] or m_type != desc["mediaType"]:
                raise RuntimeError(f"{ref}: child {desc['digest']} read back differently")
            manifests.append(single(f"{p['os']}/{p['architecture']}", m_digest, m_body, m_type))
    else:
        manifests.append(single("", digest, body, media_type))
    return TaggedImage(
        tag=tag,
        ref=registry.ref(repo, tag),
        digest=digest,
        media_type=media_type,
        manifests=tuple(manifests),
    )


def push_busybox_images(workdir: Path, registry: Registry, repository: str = BASE_REPOSITORY) -> BaseImages:
    """Build the busybox test images offline (reproducibly) and push all four tags.

    Layer tars and gzip streams are written by Python with fixed metadata, so digests
    are the same on every run that uses the same ``/bin/busybox`` and zlib. The
    ``v2s2`` and ``dockerlist`` manifests are converted by skopeo (deterministic too).
    """
    skopeo = require_tool("skopeo")
    if not os.path.exists(BUSYBOX_BIN):
        require_tool("busybox")  # fails with the install hint
    workdir.mkdir(parents=True, exist_ok=True)
    layout_dir = workdir / "oci"
    layout = _Layout(layout_dir)
    amd64 = _build_single(layout, "amd64", b"hello\n")
    arm64 = _build_single(layout, "arm64", b"arm64\n")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            amd64.descriptor(platform={"architecture": "amd64", "os": "linux"}),
            arm64.descriptor(platform={"architecture": "arm64", "os": "linux"}),
        ],
    }
    index_blob = layout.add(_Blob(_canonical(index), OCI_INDEX))
    layout.tag("amd64", amd64)
    layout.tag("arm64", arm64)
    layout.tag("multi", index_blob)
    layout.write_index()

    creds: list[str] = []
    if registry.creds_arg is not None:
        creds = ["--dest-creds", registry.creds_arg]
    base = [skopeo, "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false", *creds]
    dest = f"docker://{registry.host}/{repository}"
    src = f"oci:{layout_dir}"
    run_tool([*base, f"{src}:amd64", f"{dest}:latest"])
    run_tool([*base, "--format", "v2s2", f"{src}:amd64", f"{dest}:v2s2"])
    run_tool([*base, "--all", f"{src}:multi", f"{dest}:multi"])

    # Docker manifest list: convert each arch to v2s2 in a local dir, push its
    # manifest by digest (the blobs are in the repository already), then the list.
    entries: list[JSONDict] = []
    for arch in ("amd64", "arm64"):
        conv = workdir / f"v2s2-{arch}"
        if conv.exists():
            shutil.rmtree(conv)
        run_tool(
            [
                skopeo,
                "--insecure-policy",
                "copy",
                "--quiet",
                "--format",
                "v2s2",
                f"{src}:{arch}",
                f"dir:{conv}",
            ]
        )
        m_body = (conv / "manifest.json").read_bytes()
        m = json.loads(m_body)
        for blob in [m["config"], *m["layers"]]:
            head = http_request(
                "HEAD",
                f"{registry.url}/v2/{repository}/blobs/{blob['digest']}",
                auth=registry.credentials,
            )
            if head.status != 200:
                raise RuntimeError(f"blob {blob['digest']} of {arch} v2s2 not in registry")
        m_digest = put_manifest(
            registry.url,
            repository,
            sha256_digest(m_body),
            m_body,
            DOCKER_MANIFEST,
            auth=registry.credentials,
        )
        entries.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "size": len(m_body),
                "digest": m_digest,
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    mlist = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST_LIST, "manifests": entries}
    put_manifest(
        registry.url,
        repository,
        "dockerlist",
        json.dumps(mlist, indent=3).encode(),
        DOCKER_MANIFEST_LIST,
        auth=registry.credentials,
    )

    images = {tag: _read_back(registry, repository, tag, tag) for tag in ("latest", "v2s2", "multi", "dockerlist")}
    if images["latest"].digest != amd64.digest or images["multi"].digest != index_blob.digest:
        raise RuntimeError("skopeo changed the OCI manifests while pushing")
    return BaseImages(
        registry_host=registry.host,
        registry_url=registry.url,
        repository=repository,
        layout_dir=layout_dir,
        **images,
    )


def read_oci_image_config(layout_dir: Path, tag: str, *, platform: str = "linux/amd64") -> JSONDict:
    """The image config JSON of ``tag`` in an OCI layout (index.json -> manifest ->
    config), following an index to ``platform``. Every blob's digest is checked."""

    def blob(digest: str) -> bytes:
        algo, hexdigest = digest.split(":", 1)
        data = (layout_dir / "blobs" / algo / hexdigest).read_bytes()
        if sha256_digest(data) != digest:
            raise RuntimeError(f"{layout_dir}: blob {digest} does not match its digest")
        return data

    top = json.loads((layout_dir / "index.json").read_text())
    for desc in top["manifests"]:
        if desc.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag:
            break
    else:
        raise KeyError(f"{layout_dir} has no ref {tag!r}")
    doc = json.loads(blob(desc["digest"]))
    if desc["mediaType"] in INDEX_TYPES or "manifests" in doc:
        os_, arch = platform.split("/")[:2]
        for child in doc["manifests"]:
            p = child.get("platform", {})
            if p.get("os") == os_ and p.get("architecture") == arch:
                doc = json.loads(blob(child["digest"]))
                break
        else:
            raise KeyError(f"{layout_dir}:{tag} has no {platform}")
    config: JSONDict = json.loads(blob(doc["config"]["digest"]))
    return config


def iter_tar_names(data: bytes) -> Iterator[str]:
    """Names in a (possibly gzipped) tar blob; handy for checking layer content."""
    if data[:2] == b"\x1f\x8b":
        data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            yield member.name


def layer_tar_gz(files: Mapping[str, bytes], mode: int = 0o755) -> tuple[bytes, str]:
    """A reproducible layer of regular files: (gzip bytes, diff_id)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0), sha256_digest(raw.getvalue())
