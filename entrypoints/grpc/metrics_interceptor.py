"""Times every RPC and labels it with its final status code (``ledger_rpc_duration_seconds``).

Register it FIRST in ``grpc.aio.server(interceptors=[...])``: interceptors run outermost
first, so calls that a later interceptor (authentication, rate limits) turns away are timed
and counted too.

The final code is read from the servicer context: OK when the handler returns (or its stream
ends) without setting one, the aborted code when it calls ``context.abort`` (our handlers map
every failure to a status that way), UNKNOWN for an exception that escapes (what gRPC sends),
CANCELLED when the client goes away, DEADLINE_EXCEEDED when its deadline passed. Server
streams are observed when they end. Methods the server does not have (UNIMPLEMENTED) never
reach a handler and are not counted: their names come from the caller.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from ledger.metrics.definitions import RPC_DURATION, RPC_IN_FLIGHT


def _split(full_method: str) -> tuple[str, str]:
    """``/inventory.ledger.v1.ReservationService/Reserve`` → (service, method)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def _final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED.name
        return grpc.StatusCode.CANCELLED.name
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if code is not None:  # an int set through set_code(): map it back
        for status in grpc.StatusCode:
            if status.value[0] == code:
                return status.name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN.name
    return grpc.StatusCode.OK.name


class _Timer:
    """One call: in flight from start to ``done``, then observed once with its code."""

    __slots__ = ("_in_flight", "_labels", "_started")

    def __init__(self, service: str, method: str) -> None:
        self._labels = (service, method)
        self._in_flight = RPC_IN_FLIGHT.labels(service, method)
        self._in_flight.inc()
        self._started = time.perf_counter()

    def done(self, context: grpc.aio.ServicerContext, error: BaseException | None) -> None:
        elapsed = time.perf_counter() - self._started
        self._in_flight.dec()
        RPC_DURATION.labels(*self._labels, _final_code(context, error)).observe(elapsed)


def _timed_coroutine(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], service: str, method: str
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Unary responses, and streaming handlers that write with ``context.write``."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        timer = _Timer(service, method)
        try:
            result = await behavior(request, context)
        except BaseException as error:
            timer.done(context, error)
            raise
        timer.done(context, None)
        return result

    return timed


def _timed_generator(
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]],
    service: str,
    method: str,
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """Streaming responses from an async generator: observed when the stream ends."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        timer = _Timer(service, method)
        stream = behavior(request, context)
        try:
            async for message in stream:
                yield message
        except BaseException as error:
            timer.done(context, error)
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        timer.done(context, None)

    return timed


def _timed(behavior: Any, service: str, method: str) -> Any:
    if inspect.isasyncgenfunction(behavior):
        return _timed_generator(behavior, service, method)
    if inspect.iscoroutinefunction(behavior):
        return _timed_coroutine(behavior, service, method)
    return behavior  # a synchronous handler (none of ours): left as it is


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = _split(handler_call_details.method)
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _timed(handler.unary_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _timed(handler.unary_stream, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(
                _timed(handler.stream_unary, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _timed(handler.stream_stream, service, method),
                handler.request_deserializer,
                handler.response_serializer,
            )
        return handler
