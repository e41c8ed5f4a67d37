"""Every RPC the server answers, counted by method and status code and timed.

A grpc.aio server interceptor: it wraps each method's handler, so the
AugmentService, health and reflection are all counted, however a call ends
(returned, aborted with a code, failed, cancelled by the client). Label values
are bounded: the methods are those the server's protos declare (a client may
call any path; an unknown one is ``other``), the codes are gRPC's.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from wave_grpc.metrics import Metrics
from wave_grpc.proto.wave.augment.v1 import augment_pb2 as pb

OTHER_METHOD = "other"

# grpc-stubs makes the interceptor generic; grpcio's class is not subscriptable at run time.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor

# "/package.Service/Method" -> "package.Service/Method", for every method the server serves.
KNOWN_METHODS = frozenset(
    f"{service.full_name}/{method.name}"
    for descriptor in (pb.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)
    for service in descriptor.services_by_name.values()
    for method in service.methods
)

_CODES_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def method_label(path: str) -> str:
    name = path.lstrip("/")
    return name if name in KNOWN_METHODS else OTHER_METHOD


def _code_name(context: Any, failed: BaseException | None) -> str:
    """The status the call ended with: what the method set or aborted with, else OK, or what the failure means."""
    if isinstance(failed, (GeneratorExit, StopAsyncIteration)):
        failed = None
    code = context.code()
    if isinstance(code, int):
        code = _CODES_BY_VALUE.get(code)
    if isinstance(code, grpc.StatusCode) and (code is not grpc.StatusCode.OK or failed is None):
        return code.name
    if failed is None:
        return grpc.StatusCode.OK.name
    if isinstance(failed, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED.name
    return grpc.StatusCode.UNKNOWN.name


class RpcMetrics(_ServerInterceptor):
    """Counts into ``wave_grpc_rpcs_total{method,code}`` and times into ``wave_grpc_rpc_duration_seconds{method}``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # Method path -> (the handler grpc gave, its counted wrapper): a method's handler is the
        # same object on every call, so it is wrapped once, not once per RPC.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]] = {}

    def _observe(self, method: str, context: Any, started: float, failed: BaseException | None) -> None:
        self._metrics.rpcs.labels(method=method, code=_code_name(context, failed)).inc()
        self._metrics.rpc_duration.labels(method=method).observe(time.monotonic() - started)

    def _single(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def observed(request: Any, context: Any) -> Any:
            started = time.monotonic()
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                self._observe(method, context, started, exc)
                raise
            self._observe(method, context, started, None)
            return response

        return observed

    def _streamed(self, method: str, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def observed(request: Any, context: Any) -> AsyncIterator[Any]:
            started = time.monotonic()
            try:
                result = behavior(request, context)
                if inspect.isasyncgen(result):
                    async for response in result:
                        yield response
                else:  # a method that writes with context.write()
                    await result
            except BaseException as exc:
                self._observe(method, context, started, exc)
                raise
            self._observe(method, context, started, None)

        return observed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any]]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any]:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        path = handler_call_details.method
        known = self._wrapped.get(path)
        if known is not None and known[0] is handler:
            return known[1]
        method = method_label(path)
        wrapped = self._wrap(method, handler)
        if method != OTHER_METHOD:  # bounded: only the methods the server declares are kept
            self._wrapped[path] = (handler, wrapped)
        return wrapped

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._single(method, handler.unary_unary), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(self._single(method, handler.stream_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._streamed(method, handler.unary_stream), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(self._streamed(method, handler.stream_stream), **serializers)
        return handler
