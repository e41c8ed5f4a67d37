"""A fake Seqera Platform: a real HTTP server on 127.0.0.1 answering ``GET /user-info``."""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from typing import Any

# Test tokens: the fake platform accepts CAROL, answers BUSY with 429, BROKEN with 500, WRONG with 401.
CAROL = "carol-token"
BUSY = "busy-token"
BROKEN = "broken-token"
WRONG = "wrong-token"


class FakePlatform:
    """``GET <prefix>/user-info`` as Seqera Platform answers it, for prefixes "", "/alt" and "/redirect".

    ``calls`` counts requests by (path, token) so tests can see caching and that
    a token never went to an endpoint it should not.
    """

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()
        platform = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any] | None = None, **headers: str) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in headers.items():
                    self.send_header(key.replace("_", "-"), value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                auth = self.headers.get("Authorization", "")
                token = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else ""
                with platform._lock:
                    platform.calls[(self.path, token)] += 1
                if self.path == "/redirect/user-info":
                    self._answer(302, Location=f"{platform.url}/user-info")
                elif self.path not in ("/user-info", "/alt/user-info"):
                    self._answer(404, {"message": "not found"})
                elif token == CAROL:
                    self._answer(200, {"user": {"id": 7, "userName": "carol", "email": "carol@example.com"}})
                elif token == BUSY:
                    self._answer(429, {"message": "slow down"})
                elif token == BROKEN:
                    self._answer(500, {"message": "oops"})
                else:
                    self._answer(401, {"message": "Unauthorized"})

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-platform", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def count(self, path: str = "/user-info", token: str = CAROL) -> int:
        with self._lock:
            return self.calls[(path, token)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
