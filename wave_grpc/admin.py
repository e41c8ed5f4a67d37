"""The admin endpoints (``[admin] listen``): ``/metrics``, ``/healthz``, ``/readyz``.

``/healthz`` says the process is alive. ``/readyz`` asks what this process
needs, each with a short deadline: for a service, its token store; for a
gateway, the AugmentService (gRPC health) and the shared cache when one is set.
A failure answers ``503`` with a body naming the dependency, its address and
the config key that sets it, so the fix is obvious from the probe's output.
The checks are given by the entry point, which knows what runs in the process.

``/readyz`` also follows the process's life: 503 ``starting`` until everything is
open, and 503 ``draining`` from the first SIGTERM on, at once, while in-flight
requests finish (a load balancer or Kubernetes stops sending new ones).
``/healthz`` never depends on anything else: a Redis blip must not restart pods.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from wave_grpc.errors import WaveError
from wave_grpc.metrics import Metrics

CHECK_TIMEOUT = 2.0
# The longest problem text /readyz shows for one dependency.
PROBLEM_MAX = 200


@dataclass(frozen=True, slots=True)
class ReadinessCheck:
    dependency: str  # "token store", "AugmentService", "shared cache"
    address: str  # where it is (never a credential: URLs are given without passwords)
    key: str  # the config key that sets it
    check: Callable[[], Awaitable[None]]  # raises when the dependency does not answer


def _shortened(text: str, limit: int = PROBLEM_MAX) -> str:
    """``text`` on one line, cut at a word boundary with an ellipsis when longer than ``limit``."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[: limit - 1].rsplit(" ", 1)[0].rstrip(" ,;:(")
    return cut + "…"


# What a failed connection's words mean, for the failures a probe meets (gRPC's and the OS's).
_CONNECTION_FAILURES = (
    ("connection refused", "connection refused"),
    ("failed to connect", "connection refused"),
    ("name or service not known", "host name not resolved"),
    ("dns resolution failed", "host name not resolved"),
    ("no address associated", "host name not resolved"),
    ("temporary failure in name resolution", "host name not resolved"),
    ("timed out", "timed out"),
    ("deadline exceeded", "timed out"),
    ("ssl", "TLS handshake failed"),
    ("socket closed", "connection closed (another protocol on that port?)"),
)


def problem_text(exc: BaseException) -> str:
    """A failed check as a short readable line, e.g. ``UNAVAILABLE: connection refused``."""
    if isinstance(exc, WaveError):
        return _shortened(exc.message)
    if isinstance(exc, grpc.aio.AioRpcError):
        words = f"{exc.details() or ''} {exc.debug_error_string() or ''}".lower()
        meaning = next((m for pattern, m in _CONNECTION_FAILURES if pattern in words), exc.details() or "")
        return _shortened(f"{exc.code().name}: {meaning}")
    if isinstance(exc, OSError):
        words = f"{exc.strerror or ''} {exc}".lower()
        meaning = next((m for pattern, m in _CONNECTION_FAILURES if pattern in words), exc.strerror or str(exc))
        return _shortened(meaning or type(exc).__name__)
    return _shortened(str(exc) or type(exc).__name__)


async def run_check(check: ReadinessCheck) -> dict[str, str] | None:
    """None when the dependency answers, else what failed, where, which key, and why (readably)."""
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            await check.check()
    except TimeoutError:
        problem = f"no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:
        problem = problem_text(exc)
    else:
        return None
    return {"dependency": check.dependency, "address": check.address, "key": check.key, "problem": problem}


class Readiness:
    """What ``/readyz`` answers: the process's phase, then its dependencies' checks."""

    def __init__(self, checks: Sequence[ReadinessCheck] = ()) -> None:
        self.checks = list(checks)
        self.phase = "starting"

    def started(self, checks: Sequence[ReadinessCheck]) -> None:
        self.checks = list(checks)
        self.phase = "serving"

    def drain(self) -> None:
        self.phase = "draining"


def _not_ready(message: str, failing: list[dict[str, str]] | None = None) -> web.Response:
    body = {"ready": False, "failing": failing or [], "message": message}
    return web.Response(status=503, body=json.dumps(body).encode(), content_type="application/json")


def create_admin_app(metrics: Metrics, state: Readiness) -> web.Application:
    app = web.Application()

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        if state.phase == "starting":
            return _not_ready("starting: not every listener is open yet")
        if state.phase == "draining":
            return _not_ready("draining: shutting down, in-flight requests are finishing")
        failing = [
            result for result in await asyncio.gather(*(run_check(c) for c in state.checks)) if result is not None
        ]
        if not failing:
            return web.Response(text="ready\n")
        message = "; ".join(f"{f['dependency']} at {f['address']} ({f['key']}): {f['problem']}" for f in failing)
        return _not_ready(message, failing)

    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
