"""What every RPC shares: correlation id, caller context, and failure → status mapping."""

from __future__ import annotations

import asyncio
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
from grpc_status import rpc_status

from ledger.api.errors import status_for
from ledger.use_cases.context import ANONYMOUS, CallContext

CORRELATION_HEADER = "x-correlation-id"
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")

T = TypeVar("T")
Handler = Callable[[Any, Any, CallContext], Awaitable[Any]]


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


async def settled(future: Future[T]) -> T:
    """Await a pipeline future from the event loop."""
    return await asyncio.wrap_future(future)
