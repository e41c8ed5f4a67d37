"""The project's own image (the repo's ``Containerfile``), built offline with podman, and run.

No registry outside this machine is reachable, so the image is built FROM a base
made here from Debian packages (``/work/shared/REAL-COMPONENTS.md``, "Building and
running the project's own image"):

1. ``mmdebstrap --variant=apt --include=python3,python3-venv,ca-certificates bookworm``
   makes a root-filesystem tarball (about 20-50 s). It is cached under
   ``CACHE_DIR`` keyed by the recipe, so a run builds it only when it is missing.
2. ``podman import`` turns it into ``localhost/wave-grpc-pybase:raw`` in a private
   vfs store.
3. pip inside a build needs this machine's CA bundle: a second base adds it
   (``localhost/wave-grpc-pybase:ca``). A test-harness detail only: the project's
   Containerfile stays standard.
4. ``podman build --isolation chroot --build-arg BASE=localhost/wave-grpc-pybase:ca``
   builds the Containerfile.

``PodmanContainer`` runs an image with the podman recipe that works in this sandbox
(runc, cgroupfs, explicit rlimits), attached, as a ``ManagedProcess``: it is stopped
by PID (podman forwards the SIGTERM to the container) and removed after.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.components.processes import Component, ManagedProcess, ToolError, require_tool, run_tool
from tests.components.runtimes import podman_argv, podman_command

# Survives between runs (a tmpfs /tmp may not); override with WAVE_GRPC_TEST_CACHE.
CACHE_DIR = Path(os.environ.get("WAVE_GRPC_TEST_CACHE", "/var/tmp/wave-grpc-test-cache"))  # noqa: S108
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
RAW_BASE = "localhost/wave-grpc-pybase:raw"
CA_BASE = "localhost/wave-grpc-pybase:ca"
PROJECT_IMAGE = "localhost/wave-grpc:test"
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def base_recipe() -> list[str]:
    """The mmdebstrap arguments (without the output path) that make the offline python base."""
    return ["--variant=apt", f"--include={','.join(BASE_PACKAGES)}", BASE_SUITE]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path``: two test runs never build the same cached file at once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def offline_base_tarball(cache_dir: Path = CACHE_DIR) -> Path:
    """The mmdebstrap tarball of ``base_recipe()``, built only when the cache lacks it."""
    recipe = base_recipe()
    key = hashlib.sha256("\0".join(recipe).encode()).hexdigest()[:16]
    tarball = cache_dir / f"python-base-{BASE_SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    mmdebstrap = require_tool("mmdebstrap")
    with _locked(cache_dir / f"{tarball.name}.lock"):
        if not tarball.exists():  # another run may have built it while we waited
            partial = tarball.with_suffix(".tar.partial")
            partial.unlink(missing_ok=True)
            run_tool([mmdebstrap, "--quiet", *recipe, partial], timeout=600)
            os.replace(partial, tarball)
    return tarball


@dataclass(frozen=True)
class ProjectImage:
    """The built image, where it lives, and what building it cost."""

    ref: str
    store: Path
    size_bytes: int
    build_seconds: float
    base_seconds: float
    labels: dict[str, str]
    user: str

    @property
    def size_mib(self) -> float:
        return self.size_bytes / (1 << 20)


def _image_exists(store: Path, ref: str) -> bool:
    try:
        podman_command(store, "image", "exists", ref, timeout=60)
    except ToolError:  # podman exits 1 when the image is absent
        return False
    return True


def _ca_base(store: Path, workdir: Path) -> None:
    """``CA_BASE``: the raw base plus this machine's CA bundle (pip in the build goes through it)."""
    context = workdir / "ca-base"
    context.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(HOST_CA_BUNDLE, context / "ca.crt")
    (context / "Containerfile").write_text(f"FROM {RAW_BASE}\nCOPY ca.crt /etc/ssl/certs/ca-certificates.crt\n")
    podman_command(
        store,
        "build",
        "--isolation",
        "chroot",
        "--quiet",
        "--layers=false",
        "-t",
        CA_BASE,
        os.fspath(context),
        timeout=300,
    )


def build_project_image(store: Path, repo_root: Path, workdir: Path) -> ProjectImage:
    """Build ``repo_root/Containerfile`` into the podman store ``store`` as ``PROJECT_IMAGE``."""
    started = time.monotonic()
    tarball = offline_base_tarball()
    if not _image_exists(store, RAW_BASE):
        podman_command(store, "import", "--quiet", os.fspath(tarball), RAW_BASE, timeout=300)
    if not _image_exists(store, CA_BASE):
        _ca_base(store, workdir)
    base_seconds = time.monotonic() - started
    started = time.monotonic()
    podman_command(
        store,
        # --layers=false: vfs stores every layer as a full copy of the root filesystem, so
        # caching one image per instruction would cost a copy (~230 MB) per line.
        "build", "--isolation", "chroot", "--quiet", "--layers=false",
        "--build-arg", f"BASE={CA_BASE}",
        "-t", PROJECT_IMAGE,
        "-f", os.fspath(repo_root / "Containerfile"),
        os.fspath(repo_root),
        timeout=900,
    )  # fmt: skip
    build_seconds = time.monotonic() - started
    size = int(podman_command(store, "image", "inspect", "--format", "{{.Size}}", PROJECT_IMAGE).strip())
    labels_text = podman_command(
        store, "image", "inspect", "--format", "{{range $k, $v := .Labels}}{{$k}}={{$v}}\n{{end}}", PROJECT_IMAGE
    )
    labels = dict(line.split("=", 1) for line in labels_text.splitlines() if "=" in line)
    user = podman_command(store, "image", "inspect", "--format", "{{.Config.User}}", PROJECT_IMAGE).strip()
    return ProjectImage(PROJECT_IMAGE, store, size, build_seconds, base_seconds, labels, user)


class PodmanContainer(Component):
    """``podman run --rm`` of an image, attached: a ``ManagedProcess`` stopped by PID.

    The sandbox recipe: runc (crun fails on these cgroups), cgroupfs, explicit
    rlimits (raising the defaults needs a capability the sandbox lacks), host
    network (the container's config binds free 127.0.0.1 ports).
    """

    def __init__(
        self,
        store: Path,
        image: str,
        args: Sequence[str] = (),
        *,
        name: str,
        log_path: Path,
        options: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.name = name
        argv, env = podman_argv(
            store,
            "run", "--rm", "--name", name,
            "--runtime", "runc", "--cgroup-manager", "cgroupfs",
            "--network", "host",
            "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=1024:1024",
            *options, image, *args,
        )  # fmt: skip
        self.process = ManagedProcess(argv, log_path=log_path, env=env, name=f"podman:{name}")

    def exec(self, *command: str) -> str:
        """``podman exec NAME COMMAND...``: its stdout."""
        return podman_command(self.store, "exec", self.name, *command, timeout=60)

    def log_text(self) -> str:
        return self.process.log_text()

    def stop(self) -> int | None:
        """SIGTERM to podman (forwarded to the container), then remove whatever is left."""
        try:
            return self.process.stop(timeout=30.0)
        finally:
            with contextlib.suppress(Exception):
                podman_command(self.store, "rm", "--force", "--ignore", self.name, timeout=60)


PEER_IMAGE = "localhost/wave-grpc-peers:test"
# The registry:2 image's own defaults, so compose.yaml's registry service runs either image.
_PEER_REGISTRY_CONFIG = """\
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: /var/lib/registry}, delete: {enabled: true}}
http: {addr: ":5000", secret: test-only}
"""
# Left to the base image's glibc: copying the host's would mix two C libraries.
_GLIBC = ("libc.so", "libm.so", "ld-linux", "libpthread.so", "libdl.so", "librt.so")


def _shared_libraries(binary: str) -> list[Path]:
    libraries = []
    for line in run_tool(["ldd", binary]).splitlines():
        _, arrow, rest = line.partition("=>")
        path = rest.split("(")[0].strip() if arrow else ""
        if path.startswith("/") and not any(part in path for part in _GLIBC):
            libraries.append(Path(path))
    return libraries


def build_peer_image(store: Path, workdir: Path) -> str:
    """``PEER_IMAGE``: Debian's ``docker-registry`` (as ``registry``) and ``redis-server`` on the offline base.

    The official registry and redis images are not reachable offline; this one stands
    in for both in deploy/compose.yaml (same commands, same registry paths). Built
    FROM the raw base ``build_project_image`` imported; the binaries' shared libraries
    other than glibc come from the host (the same Debian release) into /opt/peers/lib.
    """
    context = workdir / "peer-image"
    shutil.rmtree(context, ignore_errors=True)
    (context / "bin").mkdir(parents=True)
    (context / "lib").mkdir()
    binaries = {"registry": require_tool("docker-registry"), "redis-server": require_tool("redis-server")}
    for name, binary in binaries.items():
        shutil.copy2(Path(binary).resolve(), context / "bin" / name)
        for library in _shared_libraries(binary):
            shutil.copy2(library.resolve(), context / "lib" / library.name)
    (context / "config.yml").write_text(_PEER_REGISTRY_CONFIG)
    (context / "Containerfile").write_text(
        f"FROM {RAW_BASE}\n"
        "COPY lib/ /opt/peers/lib/\n"
        "COPY bin/ /usr/local/bin/\n"
        "COPY config.yml /etc/docker/registry/config.yml\n"
        "ENV LD_LIBRARY_PATH=/opt/peers/lib\n"
    )
    podman_command(
        store, "build", "--isolation", "chroot", "--quiet", "--layers=false", "-t", PEER_IMAGE, os.fspath(context),
        timeout=300,
    )  # fmt: skip
    return PEER_IMAGE
