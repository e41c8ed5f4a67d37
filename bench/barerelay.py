"""The floor of a hashing relay in Python: what fig_proxy_stream and fig_cache_miss are measured against.

``python -m bench.barerelay UPSTREAM_HOST:PORT LISTEN_PORT [FILE]`` answers GETs one at
a time: the same GET to the upstream, its status and headers passed on, then the
body moved with blocking ``recv_into`` into one reused 1 MiB buffer, ``sha256`` and
``sendall`` (and, with FILE, ``write`` to that file, ``fsync`` at the end, as a cache
miss must before its last byte). No HTTP parser, no event loop, no copy beyond the
kernel's: a relay that hashes every byte cannot do less work per byte in Python. It
checks nothing (the digest is computed, never compared), so it is a floor, not a server.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests import components


def _head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of an HTTP head: (head, the body bytes read with it)."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            raise ConnectionError("closed before the end of the head")
        data += more
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def relay(client: socket.socket, upstream: tuple[str, int], keep: str) -> None:
    request, _ = _head(client)
    path = request.split(b" ", 2)[1]
    with socket.create_connection(upstream) as source:
        source.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        head, rest = _head(source)
        client.sendall(head + b"\r\n\r\n")
        hasher, buffer = hashlib.sha256(rest), bytearray(1 << 20)
        view = memoryview(buffer)
        fd = os.open(keep, os.O_WRONLY | os.O_CREAT | os.O_TRUNC) if keep else -1
        try:
            if fd >= 0:
                os.write(fd, rest)
            client.sendall(rest)
            while size := source.recv_into(buffer):
                hasher.update(view[:size])
                if fd >= 0:
                    os.write(fd, view[:size])
                client.sendall(view[:size])
            if fd >= 0:
                os.fsync(fd)
        finally:
            if fd >= 0:
                os.close(fd)


@contextmanager
def running(upstream: str, work: Path, keep: Path | None = None) -> Iterator[tuple[str, int]]:
    """A bare relay to ``upstream`` (host:port) on a free port: (its base URL, its pid)."""
    port = components.free_port()
    argv = [sys.executable, "-m", "bench.barerelay", upstream, str(port), *([str(keep)] if keep else [])]
    process = components.ManagedProcess(argv, log_path=work / f"barerelay-{port}.log", name="barerelay")
    try:
        process.wait_tcp("127.0.0.1", port, timeout=15)
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.stop()


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    keep = sys.argv[3] if len(sys.argv) > 3 else ""
    with socket.create_server(("127.0.0.1", int(sys.argv[2]))) as server:
        while True:
            client, _ = server.accept()
            # A connection that sends no request (a readiness probe) or goes away is not an error here.
            with client, contextlib.suppress(ConnectionError):
                relay(client, (host, int(port)), keep)


if __name__ == "__main__":
    main()
