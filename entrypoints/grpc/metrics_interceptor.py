"""RPC metrics: every call timed and labelled with its final status code
(``ledger_rpc_duration_seconds``) and counted while in flight (``ledger_rpc_in_flight``).

The call guard (``entrypoints.grpc.auth``) does this in its one wrapper per method, around
everything else it does, so calls it turns away (authentication, rate limits, load
shedding) are timed and counted too; health and reflection get :func:`timed` alone.

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
from prometheus_client import Gauge, Histogram

from ledger.metrics.definitions import RPC_DURATION, RPC_IN_FLIGHT

_CODE_NAMES = {status.value[0]: status.name for status in grpc.StatusCode}


def _split(full_method: str) -> tuple[str, str]:
    """``/inventory.ledger.v1.ReservationService/Reserve`` → (service, method)."""
    service, _, method = full_method.lstrip("/").rpartition("/")
    return service, method


def final_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    """The name of the status the call ended with (see the module's docstring)."""
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code.name
    if code is not None:  # an int set through set_code(): map it back
        name = _CODE_NAMES.get(code)
        if name is not None:
            return name
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return "UNKNOWN"
    return "OK"


class RpcMetrics:
    """The series of one method, looked up once: ``labels()`` costs a lock and a few
    allocations per call. Created on the first call, as before, so a method nobody called
    exports no series. Event-loop thread only."""

    __slots__ = ("_durations", "_in_flight", "_method", "_service")

    def __init__(self, full_method: str) -> None:
        self._service, self._method = _split(full_method)
        self._in_flight: Gauge | None = None
        self._durations: dict[str, Histogram] = {}

    def start(self) -> float:
        """Count the call in flight; returns its start (for :meth:`done`)."""
        in_flight = self._in_flight
        if in_flight is None:
            in_flight = self._in_flight = RPC_IN_FLIGHT.labels(self._service, self._method)
        in_flight.inc()
        return time.perf_counter()

    def done(self, started: float, code: str) -> float:
        """Observe the call with its final code; returns its duration in seconds."""
        elapsed = time.perf_counter() - started
        if self._in_flight is not None:
            self._in_flight.dec()
        duration = self._durations.get(code)
        if duration is None:
            duration = RPC_DURATION.labels(self._service, self._method, code)
            self._durations[code] = duration
        duration.observe(elapsed)
        return elapsed


def _timed_coroutine(
    behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], metrics: RpcMetrics
) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Unary responses, and streaming handlers that write with ``context.write``."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = metrics.start()
        try:
            result = await behavior(request, context)
        except BaseException as error:
            metrics.done(started, final_code(context, error))
            raise
        metrics.done(started, final_code(context, None))
        return result

    return timed


def _timed_generator(
    behavior: Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]], metrics: RpcMetrics
) -> Callable[[Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """Streaming responses from an async generator: observed when the stream ends."""

    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = metrics.start()
        stream = behavior(request, context)
        try:
            async for message in stream:
                yield message
        except BaseException as error:
            metrics.done(started, final_code(context, error))
            raise
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        metrics.done(started, final_code(context, None))

    return timed


def timed(behavior: Any, metrics: RpcMetrics) -> Any:
    """``behavior`` (one of a method handler's functions) with metrics and nothing else."""
    if inspect.isasyncgenfunction(behavior):
        return _timed_generator(behavior, metrics)
    if inspect.iscoroutinefunction(behavior):
        return _timed_coroutine(behavior, metrics)
    return behavior  # a synchronous handler (none of ours): left as it is
