"""gRPC plumbing shared by every RPC: tolerant request decoding and one error mapping."""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from wave_grpc.errors import WaveError
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

log = logging.getLogger("wave_grpc.service.servicer")

_S = TypeVar("_S")
_In = TypeVar("_In")  # the request, or the request stream of a client-streaming RPC
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")


@dataclass(frozen=True, slots=True)
class Malformed:
    """What a request's bytes decode to when they are not the message (see ``add_to_server``)."""

    message: str


def tolerant(message_class: type[Message]) -> Callable[[bytes], Message | Malformed]:
    """A request deserializer that turns undecodable bytes into :class:`Malformed` instead of
    raising: grpc would answer a raising deserializer with a bare INTERNAL/UNKNOWN."""

    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_class.FromString(data)
        except DecodeError:
            return Malformed(
                f"the request is not a valid {message_class.DESCRIPTOR.full_name} message (malformed protobuf bytes)"
            )

    return parse


def add_to_server(servicer: object, server: grpc.aio.Server) -> None:
    """Register the servicer like the generated ``add_AugmentServiceServicer_to_server``,
    with tolerant request deserializers."""
    service = pb.DESCRIPTOR.services_by_name["AugmentService"]
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        request_class = getattr(pb, method.input_type.name)
        response_class = getattr(pb, method.output_type.name)
        make = grpc.stream_unary_rpc_method_handler if method.client_streaming else grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=tolerant(request_class),
            response_serializer=response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def rpc(
    method: Callable[[_S, _In, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]],
) -> Callable[[_S, _In, grpc.aio.ServicerContext[_Req, _Resp]], Awaitable[_Resp]]:
    """Turn expected errors into their gRPC status and bugs into INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self: _S, request: _In, context: grpc.aio.ServicerContext[_Req, _Resp]) -> _Resp:
        if isinstance(request, Malformed):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        try:
            return await method(self, request, context)
        except WaveError as exc:
            log.info("%s: %s %s", method.__name__, exc.kind.grpc_status.name, exc.message)
            await context.abort(exc.kind.grpc_status, exc.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            incident = uuid.uuid4().hex[:12]
            log.exception("%s failed (incident %s)", method.__name__, incident)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error (incident {incident}); see the service log")
        raise AssertionError("unreachable")

    return wrapper
