"""The one error catalogue.

Every expected failure is a :class:`WaveError` carrying an :class:`ErrorKind`.
A kind is registered once with its OCI distribution code, its HTTP status and
its gRPC status, so the gateway and the service answer the same failure the same
way. Anything that is not a ``WaveError`` is a bug: it is logged with its
traceback and answered as an internal error without details.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True, slots=True)
class ErrorKind:
    """One entry of the catalogue."""

    oci_code: str
    http_status: int
    grpc_status: grpc.StatusCode
    summary: str


class Errors:
    """The catalogue. Codes follow the OCI distribution spec where one exists."""

    BLOB_UNKNOWN = ErrorKind("BLOB_UNKNOWN", 404, grpc.StatusCode.NOT_FOUND, "blob unknown to registry")
    DIGEST_INVALID = ErrorKind(
        "DIGEST_INVALID", 400, grpc.StatusCode.INVALID_ARGUMENT, "provided digest did not match content"
    )
    MANIFEST_UNKNOWN = ErrorKind("MANIFEST_UNKNOWN", 404, grpc.StatusCode.NOT_FOUND, "manifest unknown to registry")
    MANIFEST_INVALID = ErrorKind("MANIFEST_INVALID", 400, grpc.StatusCode.INVALID_ARGUMENT, "manifest invalid")
    NAME_INVALID = ErrorKind("NAME_INVALID", 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid repository name")
    NAME_UNKNOWN = ErrorKind("NAME_UNKNOWN", 404, grpc.StatusCode.NOT_FOUND, "repository name not known to registry")
    INVALID_ARGUMENT = ErrorKind("INVALID_ARGUMENT", 400, grpc.StatusCode.INVALID_ARGUMENT, "invalid request")
    SIZE_INVALID = ErrorKind(
        "SIZE_INVALID", 400, grpc.StatusCode.INVALID_ARGUMENT, "provided length did not match content length"
    )
    UNAUTHORIZED = ErrorKind("UNAUTHORIZED", 401, grpc.StatusCode.UNAUTHENTICATED, "authentication required")
    DENIED = ErrorKind("DENIED", 403, grpc.StatusCode.PERMISSION_DENIED, "requested access to the resource is denied")
    UNSUPPORTED = ErrorKind("UNSUPPORTED", 405, grpc.StatusCode.UNIMPLEMENTED, "the operation is unsupported")
    REQUEST_TIMEOUT = ErrorKind("UNKNOWN", 408, grpc.StatusCode.DEADLINE_EXCEEDED, "the request did not arrive in time")
    RANGE_NOT_SATISFIABLE = ErrorKind(
        "RANGE_INVALID", 416, grpc.StatusCode.OUT_OF_RANGE, "the requested range is not satisfiable"
    )
    TOO_MANY_REQUESTS = ErrorKind("TOOMANYREQUESTS", 429, grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests")
    # The source registry failed us: not the caller's fault, worth a retry.
    UPSTREAM_UNAVAILABLE = ErrorKind("UNAVAILABLE", 502, grpc.StatusCode.UNAVAILABLE, "upstream registry unavailable")
    UPSTREAM_TIMEOUT = ErrorKind("UNAVAILABLE", 504, grpc.StatusCode.DEADLINE_EXCEEDED, "upstream registry timed out")
    # The source registry refused us (401/403 upstream). The caller authenticated
    # fine; our route lacks (working) credentials, so neither UNAUTHENTICATED nor a
    # bare 401 (a runtime would answer it with its own credentials, which we do
    # not want): FAILED_PRECONDITION over gRPC, 403 DENIED on the registry API.
    UPSTREAM_DENIED = ErrorKind(
        "DENIED", 403, grpc.StatusCode.FAILED_PRECONDITION, "the source registry refused access to the image"
    )
    # A URL (an http(s) layer location, a redirect target) this deployment does not route.
    NOT_ROUTED = ErrorKind("DENIED", 403, grpc.StatusCode.PERMISSION_DENIED, "location not allowed by this deployment")
    SERVICE_UNAVAILABLE = ErrorKind("UNAVAILABLE", 503, grpc.StatusCode.UNAVAILABLE, "service unavailable")
    # An HTTP body over the gateway's limit (Wave REST bodies with big inline layers).
    REQUEST_TOO_LARGE = ErrorKind(
        "SIZE_INVALID", 413, grpc.StatusCode.RESOURCE_EXHAUSTED, "request body over the size limit"
    )
    # A store's disk (or quota) is full: nothing was half-written; the operator must make room.
    STORE_FULL = ErrorKind("UNAVAILABLE", 507, grpc.StatusCode.RESOURCE_EXHAUSTED, "insufficient storage")
    INTERNAL = ErrorKind("UNKNOWN", 500, grpc.StatusCode.INTERNAL, "unknown error")


class WaveError(Exception):
    """An expected failure: bad input, a missing thing, an unreachable upstream.

    ``message`` says what went wrong and what to change; ``detail`` is optional
    structured data rendered into the OCI error body. Neither may carry a
    credential.
    """

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        detail: Any = None,
        *,
        retry_after: float | None = None,
        blob_size: int | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.detail = detail
        # Seconds a client should wait before asking again (a rate limit): a Retry-After header.
        self.retry_after = retry_after
        # The size of a blob whose range was not satisfiable: "Content-Range: bytes */<size>".
        self.blob_size = blob_size

    def oci_body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.kind.oci_code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}

    def __repr__(self) -> str:
        return f"WaveError({self.kind.oci_code}, {self.message!r})"


# An echoed value is cut to this many characters: a huge field quoted back would
# turn a bad request into an over-size answer (RESOURCE_EXHAUSTED, 429) that clients retry.
ECHO_LIMIT = 80


def brief(value: object, limit: int = ECHO_LIMIT) -> str:
    """The repr of a caller's value for an error message, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return f"{text[:limit]!r}... ({len(text)} characters)"
    return repr(text)


def shown(value: str, limit: int = ECHO_LIMIT) -> str:
    """A caller's value as it reads when it is short and plain (a digest, a name), else :func:`brief`."""
    if len(value) <= limit and value.isprintable() and not any(c.isspace() for c in value):
        return value
    return brief(value, limit)


def invalid_argument(field: str, problem: str) -> WaveError:
    """A bad request field: the message starts with the field's name."""
    return WaveError(Errors.INVALID_ARGUMENT, f"{field}: {problem}")


# The errors a write gets when the filesystem, or the writer's quota on it, has no room left.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS


def store_full(store: str) -> WaveError:
    """``store`` (e.g. "the layer store ([layers].store = file:///data)") has no room left."""
    return WaveError(
        Errors.STORE_FULL,
        f"{store} is full; nothing was stored: ask the operator to free space there (or move it to a bigger disk), "
        "then try again",
    )
