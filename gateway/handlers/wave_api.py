"""Plumbing shared by the Wave REST route families (``wave_containers``, ``wave_tokens``, ``wave_info``).

The REST API is a translation, not a second implementation: every route calls
the AugmentService over the gateway's gRPC channel, forwarding the caller's
``Authorization`` header as gRPC metadata, so the service alone authenticates,
validates and stores. Bodies map to the proto messages by the proto3 JSON
mapping (``containerImage`` <-> ``container_image``); gRPC errors come back as
Wave's ``{"message"}`` bodies (rendered by gateway/errors.py) with the HTTP
status Wave's clients expect, and field names in messages are given in the
JSON spelling the client sent.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf.json_format import ParseDict, ParseError
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from gateway.clients import client_address
from gateway.keys import CONFIG, GATEWAY_PROOF, SERVICE
from wave_grpc.channel import CLIENT_ADDRESS_METADATA
from wave_grpc.errors import ErrorKind, Errors, WaveError, brief, invalid_argument

if TYPE_CHECKING:
    from wave_grpc.proto.wave.augment.v1.augment_pb2_grpc import AugmentServiceAsyncStub

CREATE_TIMEOUT = 120.0  # creation resolves the source image upstream, with retries
CALL_TIMEOUT = 30.0
MAX_JSON_CONTAINERS = 100_000

_Response = TypeVar("_Response")

# How a gRPC status reads over Wave's REST API: the statuses Wave's clients handle.
_KINDS: Mapping[grpc.StatusCode, ErrorKind] = {
    grpc.StatusCode.INVALID_ARGUMENT: Errors.INVALID_ARGUMENT,
    # The source registry refused the image: over REST, like Wave, a bad request.
    grpc.StatusCode.FAILED_PRECONDITION: Errors.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED: Errors.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: Errors.DENIED,
    grpc.StatusCode.NOT_FOUND: Errors.NAME_UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED: Errors.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNAVAILABLE: Errors.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: Errors.UPSTREAM_TIMEOUT,
}
_FIELD_PATH = re.compile(r"^([a-z][a-z0-9_]*(?:\[\d+\])?(?:\.[a-z][a-z0-9_]*(?:\[\d+\])?)*): ")


def service(request: web.Request) -> AugmentServiceAsyncStub:
    """The AugmentService, over the gateway's gRPC channel."""
    return request.app[SERVICE]


def metadata(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The caller's ``Authorization`` header and, with the gateway's proof, its address, as gRPC metadata.

    The service checks the credential, and believes the address only from a caller that
    proves it is the gateway (it limits anonymous callers by it); the address is the peer's,
    or X-Forwarded-For's from a proxy in ``[gateway].trusted_proxies``.
    """
    proof = request.app[GATEWAY_PROOF]
    forwarded = ((CLIENT_ADDRESS_METADATA, client_address(request)),) if proof else ()
    value = request.headers.get("Authorization", "").strip()
    return ((("authorization", value),) if value else ()) + forwarded + proof


def _camel(segment: str) -> str:
    head, *rest = segment.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def json_field_path(message: str) -> str:
    """``container_config.layers[0].gzip_digest: ...`` -> ``containerConfig.layers[0].gzipDigest: ...``."""
    match = _FIELD_PATH.match(message)
    if match is None:
        return message
    path = ".".join(_camel(part) for part in match.group(1).split("."))
    return path + message[match.end(1) :]


def from_grpc(exc: grpc.aio.AioRpcError) -> WaveError:
    """The AugmentService's answer as the REST error Wave's clients parse."""
    code = exc.code()
    details = exc.details() or code.name
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return WaveError(
            Errors.SERVICE_UNAVAILABLE, f"the AugmentService does not implement this call ({details}); upgrade it"
        )
    kind = _KINDS.get(code)
    if kind is None:
        return WaveError(Errors.INTERNAL, f"the AugmentService failed: {code.name}: {details}")
    if code == grpc.StatusCode.UNAVAILABLE and "failed to connect" in details.lower():
        details = "the gateway cannot reach the AugmentService; retry later"
    return WaveError(kind, json_field_path(details))


async def call_service(
    request: web.Request,
    rpc: Callable[..., Awaitable[_Response]],
    message: Message,
    deadline: float = CALL_TIMEOUT,
) -> _Response:
    """One AugmentService call for a REST request: the caller's credentials go
    along as metadata, and a gRPC failure becomes the matching Wave error."""
    try:
        return await rpc(message, metadata=metadata(request), timeout=deadline)
    except grpc.aio.AioRpcError as exc:
        raise from_grpc(exc) from None


async def read_json_object(request: web.Request) -> dict[str, Any]:
    limit = request.app[CONFIG].gateway.max_body_size
    too_large = WaveError(
        Errors.REQUEST_TOO_LARGE,
        f"the request body is over {limit} bytes ([gateway].max_body_size); put big layers in the layer "
        "store with the gRPC UploadLayer call (wave-grpc augment does) and reference them",
    )
    # A declared length over the limit is refused before a byte is read: waiting
    # for a body we will refuse only holds a connection.
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    timeout = request.app[CONFIG].gateway.body_timeout.total_seconds()
    try:
        async with asyncio.timeout(timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except TimeoutError:
        raise WaveError(
            Errors.REQUEST_TIMEOUT,
            f"the request body did not arrive within {timeout:g}s ([gateway].body_timeout); send it again",
        ) from None
    # Each decoded object or array costs about a hundred bytes: a body of tiny ones
    # would inflate many times over in memory. Counting brackets is one C pass.
    containers = raw.count(b"{") + raw.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise WaveError(
            Errors.INVALID_ARGUMENT,
            f"the request body holds more than {MAX_JSON_CONTAINERS} JSON objects and arrays; a Wave request "
            "needs a few dozen",
        )
    try:
        body = json.loads(raw)
    except RecursionError:
        raise WaveError(Errors.INVALID_ARGUMENT, "the request body is JSON nested too deeply") from None
    except ValueError as exc:
        raise WaveError(Errors.INVALID_ARGUMENT, f"the request body is not JSON: {brief(str(exc))}") from None
    if not isinstance(body, dict):
        raise WaveError(Errors.INVALID_ARGUMENT, "the request body must be a JSON object")
    return body


def _check_shapes(value: Mapping[str, Any], descriptor: Any, path: str) -> None:
    """Refuse what ParseDict would quietly accept: a string where an object belongs.

    ``descriptor`` is a message Descriptor (the upb or the pure-Python class, which the stubs type apart).
    """
    for field in descriptor.fields:
        item = value.get(field.json_name, value.get(field.name))
        if item is None or field.message_type is None or field.message_type.full_name.startswith("google.protobuf."):
            continue
        where = f"{path}{field.json_name}"
        repeated = field.is_repeated
        entries = item if repeated and isinstance(item, list) else [item]
        for i, entry in enumerate(entries):
            at = f"{where}[{i}]" if repeated else where
            if not isinstance(entry, dict):
                raise invalid_argument(at, f"must be a JSON object, got {type(entry).__name__} {brief(entry, 40)}")
            _check_shapes(entry, field.message_type, f"{at}.")


def parse_message(body: dict[str, Any], message: Message) -> None:
    """The proto3 JSON mapping of ``body`` into ``message``; unknown fields ignored, null is unset."""
    _check_shapes(body, message.DESCRIPTOR, "")
    try:
        ParseDict(body, message, ignore_unknown_fields=True)
    except ParseError as exc:
        raise WaveError(Errors.INVALID_ARGUMENT, f"the request body does not fit Wave's API: {exc}") from None


def rfc3339(timestamp: Timestamp) -> str:
    """``2024-04-09T21:19:01Z`` (UTC, Z), as Wave writes instants."""
    return timestamp.ToJsonString()


def json_response(body: Mapping[str, Any], status: int = 200) -> web.Response:
    """JSON without ``null``s: Wave's clients read a missing field and a null alike."""
    clean = {key: value for key, value in body.items() if value is not None}
    return web.Response(status=status, body=json.dumps(clean).encode(), content_type="application/json")
