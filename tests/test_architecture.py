"""The package layering holds: no import cycles anywhere, and only the entry points reach both faces.

The layer and independence contracts live in pyproject.toml and run as `lint-imports`
in `make lint`; this adds what those contracts do not express: no module is part of
an import cycle at all, counting function-level imports (grimp sees those too).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == 1:
                found.append([*path[path.index(imported) :], imported])
            elif imported not in state:
                visit(imported)
        path.pop()
        state[module] = 2

    for module in sorted(graph.modules):
        if module not in state:
            visit(module)
    return found


def test_no_import_cycles() -> None:
    graph = grimp.build_graph("wave_grpc", "gateway")
    assert _cycles(graph) == []


def test_only_the_entry_points_import_the_gateway() -> None:
    importers = {
        module
        for module in grimp.build_graph("wave_grpc", "gateway").find_modules_that_directly_import("gateway.app")
        if module.startswith("wave_grpc")
    }
    assert importers <= {"wave_grpc.serving", "wave_grpc.cli"}


def test_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
