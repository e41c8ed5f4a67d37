"""The benchmark suite runs to completion in its quick mode and produces every figure.

No timing is asserted: these machines are shared and noisy. Figures live in
bench/README.md, produced by the full run.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests import components

pytestmark = pytest.mark.components

EXPECTED_FIGURES = {
    "warm manifest GET, 64 conn",
    "warm manifest GET, 64 conn, one worker per core",
    "warm manifest GET, default config (access log on)",
    "warm manifest GET, default config on uvloop",
    "bare aiohttp on uvloop",
    "first pull of a fresh token (index+manifest+config)",
    "base blob GET answered with 307, 64 conn",
    "full skopeo copy (fresh token)",
    "proxy-mode stream of a 32 MiB blob",
    "site cache hit, a 32 MiB blob, 1 client",
    "site cache hit, a 32 MiB blob, 16 clients",
    "site cache miss (first pull) of a 32 MiB blob",
    "CreateContainer with a 1 MiB inline layer",
    "CreateContainer with a 64 MiB inline layer",
    "UploadLayer + CreateContainer, 1 MiB layer",
    "UploadLayer + CreateContainer, 64 MiB layer",
    "layer verification, 1 MiB",
    "layer verification, 64 MiB",
    "token lookup p99 with 10,000 live tokens",
    "CreateContainer, 64 callers, tag cache 20 s (default)",
    "CreateContainer, 1 caller, tag cache 20 s (default)",
    "CreateContainer, 64 callers, tag cache off",
    "CreateContainer, 1 caller, tag cache off",
    "gateway memory, 500 live tokens pulled once each",
    "resolver cache with its defaults (4,096 entries, 256 MiB at its accounting)",
}


def test_quick_benchmark_produces_every_figure(tmp_path: Path) -> None:
    for tool in ("wrk", "redis-server", "docker-registry", "skopeo"):
        components.require_tool(tool)
    out = tmp_path / "results.md"
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [
        line.split("|")[1:-1] for line in out.read_text().splitlines() if line.startswith("| ") and "---" not in line
    ]
    header, body = rows[0], rows[1:]
    assert [c.strip() for c in header][:3] == ["figure", "metric", "wave-grpc"]
    assert {r[0].strip() for r in body} == EXPECTED_FIGURES
    for row in body:
        value = float(row[2].replace(",", ""))
        assert math.isfinite(value), row
        assert value > 0, row
