"""Issue 18's findings, measured against one checkout of wave-grpc.

    python -m bench.findings --checkout /work/wt/before [--only s1_slow_upstreams,...] [--drips 100,300]

Run from this worktree's venv: the hostile registry (``tests/hostile.py``), the real
``docker-registry`` with the busybox base and the gRPC stubs come from here; the
service under test is ``CHECKOUT/.venv/bin/python -m wave_grpc.cli serve`` with a
config this script writes (free loopback ports, a fresh service per scenario so one
scenario's leftovers never slow the next, peak RSS reset at its start). Each
scenario prints one JSON line: its input, the outcome (gRPC code or HTTP status and
the start of the message), seconds, the serve process's VmHWM at the start and the
end, and where it matters the latency of a healthy caller creating from the real
registry meanwhile (a thread with its own channel).

Keys a checkout does not know (e.g. ``[service].freeze_deadline`` before issue 18)
are dropped after a probe with that checkout's own ``load_config``, and the line says so.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench import findings_low
from bench import findings_scenarios as scenarios
from bench.findings_stack import Bench, Scale
from tests import components
from tests.components.hostile import HostileRegistry


def emit(name: str, checkout: Path, result: Mapping[str, Any]) -> None:
    print(json.dumps({"scenario": name, "checkout": str(checkout), **result}), flush=True)


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path | None]:
    """A small tmpfs for the disk-full case (None when this machine gives no mount privilege)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=False).returncode
    try:
        yield path if mounted == 0 else None
    finally:
        if mounted == 0:
            subprocess.run(["umount", path], check=False)


def run(checkout: Path, scale: Scale, only: set[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="findings-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        registry = stack.enter_context(components.start_registry(workdir / "registry"))
        base = components.push_busybox_images(workdir / "images", registry)
        hostile = stack.enter_context(HostileRegistry(workdir, drip_interval=1.0, fat_mib=scale.fat_mib, layers=1))
        hostile_small = stack.enter_context(HostileRegistry(workdir, drip_interval=10.0, fat_mib=1, layers=1))
        drip_hosts = tuple(
            stack.enter_context(HostileRegistry(workdir, drip_interval=1.0, fat_mib=1, layers=1)) for _ in range(5)
        )
        small_disk = stack.enter_context(tmpfs(workdir / "small-disk", "1m"))
        bench = Bench(
            checkout, workdir, scale, registry, base.ref("latest"), hostile, hostile_small, drip_hosts, small_disk
        )
        table = {**scenarios.SCENARIOS, "s7_low": findings_low.low_findings}
        for name, scenario in table.items():
            if only and name not in only:
                continue
            for result in scenario(bench):
                emit(name, checkout, result)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--checkout", type=Path, required=True, help="a wave-grpc checkout with its own .venv")
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--drips", default="100,300", help="dripping creations per run of the first scenario")
    parser.add_argument("--platform-mib", type=int, default=Scale.platform_mib)
    args = parser.parse_args(argv)
    scale = Scale(drips=tuple(int(n) for n in args.drips.split(",")), platform_mib=args.platform_mib)
    run(args.checkout.resolve(), scale, {name for name in args.only.split(",") if name})


if __name__ == "__main__":
    main(sys.argv[1:])
