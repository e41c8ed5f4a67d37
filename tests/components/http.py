"""Plain-HTTP requests and the registry API calls built on them."""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tests.components.oci import ALL_MANIFEST_TYPES, sha256_digest


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)


def _basic_auth(creds: tuple[str, str]) -> str:
    raw = f"{creds[0]}:{creds[1]}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def http_request(
    method: str,
    url: str,
    *,
    headers: Sequence[tuple[str, str]] = (),
    body: bytes | None = None,
    auth: tuple[str, str] | None = None,
    timeout: float = 30.0,
) -> HttpResponse:
    """One plain-HTTP request; headers are a list, so a name may repeat (``Accept``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported: {url}")
    conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.putrequest(method, path, skip_accept_encoding=True)
        sent = {k.lower() for k, _ in headers}
        for key, value in headers:
            conn.putheader(key, value)
        if auth is not None and "authorization" not in sent:
            conn.putheader("Authorization", _basic_auth(auth))
        if body is not None or method in ("PUT", "POST", "PATCH"):
            conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResponse(resp.status, list(resp.getheaders()), data)
    finally:
        conn.close()


def get_manifest(
    registry_url: str,
    repo: str,
    ref: str,
    *,
    auth: tuple[str, str] | None = None,
    accept: Sequence[str] = ALL_MANIFEST_TYPES,
) -> tuple[bytes, str, str]:
    """``GET /v2/<repo>/manifests/<ref>`` -> (bytes, media type, digest).

    The digest is the sha256 of the bytes; it must match ``Docker-Content-Digest``
    and, when ``ref`` is a digest, ``ref`` itself.
    """
    url = f"{registry_url.rstrip('/')}/v2/{repo}/manifests/{ref}"
    resp = http_request("GET", url, headers=[("Accept", a) for a in accept], auth=auth)
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {resp.body[:500]!r}")
    digest = sha256_digest(resp.body)
    header_digest = resp.header("Docker-Content-Digest")
    if header_digest is not None and header_digest != digest:
        raise RuntimeError(f"GET {url}: Docker-Content-Digest {header_digest} != {digest}")
    if ref.startswith("sha256:") and ref != digest:
        raise RuntimeError(f"GET {url}: body digest {digest} != {ref}")
    media_type = (resp.header("Content-Type") or "").split(";")[0].strip()
    body_type = json.loads(resp.body).get("mediaType")
    if isinstance(body_type, str) and body_type and body_type != media_type:
        raise RuntimeError(f"GET {url}: Content-Type {media_type} != mediaType {body_type}")
    return resp.body, media_type, digest


def get_blob(registry_url: str, repo: str, digest: str, *, auth: tuple[str, str] | None = None) -> bytes:
    """``GET /v2/<repo>/blobs/<digest>`` with the digest checked."""
    url = f"{registry_url.rstrip('/')}/v2/{repo}/blobs/{digest}"
    resp = http_request("GET", url, auth=auth)
    if resp.status != 200:
        raise RuntimeError(f"GET {url}: {resp.status} {resp.body[:500]!r}")
    if sha256_digest(resp.body) != digest:
        raise RuntimeError(f"GET {url}: body does not match its digest")
    return resp.body


def push_blob(registry_url: str, repo: str, data: bytes, *, auth: tuple[str, str] | None = None) -> str:
    """Upload a blob (``POST`` an upload, then one ``PUT ?digest=``); returns its digest."""
    digest = sha256_digest(data)
    base = registry_url.rstrip("/")
    start = http_request("POST", f"{base}/v2/{repo}/blobs/uploads/", auth=auth)
    location = start.header("Location")
    if start.status != 202 or location is None:
        raise RuntimeError(f"POST upload to {repo}: {start.status} {start.body[:500]!r}")
    location = urllib.parse.urljoin(base + "/", location)
    sep = "&" if "?" in location else "?"
    done = http_request(
        "PUT",
        f"{location}{sep}digest={urllib.parse.quote(digest)}",
        headers=[("Content-Type", "application/octet-stream")],
        body=data,
        auth=auth,
    )
    if done.status != 201:
        raise RuntimeError(f"PUT blob {digest} to {repo}: {done.status} {done.body[:500]!r}")
    return digest


def put_manifest(
    registry_url: str,
    repo: str,
    ref: str,
    body: bytes,
    media_type: str,
    *,
    auth: tuple[str, str] | None = None,
) -> str:
    """``PUT /v2/<repo>/manifests/<ref>``; returns the digest of ``body``."""
    url = f"{registry_url.rstrip('/')}/v2/{repo}/manifests/{ref}"
    resp = http_request("PUT", url, headers=[("Content-Type", media_type)], body=body, auth=auth)
    if resp.status not in (200, 201):
        raise RuntimeError(f"PUT {url}: {resp.status} {resp.body[:1000]!r}")
    digest = sha256_digest(body)
    got = resp.header("Docker-Content-Digest")
    if got is not None and got != digest:
        raise RuntimeError(f"PUT {url}: registry says {got}, body is {digest}")
    return digest


def raw_exchange(port: int, request: bytes, timeout: float = 15.0) -> str:
    """Send ``request`` bytes as they are (a partial body, a lying header) and read one answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        return conn.recv(65536).decode(errors="replace")


class LoopbackListener:
    """A TCP listener on loopback that accepts and counts connections, and answers nothing.

    ``hold=False`` closes each connection at once (a port that takes no requests);
    ``hold=True`` keeps them open (a server that hangs mid-request).
    """

    def __init__(self, *, hold: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        self.connections = 0
        self._hold = hold
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self._hold:
                self._held.append(conn)
            else:
                conn.close()

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()
