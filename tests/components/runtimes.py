"""The pulling clients: skopeo, umoci, podman and a private containerd (``ctr``)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Literal, overload

from tests.components.oci import JSONDict
from tests.components.processes import Component, ManagedProcess, ToolError, require_tool, run_tool


def _docker_ref(image_ref: str) -> str:
    return image_ref if image_ref.startswith("docker://") else f"docker://{image_ref}"


def skopeo_copy(source: str, destination: str, *extra: str) -> None:
    """``skopeo copy docker://SOURCE docker://DESTINATION`` between loopback registries (TLS unverified)."""
    skopeo = require_tool("skopeo")
    flags = ("--insecure-policy", "copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false")
    run_tool([skopeo, *flags, *extra, f"docker://{source}", f"docker://{destination}"])


def skopeo_copy_to_oci(
    image_ref: str,
    layout_dir: Path,
    tag: str = "latest",
    *,
    arch: str | None = None,
    src_creds: str | None = None,
) -> None:
    """``skopeo copy docker://REF oci:DIR:TAG`` (verifies every blob digest)."""
    skopeo = require_tool("skopeo")
    argv = [skopeo, "--insecure-policy"]
    if arch is not None:
        argv += ["--override-arch", arch]
    argv += ["copy", "--quiet", "--src-tls-verify=false"]
    if src_creds is not None:
        argv += ["--src-creds", src_creds]
    argv += [_docker_ref(image_ref), f"oci:{layout_dir}:{tag}"]
    run_tool(argv)


@overload
def skopeo_inspect(
    image_ref: str, raw: Literal[False] = ..., *, creds: str | None = ..., no_tags: bool = ...
) -> JSONDict: ...
@overload
def skopeo_inspect(image_ref: str, raw: Literal[True], *, creds: str | None = ..., no_tags: bool = ...) -> bytes: ...
def skopeo_inspect(
    image_ref: str, raw: bool = False, *, creds: str | None = None, no_tags: bool = False
) -> JSONDict | bytes:
    """``skopeo inspect [--raw]``; the parsed JSON, or the raw manifest bytes.

    Without ``no_tags`` (and without ``raw``) skopeo also calls ``/tags/list``.
    """
    skopeo = require_tool("skopeo")
    argv = [skopeo, "--insecure-policy", "inspect", "--tls-verify=false"]
    if raw:
        argv.append("--raw")
    if no_tags:
        argv.append("--no-tags")
    if creds is not None:
        argv += ["--creds", creds]
    argv.append(_docker_ref(image_ref))
    proc = subprocess.run([os.fspath(a) for a in argv], capture_output=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise ToolError(proc.returncode, argv, output=proc.stdout, stderr=proc.stderr)
    if raw:
        return proc.stdout
    result: JSONDict = json.loads(proc.stdout)
    return result


def umoci_unpack(layout_dir: Path, tag: str, bundle_dir: Path) -> tuple[Path, JSONDict]:
    """``umoci unpack`` into ``bundle_dir`` -> (rootfs path, runtime config.json).

    ``--rootless`` is added when not root. Note umoci puts ``TERM=xterm`` into the
    runtime spec's env; use ``read_oci_image_config`` for the image's own config.
    """
    umoci = require_tool("umoci")
    argv = [umoci, "unpack"]
    if os.geteuid() != 0:
        argv.append("--rootless")
    argv += ["--image", f"{layout_dir}:{tag}", os.fspath(bundle_dir)]
    run_tool(argv)
    runtime: JSONDict = json.loads((bundle_dir / "config.json").read_text())
    return bundle_dir / "rootfs", runtime


def podman_runroot(root: Path) -> Path:
    """The run directory podman uses for the store under ``root``.

    podman refuses a ``--runroot`` longer than 50 characters, so it lives at a short
    path derived from ``root`` (stable, so every call on ``root`` agrees). Remove it
    with ``podman_cleanup``.
    """
    tag = hashlib.sha256(os.fspath(root.resolve()).encode()).hexdigest()[:16]
    return Path("/tmp") / f"podman-run-{tag}"  # noqa: S108 - private name, root only


def podman_cleanup(root: Path) -> None:
    """Remove the short-path run directory of the podman store under ``root``."""
    shutil.rmtree(podman_runroot(root), ignore_errors=True)


def _podman_base(root: Path) -> list[str]:
    podman = require_tool("podman")
    return [
        podman,
        "--root", os.fspath(root / "storage"),
        "--runroot", os.fspath(podman_runroot(root)),
        "--tmpdir", os.fspath(root / "tmp"),
        "--storage-driver", "vfs",
        "--cgroup-manager", "cgroupfs",
        "--events-backend", "none",
    ]  # fmt: skip


def _podman_env(root: Path) -> dict[str, str]:
    env = dict(os.environ)
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = os.fspath(root / "tmp")  # image blobs are staged here
    env.pop("CONTAINERS_CONF", None)
    env.pop("CONTAINERS_STORAGE_CONF", None)
    return env


def podman_pull(image_ref: str, root: Path, *, arch: str | None = None, creds: str | None = None) -> str:
    """``podman pull`` into a private vfs store under ``root``; returns the image id."""
    argv = [*_podman_base(root), "pull", "--quiet", "--tls-verify=false"]
    if arch is not None:
        argv += ["--arch", arch]
    if creds is not None:
        argv += ["--creds", creds]
    argv.append(image_ref.removeprefix("docker://"))
    out = run_tool(argv, env=_podman_env(root), timeout=180)
    return out.strip().splitlines()[-1].strip()


def podman_inspect(image_ref: str, root: Path) -> JSONDict:
    """``podman image inspect`` of an image in the store under ``root``."""
    argv = [*_podman_base(root), "image", "inspect", image_ref.removeprefix("docker://")]
    out = json.loads(run_tool(argv, env=_podman_env(root)))
    result: JSONDict = out[0]
    return result


def podman_run(image_ref: str, root: Path, *command: str) -> str:
    """``podman run`` of a pulled image in the store under ``root`` (the recipe of
    REAL-COMPONENTS.md: runc, cgroupfs, no network, rlimits the sandbox allows); its stdout."""
    argv = [
        *_podman_base(root),
        "run", "--rm", "--runtime", "runc", "--network", "none",
        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024",
        image_ref.removeprefix("docker://"), *command,
    ]  # fmt: skip
    return run_tool(argv, env=_podman_env(root), timeout=180)


class Containerd(Component):
    """A private containerd (CRI disabled) on its own socket, driven with ``ctr``.

    ``ctr images pull`` (containerd 1.6) needs no ``--platform`` for an index: it
    fetches only the children for ``platform`` (default: the host's; ``--all-platforms``
    fetches every child) and unpacks that one with the ``native`` snapshotter. It
    verifies every blob's digest and size against its descriptor and, on unpack, each
    layer's uncompressed digest against the config's ``rootfs.diff_ids`` ("wrong diff
    id calculated on extraction"). It does NOT check a single manifest's config
    platform: an arm64-only manifest pulls fine on amd64 without ``--platform``.
    """

    def __init__(self, workdir: Path, *, timeout: float = 20.0) -> None:
        self.containerd = require_tool("containerd")
        self.ctr = require_tool("ctr")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # unix socket paths are limited to ~107 bytes: fall back to a short temp dir
        self._sockdir: str | None = None
        sock = workdir / "containerd.sock"
        if len(os.fspath(sock)) > 100:
            self._sockdir = tempfile.mkdtemp(prefix="ctrd-", dir="/tmp")
            sock = Path(self._sockdir) / "containerd.sock"
        self.address = sock
        root, state = workdir / "root", workdir / "state"
        config = "\n".join(
            [
                "version = 2",
                f"root = {json.dumps(os.fspath(root))}",
                f"state = {json.dumps(os.fspath(state))}",
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
                "",
                "[grpc]",
                f"  address = {json.dumps(os.fspath(sock))}",
                "",
                "[ttrpc]",
                f"  address = {json.dumps(os.fspath(sock) + '.ttrpc')}",
                "",
                "[debug]",
                '  address = ""',
                "",
                "[metrics]",
                '  address = ""',
                "",
                '[plugins."io.containerd.internal.v1.opt"]',
                f"  path = {json.dumps(os.fspath(workdir / 'opt'))}",
                "",
            ]
        )
        self.config_path = workdir / "config.toml"
        self.config_path.write_text(config)
        self.process = ManagedProcess(
            [self.containerd, "--config", self.config_path],
            log_path=workdir / "containerd.log",
            name="containerd",
        )
        try:
            self.process.wait_unix(sock, timeout)
        except BaseException:
            self.stop()
            raise

    def ctr_cmd(self, *args: str, timeout: float = 180.0) -> str:
        return run_tool([self.ctr, "--address", self.address, *args], timeout=timeout)

    def pull(
        self,
        image_ref: str,
        platform: str | None = None,
        *,
        user: str | None = None,
        all_platforms: bool = False,
    ) -> str:
        """``ctr images pull --plain-http --snapshotter native [--platform P] REF``."""
        argv = ["images", "pull", "--plain-http", "--snapshotter", "native"]
        if platform is not None:
            argv += ["--platform", platform]
        if all_platforms:
            argv.append("--all-platforms")
        if user is not None:
            argv += ["--user", user]
        argv.append(image_ref.removeprefix("docker://"))
        return self.ctr_cmd(*argv)

    def image_list(self) -> str:
        return self.ctr_cmd("images", "list")

    def stop(self) -> None:
        try:
            self.process.stop()
        finally:
            if self._sockdir is not None:
                shutil.rmtree(self._sockdir, ignore_errors=True)
                self._sockdir = None


def podman_command(root: Path, *args: str, timeout: float = 180.0) -> str:
    """``podman ARGS...`` on the private vfs store under ``root``; its stdout (``ToolError`` on failure)."""
    return run_tool([*_podman_base(root), *args], env=_podman_env(root), timeout=timeout)


def podman_argv(root: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``podman ARGS...`` on the store under ``root``, for a long-running podman."""
    return [*_podman_base(root), *args], _podman_env(root)
