"""A private Docker daemon (``dockerd`` from Debian ``docker.io``) driven with the ``docker`` CLI.

The recipe of ``/work/shared/REAL-COMPONENTS.md``: vfs storage, no iptables, no bridge,
plain-http registries on loopback (``--insecure-registry 127.0.0.0/8``) and a unix socket
of its own. dockerd starts (and stops) a containerd of its own under its exec-root.

Everything dockerd writes lives under one short private directory in ``/tmp`` (unix
socket paths are limited to ~107 bytes, and containerd's sockets live under the
exec-root): data-root, exec-root, pidfile, socket, daemon config and trust key, and the
CLI's ``DOCKER_CONFIG``. Only the log goes to ``workdir``, so it outlives ``stop()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.components.oci import JSONDict
from tests.components.processes import Component, ManagedProcess, missing_component, run_tool

_SBIN_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def _search_path() -> str:
    parts = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    return os.pathsep.join([*parts, *(p for p in _SBIN_PATH if p not in parts)])


def _require_docker_tool(name: str) -> str:
    """``dockerd`` or ``docker``: both come with Debian ``docker.io`` (dockerd is in /usr/sbin)."""
    path = shutil.which(name, path=_search_path())
    if path is None:
        missing_component(f"{name} missing; install it (apt-get install docker.io)")
    return path


def _unescape_mountinfo(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this mount namespace, deepest first."""
    prefix = os.fspath(root)
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            fields = line.split()
            if len(fields) > 4:
                point = _unescape_mountinfo(fields[4])
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    return sorted(set(found), key=len, reverse=True)


def _pids_naming(root: Path) -> list[int]:
    """PIDs of processes whose command line names a path under ``root`` (our private dir).

    After an unclean stop these are dockerd's containerd and its shims; matching our
    unique ``mkdtemp`` directory never hits anyone else's process.
    """
    needle = (os.fspath(root) + "/").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            pids.append(int(entry.name))
    return pids


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class DockerDaemon(Component):
    """A private ``dockerd`` on its own unix socket; ``pull``, ``inspect`` and ``run`` via ``docker -H``.

    Needs root (dockerd does). ``startup_seconds`` is how long ``docker info`` took to
    answer. dockerd first probes https on a plain-http registry and logs a 400: harmless.
    """

    def __init__(self, workdir: Path, *, timeout: float = 60.0) -> None:
        self.dockerd = _require_docker_tool("dockerd")
        self.docker = _require_docker_tool("docker")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "dockerd.log"
        self.home: Path | None = Path(tempfile.mkdtemp(prefix="dkr-", dir="/tmp"))
        self.data_root = self.home / "data"
        self.exec_root = self.home / "x"
        self.pidfile = self.home / "dockerd.pid"
        self.socket = self.home / "docker.sock"
        self.host = f"unix://{self.socket}"
        self.process: ManagedProcess | None = None
        self.startup_seconds: float | None = None
        self.server_version: str | None = None
        try:
            client_config = self.home / "client"
            client_config.mkdir()
            (client_config / "config.json").write_text("{}\n")  # no credentials, no credential helpers
            config_file = self.home / "daemon.json"
            # never the host's /etc/docker/daemon.json; the trust key would go to /etc/docker/key.json
            config_file.write_text(json.dumps({"deprecated-key-path": os.fspath(self.home / "key.json")}) + "\n")
            self._client_env = self._env(DOCKER_CONFIG=os.fspath(client_config), DOCKER_CLI_HINTS="false")
            argv: list[str | os.PathLike[str]] = [
                self.dockerd,
                "--config-file", config_file,
                "--data-root", self.data_root,
                "--exec-root", self.exec_root,
                "--pidfile", self.pidfile,
                "--storage-driver", "vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--insecure-registry", "127.0.0.0/8",
                "--host", self.host,
            ]  # fmt: skip
            self.process = ManagedProcess(argv, log_path=self.log_path, env=self._env(), name="dockerd")
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    @staticmethod
    def _env(**extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKER_")}
        env["PATH"] = _search_path()  # dockerd runs containerd, runc, docker-init from /usr/(s)bin
        env.update(extra)
        return env

    def _log_tail(self) -> str:
        return self.process.log_text()[-4000:] if self.process is not None else ""

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        started = time.monotonic()
        deadline = started + timeout
        last = "socket not created yet"
        while True:
            if not self.process.is_running():
                raise RuntimeError(
                    f"dockerd (pid {self.process.pid}) exited with {self.process.returncode} "
                    f"before `docker info` answered; log:\n{self._log_tail()}"
                )
            if self.socket.exists():
                try:
                    proc = subprocess.run(
                        [self.docker, "-H", self.host, "info", "--format", "{{.ServerVersion}}"],
                        capture_output=True,
                        text=True,
                        env=self._client_env,
                        timeout=10,
                        stdin=subprocess.DEVNULL,
                        check=False,
                    )
                except subprocess.TimeoutExpired:
                    last = "`docker info` timed out"
                else:
                    if proc.returncode == 0 and proc.stdout.strip():
                        self.server_version = proc.stdout.strip()
                        self.startup_seconds = time.monotonic() - started
                        return
                    last = (proc.stderr or proc.stdout).strip()[-1000:]
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"dockerd: `docker -H {self.host} info` did not answer in {timeout}s ({last}); "
                    f"log:\n{self._log_tail()}"
                )
            time.sleep(0.1)

    def docker_cmd(self, *args: str, timeout: float = 180.0) -> str:
        """``docker -H unix://SOCK ARGS...``; its stdout (``ToolError`` on failure)."""
        return run_tool([self.docker, "-H", self.host, *args], env=self._client_env, timeout=timeout)

    def pull(self, ref: str, platform: str | None = None) -> None:
        """``docker pull [--platform P] REF`` (plain http on loopback via ``--insecure-registry``)."""
        argv = ["pull", "--quiet"]
        if platform is not None:
            argv += ["--platform", platform]
        self.docker_cmd(*argv, ref.removeprefix("docker://"))

    def inspect(self, ref: str) -> JSONDict:
        """``docker image inspect REF``: the first (only) element of its JSON."""
        out = json.loads(self.docker_cmd("image", "inspect", ref.removeprefix("docker://"), timeout=60))
        result: JSONDict = out[0]
        return result

    def run(self, ref: str, *cmd: str, platform: str | None = None) -> str:
        """``docker run --rm --network none [--platform P] REF CMD...``; the container's stdout.

        Only images for the host's platform (linux/amd64) run: there is no binfmt/qemu.
        """
        argv = ["run", "--rm", "--network", "none"]
        if platform is not None:
            argv += ["--platform", platform]
        return self.docker_cmd(*argv, ref.removeprefix("docker://"), *cmd)

    def stop(self) -> None:
        """Stop dockerd by its PID, clean up after it, and remove its private directory.

        A graceful stop (SIGTERM) stops the containers, dockerd's containerd and the
        data-root self bind mount. After an unclean one (SIGKILL) this also removes
        runc containers, kills leftover processes naming our directory (by PID) and
        lazily unmounts what is still mounted under it. The directory is deleted only
        once nothing is mounted below it. Idempotent.
        """
        try:
            if self.process is not None:
                self.process.stop(timeout=30.0)
        finally:
            if self.home is not None:
                self._clean_leftovers(self.home)
                self._remove_home(self.home)
                self.home = None

    def _clean_leftovers(self, home: Path) -> None:
        runc_root = self.exec_root / "runtime-runc" / "moby"
        runc = shutil.which("runc", path=_search_path())
        if runc is not None and runc_root.is_dir() and any(runc_root.iterdir()):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                ids = run_tool([runc, "--root", runc_root, "list", "-q"], timeout=30).split()
                for container_id in ids:
                    with contextlib.suppress(OSError, subprocess.SubprocessError):
                        run_tool([runc, "--root", runc_root, "delete", "--force", container_id], timeout=30)
        pids = _pids_naming(home)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 5.0
            while pids and time.monotonic() < deadline:
                pids = [pid for pid in pids if _pid_alive(pid)]
                time.sleep(0.05)
            if not pids:
                break
        umount = shutil.which("umount", path=_search_path())
        for _ in range(5):  # stacked mounts on one point need one umount each
            points = _mounts_under(home)
            if not points or umount is None:
                break
            for point in points:
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    run_tool([umount, "--lazy", point], timeout=30)

    def _remove_home(self, home: Path) -> None:
        still = _mounts_under(home)
        if still:  # never delete through a mount point
            raise RuntimeError(f"dockerd left mounts under {home} that would not unmount: {still}")
        try:
            shutil.rmtree(home)
        except OSError:
            # vfs layers can hold files shutil trips over; rm never leaves this file system
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                run_tool(["rm", "-rf", "--one-file-system", home], timeout=120)
        if home.exists():
            raise RuntimeError(f"could not remove dockerd's directory {home}")

    def __repr__(self) -> str:
        return f"<DockerDaemon {self.host} process={self.process!r}>"
