"""An OpenID Connect issuer on 127.0.0.1 for tests: discovery and JWKS from a small aiohttp app.

Its keys are made with ``cryptography`` in the test and its tokens signed with PyJWT.
The app runs on its own event loop in a thread, so sync tests (a ``wave-grpc serve``
process) and async tests (the verifier in-process) can both use it. ``fetches``
counts requests per path, so tests can see every key refresh.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests import components

JWKS_PATH = "/keys"
DISCOVERY_PATH = "/.well-known/openid-configuration"
# Answers a wrong issuer must never have quoted back: non-JSON text, and a key set too big to read.
NOT_JSON_PATH, NOT_JSON_TEXT = "/not-json", "issuer-internal-detail-do-not-echo"
HUGE_PATH = "/huge"


class SigningKeyPair:
    """A key the issuer signs with and publishes (public part only)."""

    def __init__(self, kid: str, algorithm: str = "RS256") -> None:
        self.kid = kid
        self.algorithm = algorithm
        if algorithm == "ES256":
            self.private: Any = ec.generate_private_key(ec.SECP256R1())
            self.public_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.private.public_key()))
        else:
            self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            self.public_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.private.public_key()))
        self.public_jwk.update(kid=kid, use="sig", alg=algorithm)


class OidcIssuer:
    def __init__(self, audience: str = "wave-grpc", path: str = "") -> None:
        self.audience = audience
        self.port = components.free_port()
        self.url = f"http://127.0.0.1:{self.port}{path}"
        self._path = path
        self.keys = [SigningKeyPair("key-1")]
        self.fetches: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # -- the server ---------------------------------------------------------------------

    def start(self) -> OidcIssuer:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="oidc-issuer", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(timeout=30)
        return self

    async def _serve(self) -> None:
        app = web.Application()
        app.router.add_get(self._path + DISCOVERY_PATH, self._discovery)
        app.router.add_get(self._path + JWKS_PATH, self._jwks)
        app.router.add_get(self._path + NOT_JSON_PATH, self._not_json)
        app.router.add_get(self._path + HUGE_PATH, self._huge)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()
        self._loop = self._thread = None

    def _count(self, path: str) -> None:
        with self._lock:
            self.fetches[path] += 1

    async def _discovery(self, request: web.Request) -> web.Response:
        self._count(DISCOVERY_PATH)
        return web.json_response({"issuer": self.url, "jwks_uri": self.url + JWKS_PATH})

    async def _jwks(self, request: web.Request) -> web.Response:
        self._count(JWKS_PATH)
        return web.json_response({"keys": [k.public_jwk for k in list(self.keys)]})

    async def _not_json(self, request: web.Request) -> web.Response:
        return web.Response(text=NOT_JSON_TEXT, content_type="application/json")

    async def _huge(self, request: web.Request) -> web.Response:
        return web.Response(text='{"keys": [' + " " * (1 << 20) + "]}", content_type="application/json")

    def jwks_fetches(self) -> int:
        with self._lock:
            return self.fetches[JWKS_PATH]

    # -- tokens -------------------------------------------------------------------------

    def rotate(self, kid: str, algorithm: str = "RS256") -> SigningKeyPair:
        """Publish a new key (the old one stays published, as issuers overlap them)."""
        key = SigningKeyPair(kid, algorithm)
        self.keys = [*self.keys, key]
        return key

    def token(self, subject: str, *, key: SigningKeyPair | None = None, lifetime: float = 300, **claims: Any) -> str:
        """A token as this issuer signs it; ``claims`` override (``aud=``, ``iss=``, ``exp=``; None drops one)."""
        key = key or self.keys[0]
        now = int(time.time())
        payload = {"iss": self.url, "aud": self.audience, "sub": subject, "iat": now, "exp": now + lifetime}
        payload.update(claims)
        payload = {name: value for name, value in payload.items() if value is not None}
        return jwt.encode(payload, key.private, algorithm=key.algorithm, headers={"kid": key.kid})
