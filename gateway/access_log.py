"""The gateway's access log: one line per request, cheap, with the pull token replaced by its id.

The token in ``/v2/wt/<token>/...`` is the pull credential, so it never reaches a
log line (wave_grpc/redaction.py); the query string is left out too (nothing a
runtime sends there is worth keeping, and a client could put a secret in it).

Cost: going through ``logging`` for every request (a record, a ``strftime``, a
flushed write) halved the warm-manifest throughput. Lines are formatted here
once and written to stderr in batches (at most 200 ms or 64 KiB late), in the
same shape as the other log lines. The per-request work left is one clock
read, a table lookup for the milliseconds (the rest of the timestamp is
formatted once a second, for the whole process), a dictionary lookup for the
redacted path (a runtime pulls the same few paths over and over; redacting
hashes the token) and one f-string. The logger's level still decides whether
anything is written.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import time
from typing import IO

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_fileresponse import FileResponse
from aiohttp.web_protocol import ERROR as UNPARSABLE
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import Response, StreamResponse

from wave_grpc.redaction import redact_path

FLUSH_SECONDS = 0.2
FLUSH_BYTES = 64 << 10
# Redacted paths kept, and the longest path kept: bounded whatever paths clients send.
REDACTED_PATHS = 4096
REDACTED_PATH_MAX = 512

# ",<ms> INFO gateway.access: " for every millisecond: what follows the second in each line.
_AFTER_SECOND = tuple(f",{ms:03d} INFO gateway.access: " for ms in range(1000))


class _Batch:
    """Lines waiting for one write; flushed on a timer, when big, and at exit."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.lines: list[str] = []
        self.size = 0
        self.timer: asyncio.TimerHandle | None = None

    def add(self, line: str) -> None:
        self.lines.append(line)
        self.size += len(line)
        if self.size >= FLUSH_BYTES:
            self.flush()
        elif self.timer is None:
            try:
                self.timer = asyncio.get_running_loop().call_later(FLUSH_SECONDS, self.flush)
            except RuntimeError:  # no loop (a test calling log() directly): write now
                self.flush()

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.lines:
            self.stream.write("".join(self.lines))
            self.stream.flush()
            self.lines.clear()
            self.size = 0


class _Clock:
    """``YYYY-mm-dd HH:MM:SS`` of the current second, formatted once a second for the process."""

    second = -1
    stamp = ""


_redacted: dict[str, str] = {}


def _redacted_path(path: str) -> str:
    """``redact_path``, remembered: a bounded dict (emptied when full) of the paths seen."""
    redacted = _redacted.get(path)
    if redacted is None:
        redacted = redact_path(path)
        if len(path) <= REDACTED_PATH_MAX:
            if len(_redacted) >= REDACTED_PATHS:
                _redacted.clear()
            _redacted[path] = redacted
    return redacted


class AccessLog(AbstractAccessLogger):
    """``<time> INFO gateway.access: remote "METHOD path" status bytes seconds``; bytes are what
    went to the socket, headers included (a stream cut short counts what was sent before the cut)."""

    # One batch per process, like the stderr it writes to (aiohttp makes a logger per
    # connection); flushed at shutdown by serving, and at interpreter exit.
    _batch: _Batch | None = None

    def __init__(self, logger: logging.Logger, log_format: str = "") -> None:
        super().__init__(logger, log_format)
        if AccessLog._batch is None:
            AccessLog._batch = _Batch(sys.stderr)
            atexit.register(AccessLog.flush)

    @staticmethod
    def _timestamp() -> str:
        """``YYYY-mm-dd HH:MM:SS,mmm INFO gateway.access: ``, local time like the other log lines."""
        now = time.time()
        second = int(now)
        if second != _Clock.second:
            _Clock.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            _Clock.second = second
        return _Clock.stamp + _AFTER_SECOND[int((now - second) * 1000)]

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        if not self.logger.isEnabledFor(logging.INFO) or request.message is UNPARSABLE:
            # A request aiohttp could not parse (a TLS probe, an HTTP/2 client) is no access:
            # its one line comes from aiohttp.server (wave_grpc/cli/logs.py).
            return
        sent = response.body_length
        # (StreamResponse is a MutableMapping, so isinstance is an ABC check: skipped for the common type.)
        if type(response) is not Response and isinstance(response, FileResponse) and request.method == "GET":
            sent += response.content_length or 0  # sendfile bypasses the writer that body_length counts
        batch = AccessLog._batch
        assert batch is not None
        batch.add(
            f'{self._timestamp()}{request.remote or "-"} "{request.method} {_redacted_path(request.path)}" '
            f"{response.status} {sent} {time:.4f}\n"
        )

    @staticmethod
    def flush() -> None:
        if AccessLog._batch is not None:
            AccessLog._batch.flush()
