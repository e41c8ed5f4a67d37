"""``GET /service-info``: Wave's ``{"serviceInfo": {"version", "commitId"}}``.

The ``wave`` CLI calls it to check the endpoint. The commit is
``WAVE_GRPC_COMMIT_ID`` when set (images built without ``.git``), else read
from the checkout the package runs from, else ``"unknown"``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from aiohttp import web

from gateway.handlers.wave_api import json_response
from wave_grpc import __version__

_CHECKOUT = Path(__file__).resolve().parents[2]


def _git_dir(root: Path) -> Path | None:
    dot_git = root / ".git"
    if dot_git.is_dir():
        return dot_git
    if dot_git.is_file():  # a worktree: "gitdir: <path>"
        text = dot_git.read_text().strip()
        if text.startswith("gitdir:"):
            return (root / text.removeprefix("gitdir:").strip()).resolve()
    return None


def _read_head(git_dir: Path) -> str | None:
    head = (git_dir / "HEAD").read_text().strip()
    if not head.startswith("ref:"):
        return head or None
    ref = head.removeprefix("ref:").strip()
    # A worktree keeps its refs in the main repository ("commondir").
    common = git_dir / "commondir"
    roots = [git_dir] + ([(git_dir / common.read_text().strip()).resolve()] if common.is_file() else [])
    for root in roots:
        loose = root / ref
        if loose.is_file():
            return loose.read_text().strip()
        packed = root / "packed-refs"
        if packed.is_file():
            for line in packed.read_text().splitlines():
                digest, _, name = line.partition(" ")
                if name == ref:
                    return digest
    return None


@functools.cache
def commit_id() -> str:
    from_env = os.environ.get("WAVE_GRPC_COMMIT_ID", "").strip()
    if from_env:
        return from_env
    try:
        git_dir = _git_dir(_CHECKOUT)
        commit = _read_head(git_dir) if git_dir is not None else None
    except OSError:
        commit = None
    return commit or "unknown"


async def service_info(request: web.Request) -> web.Response:
    return json_response({"serviceInfo": {"version": __version__, "commitId": commit_id()}})
