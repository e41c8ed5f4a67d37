"""The gateway's access log: one line per request, with the pull token replaced by its id.

The token in ``/v2/wt/<token>/...`` is the pull credential, so it never reaches a
log line (wave_grpc/redaction.py); the query string is left out too (nothing a
runtime sends there is worth keeping, and a client could put a secret in it).
"""

from __future__ import annotations

from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from wave_grpc.redaction import redact_path


class AccessLog(AbstractAccessLogger):
    def log(self, request: BaseRequest, response: StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s" %d %d %.4f',
            request.remote or "-",
            request.method,
            redact_path(request.path),
            response.status,
            response.body_length,
            time,
        )
