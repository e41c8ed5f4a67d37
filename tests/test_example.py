"""`make example` (scripts/example.sh) runs the README's worked example offline and ends well.

The script starts a docker-registry, builds a busybox base image with umoci,
pushes it with skopeo, runs `wave-grpc serve`, augments the image, pulls the
augmented name and prints the injected file and the env. A missing component
fails the test (it never skips).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.components.processes import require_tool

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "example.sh"
TIMEOUT = 300.0


def _run_example() -> tuple[int, str]:
    env = dict(os.environ)
    if (Path(sys.prefix) / "bin" / "wave-grpc").exists():
        env["VENV"] = sys.prefix  # the wave-grpc installed beside this interpreter
    proc = subprocess.Popen(
        ["bash", os.fspath(SCRIPT)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        # SIGTERM lets the script's trap stop what it started; SIGKILL only if that hangs.
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
        pytest.fail(f"scripts/example.sh did not finish within {TIMEOUT:.0f} s:\n{output[-4000:]}")
    return proc.returncode, output


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def test_make_example_runs_offline_and_prints_the_injected_file() -> None:
    for tool in ("docker-registry", "skopeo", "umoci", "busybox"):
        require_tool(tool)
    status, output = _run_example()
    assert status == 0, f"scripts/example.sh exited {status}:\n{output[-4000:]}"
    assert "hello from wave-grpc" in output, output
    assert "FOO=bar" in output, output
    assert re.search(r"augmented image: 127\.0\.0\.1:\d+/wt/[0-9a-z]+/library/busybox:latest", output), output

    # The script cleans up: its temporary directory is gone and its servers are stopped.
    workdir = re.search(r"^==> working in (\S+)$", output, re.MULTILINE)
    assert workdir is not None, output
    assert not Path(workdir.group(1)).exists(), f"{workdir.group(1)} was left behind"
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", output.split("==> augmenting")[0])]
    assert len(set(ports)) >= 3, output  # the registry, gRPC and the gateway
    for port in set(ports):
        assert _refuses_connections(port), f"something still listens on 127.0.0.1:{port} after the example"
