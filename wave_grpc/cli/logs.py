"""The process's logging: one format, ``-v`` for our debug lines, and noise kept out.

Two kinds of noise buried the lines an operator needs:

- aiohttp logs every request it cannot parse at ERROR with a traceback. On the
  gateway's and the admin port that is a client speaking another protocol (a gRPC
  client pointed at the wrong port, a runtime's TLS probe of a plain-http
  registry): the client gets a 400 that says so, and the log gets one line saying
  what happened and what to change, never a traceback.
- grpcio's Python side logs a DEBUG line for every channel and call ("Loaded
  running loop"); ``-v`` is for wave-grpc's own debug lines, so grpc stays at INFO.
  Its C core reads ``GRPC_VERBOSITY`` once, when it initialises: set here, before
  any channel or server exists, unless the operator chose a level.
"""

from __future__ import annotations

import logging
import os
import sys

from aiohttp.http_exceptions import HttpProcessingError

# grpcio's C core: errors only (its default), whatever -v says.
_GRPC_CORE_VERBOSITY = "ERROR"
# The longest piece of a parser's complaint kept in a line (it may quote raw bytes).
_COMPLAINT_MAX = 120


def _complaint(exc: HttpProcessingError) -> str:
    """The parser's complaint in one short line (its message can quote the bytes received)."""
    first = (exc.message or type(exc).__name__).strip().splitlines()[0].rstrip(":")
    return first if len(first) <= _COMPLAINT_MAX else first[: _COMPLAINT_MAX - 1] + "…"


class UnparsableRequests(logging.Filter):
    """aiohttp's "Error handling request" for a request it could not parse, as one line.

    An HTTP/2 preface (``PRI * HTTP/2.0``: a gRPC client) says which port gRPC
    clients take; a first request that is not HTTP at all (a TLS handshake on the
    plain-http port) stays at DEBUG, where aiohttp puts it, without a traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
        complaint = _complaint(exc)
        if "PRI" in complaint:
            record.msg = (
                "%s spoke HTTP/2 (a gRPC client?) to this HTTP/1.1 port and was answered 400; "
                "gRPC clients take the AugmentService's address, [service].listen"
            )
            record.args = (remote,)
        else:
            record.msg = "unparsable request from %s (%s), answered 400: not an HTTP/1.1 client?"
            record.args = (remote, complaint)
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def configure_logging(verbose: bool) -> None:
    """Log to stderr; ``verbose`` turns on wave-grpc's debug lines, not grpc's or aiohttp's parser noise."""
    os.environ.setdefault("GRPC_VERBOSITY", _GRPC_CORE_VERBOSITY)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("grpc").setLevel(logging.INFO)
    logging.getLogger("aiohttp.server").addFilter(UnparsableRequests())
