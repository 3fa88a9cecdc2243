"""What every RPC shares: correlation id, caller context, and failure → status mapping."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ledger.api.errors import ERROR_DOMAIN, status_for
from ledger.use_cases.context import ANONYMOUS, CallContext
from projections.watch import TooManyWatchers, WatchClosed, WatchError, WatchOverflow

CORRELATION_HEADER = "x-correlation-id"
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")

T = TypeVar("T")
Handler = Callable[[Any, Any, CallContext], Awaitable[Any]]
StreamHandler = Callable[[Any, Any, CallContext], AsyncIterator[Any]]


def correlation_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-correlation-id if well-formed, else a fresh one (never log raw input)."""
    for key, value in context.invocation_metadata() or ():
        if key == CORRELATION_HEADER and isinstance(value, str) and _CORRELATION_ID.match(value):
            return value
    return uuid.uuid4().hex


def unary(handler: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        correlation_id = correlation_id_of(context)
        await context.send_initial_metadata(((CORRELATION_HEADER, correlation_id),))
        try:
            ctx = CallContext(ANONYMOUS, correlation_id, context.time_remaining())
            return await handler(self, request, ctx)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            status = rpc_status.to_status(status_for(error, correlation_id))
            await context.abort(status.code, status.details, status.trailing_metadata)

    return wrapper


def server_stream(
    handler: StreamHandler,
) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """``unary`` for server-streaming methods: the handler is an async generator.

    A failure before or between messages ends the stream with its status; the client
    cancelling ends it quietly (the handler's ``finally`` blocks run).
    """

    @functools.wraps(handler)
    async def wrapper(
        self: Any, request: Any, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        correlation_id = correlation_id_of(context)
        await context.send_initial_metadata(((CORRELATION_HEADER, correlation_id),))
        try:
            ctx = CallContext(ANONYMOUS, correlation_id, context.time_remaining())
            async with contextlib.aclosing(handler(self, request, ctx)) as stream:
                async for message in stream:
                    yield message
        except asyncio.CancelledError:
            raise
        except Exception as error:
            status = rpc_status.to_status(_stream_status_for(error, correlation_id))
            await context.abort(status.code, status.details, status.trailing_metadata)

    return wrapper


def _stream_status_for(error: BaseException, correlation_id: str) -> status_pb2.Status:
    """``status_for`` plus the watch's own failures (candidates for ledger/api/errors.py)."""
    if not isinstance(error, WatchError):
        return status_for(error, correlation_id)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=ERROR_DOMAIN)
    details = [info]
    code = code_pb2.RESOURCE_EXHAUSTED
    if isinstance(error, TooManyWatchers):
        details.append(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=1)))
    elif isinstance(error, WatchClosed):
        code = code_pb2.UNAVAILABLE
    elif not isinstance(error, WatchOverflow):
        return status_for(error, correlation_id)
    packed = []
    for detail in details:
        container = any_pb2.Any()
        container.Pack(detail)
        packed.append(container)
    return status_pb2.Status(code=code, message=str(error), details=packed)


async def settled(future: Future[T]) -> T:
    """Await a pipeline future from the event loop."""
    return await asyncio.wrap_future(future)
