"""Processes and tools: free ports, required tools, one-shot commands and servers.

Every server a test starts is a ``ManagedProcess``: a child of the test process,
remembered by its object (never in module globals) and stopped by PID.
``Component`` is the one context-manager base of every helper that owns one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import NoReturn, Self

import pytest

from tests.components.http import http_request


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_APT_PACKAGES: Mapping[str, str] = {
    "docker-registry": "docker-registry",
    "htpasswd": "apache2-utils",
    "busybox": "busybox-static",
    "ctr": "containerd",
    "redis-server": "redis-server",
}


def missing_component(message: str) -> NoReturn:
    """A real component is not installed: the test fails, it never skips.

    A green run that quietly skipped the real-component tests proves nothing;
    ``make test`` (scripts/install-test-deps.sh) installs every component.
    """
    pytest.fail(f"{message}; `make test` installs every component the suite needs")


def require_tool(name: str) -> str:
    """Path of executable ``name``; a missing one fails the test with the package to install."""
    path = shutil.which(name)
    if path is None:
        package = _APT_PACKAGES.get(name, name)
        missing_component(f"{name} missing; install it (apt-get install {package})")
    return path


class ToolError(subprocess.CalledProcessError):
    """``CalledProcessError`` whose message includes the command's stderr/stdout."""

    def __str__(self) -> str:
        def text(value: object) -> str:
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            return "" if value is None else str(value)

        parts = [super().__str__()]
        err, out = text(self.stderr).strip(), text(self.output).strip()
        if err:
            parts.append(f"stderr:\n{err[-4000:]}")
        if out:
            parts.append(f"stdout:\n{out[-2000:]}")
        return "\n".join(parts)


def run_tool(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> str:
    """Run a command to completion and return its stdout; raise ``ToolError`` on failure."""
    args = [os.fspath(a) for a in argv]
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise ToolError(proc.returncode, args, output=proc.stdout, stderr=proc.stderr)
    return proc.stdout


class Component(ABC):
    """Something a test starts and must stop: a context manager whose exit calls ``stop()``.

    Every helper that owns a running process derives from it, so ``with`` always
    means the same thing: the component is stopped (by PID) however the block ends.
    """

    @abstractmethod
    def stop(self) -> object:
        """Stop what was started; safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ManagedProcess(Component):
    """A background server process, stopped and reaped by PID.

    Output (stdout and stderr) goes to ``log_path``. The process runs in its own
    session so a signal to it reaches no one else.
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        name: str | None = None,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("wb")
        try:
            self._proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.poll()

    def is_running(self) -> bool:
        return self._proc.poll() is None

    def log_text(self) -> str:
        with contextlib.suppress(ValueError):
            self._log.flush()
        try:
            return self.log_path.read_text("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _check_alive(self, waiting_for: str) -> None:
        if self._proc.poll() is not None:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with {self._proc.returncode} "
                f"while waiting for {waiting_for}; log:\n{self.log_text()[-4000:]}"
            )

    def wait_tcp(self, host: str, port: int, timeout: float = 15.0) -> None:
        """Wait until ``host:port`` accepts TCP connections."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(f"{host}:{port}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not listen on {host}:{port} in {timeout}s; log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_unix(self, path: Path, timeout: float = 15.0) -> None:
        """Wait until the unix socket ``path`` accepts connections."""
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(str(path))
            if path.exists():
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    try:
                        sock.connect(os.fspath(path))
                        return
                    except OSError:
                        pass
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name} did not listen on {path} in {timeout}s; log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def wait_http(
        self,
        url: str,
        timeout: float = 15.0,
        *,
        statuses: frozenset[int] | None = None,
    ) -> int:
        """Wait until ``GET url`` answers (any status < 500, or one of ``statuses``)."""
        deadline = time.monotonic() + timeout
        last: str = "no answer"
        while True:
            self._check_alive(url)
            try:
                status = http_request("GET", url, timeout=1.0).status
                if (statuses is None and status < 500) or (statuses is not None and status in statuses):
                    return status
                last = f"status {status}"
            except OSError as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {url} did not answer in {timeout}s ({last}); log:\n{self.log_text()[-4000:]}"
                )
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM by PID, wait up to ``timeout`` s, then SIGKILL; reap. Idempotent."""
        try:
            if self._proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.kill()
                    self._proc.wait()
            return self._proc.returncode
        finally:
            self._log.close()

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} rc={self._proc.poll()}>"


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a process (VmHWM in /proc/<pid>/status), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")
