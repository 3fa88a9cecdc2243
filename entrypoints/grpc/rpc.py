"""What every RPC shares: correlation id, caller context, channel rights, the deadline, and
failure → status mapping.

The call guard (``entrypoints.grpc.auth.CallGuard``, wrapped around each handler when it is
registered) authenticates the caller and puts the :class:`Call` in :data:`CURRENT_CALL`
before these wrappers run; without the guard (servicers used directly) a call is anonymous
and unrestricted.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import re
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, descriptor, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from entrypoints.grpc.errors import (
    ERROR_DOMAIN,
    DeadlineExceeded,
    PermissionDenied,
    counted,
    status_for,
)
from entrypoints.grpc.tokens import ANONYMOUS_PRINCIPAL, Principal
from ledger.ids import new_uuid4
from ledger.use_cases.context import CallContext
from projections.watch import TooManyWatchers, WatchClosed, WatchError, WatchOverflow

CORRELATION_HEADER = "x-correlation-id"
_CORRELATION_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")

T = TypeVar("T")
Handler = Callable[[Any, Any, CallContext], Awaitable[Any]]
StreamHandler = Callable[[Any, Any, CallContext], AsyncGenerator[Any, None]]


def correlation_id_of(context: grpc.aio.ServicerContext) -> str:
    """The caller's x-correlation-id if well-formed, else a fresh one (never log raw input)."""
    for key, value in context.invocation_metadata() or ():
        if key == CORRELATION_HEADER and isinstance(value, str) and _CORRELATION_ID.match(value):
            return value
    return new_uuid4().hex


@dataclass
class Call:
    """One call as the guard admitted it."""

    method: str
    correlation_id: str
    principal: Principal = ANONYMOUS_PRINCIPAL
    started: float = field(default_factory=time.perf_counter)


CURRENT_CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "ledger_current_call", default=None
)


def _call_of(context: grpc.aio.ServicerContext) -> Call:
    call = CURRENT_CALL.get()
    return call if call is not None else Call("", correlation_id_of(context))


def _context_of(call: Call, context: grpc.aio.ServicerContext) -> CallContext:
    return CallContext(
        call.principal.name,
        call.correlation_id,
        context.time_remaining(),
        call.principal.channels,
    )


def check_channel(request: Any, principal: Principal) -> None:
    """A request naming a channel the principal may not act for: PERMISSION_DENIED.

    Every request message with a top-level string field ``channel`` is checked, so a new RPC
    gets the rule without a table entry. An empty channel passes here: required channels are
    INVALID_ARGUMENT in validation, and the optional one of Get/Commit/Release is checked
    against the reservation's own channel (NOT_FOUND: existence is not leaked).
    """
    if principal.channels is None:
        return
    channel_field = request.DESCRIPTOR.fields_by_name.get("channel")
    if channel_field is None or channel_field.type != descriptor.FieldDescriptor.TYPE_STRING:
        return
    channel = request.channel
    if channel and channel not in principal.channels:
        raise PermissionDenied(
            "CHANNEL_NOT_ALLOWED",
            f"principal {principal.name!r} may not act for channel {channel!r}",
            principal=principal.name,
            channel=channel,
        )


async def _within_deadline(work: Awaitable[T], remaining: float | None) -> T:
    """Stop the work when the caller's deadline passes (a queued write is then skipped:
    ``settled`` cancels its pipeline future)."""
    if remaining is None:
        return await work
    scope = asyncio.timeout(remaining)
    try:
        async with scope:
            return await work
    except TimeoutError:
        if scope.expired():
            raise DeadlineExceeded("the call's deadline passed before it was answered") from None
        raise


def unary(handler: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        call = _call_of(context)
        correlation_id = call.correlation_id
        await context.send_initial_metadata(((CORRELATION_HEADER, correlation_id),))
        try:
            check_channel(request, call.principal)
            ctx = _context_of(call, context)
            return await _within_deadline(handler(self, request, ctx), ctx.time_remaining_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            status = rpc_status.to_status(counted(status_for(error, correlation_id)))
            await _abort(context, status)

    return wrapper


async def _abort(context: grpc.aio.ServicerContext, status: Any) -> None:
    """End the call with ``status``, unless the caller ended it first: its deadline passing
    on both sides at once leaves no call to answer, and grpc would log the failed send as an
    error with a traceback (seen in CI: DEADLINE_EXCEEDED raced the client's own)."""
    if context.cancelled():
        raise asyncio.CancelledError
    try:
        await context.abort(status.code, status.details, status.trailing_metadata)
    except grpc.aio.AbortError:
        raise  # how abort unwinds the handler
    except Exception:
        if context.cancelled() or context.done():
            raise asyncio.CancelledError from None
        raise


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
        call = _call_of(context)
        correlation_id = call.correlation_id
        await context.send_initial_metadata(((CORRELATION_HEADER, correlation_id),))
        try:
            check_channel(request, call.principal)
            ctx = _context_of(call, context)
            # A stream's deadline is enforced by gRPC, which cancels this task.
            async with contextlib.aclosing(handler(self, request, ctx)) as stream:
                async for message in stream:
                    yield message
        except asyncio.CancelledError:
            raise
        except Exception as error:
            status = rpc_status.to_status(counted(_stream_status_for(error, correlation_id)))
            await context.abort(status.code, status.details, status.trailing_metadata)

    return wrapper


def _stream_status_for(error: BaseException, correlation_id: str) -> status_pb2.Status:
    """``status_for`` plus the watch's own failures (candidates for entrypoints/grpc/errors.py)."""
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


class _Inbox:
    """Answers from the writer thread, handed to one event loop in bulk.

    ``asyncio.wrap_future`` wakes the loop once per future (a write to its self-pipe from the
    writer, one loop iteration per answer); a group commit settles hundreds at once, so the
    inbox wakes the loop only when it was empty and the loop then takes everything queued.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # weak: the inbox must not keep a closed loop alive
        self._lock = threading.Lock()
        self._items: list[tuple[asyncio.Future[Any], Future[Any]]] = []

    def post(self, waiter: asyncio.Future[Any], done: Future[Any]) -> None:
        with self._lock:
            wake = not self._items
            self._items.append((waiter, done))
        loop = self._loop()
        if wake and loop is not None:
            # A closed loop (shutdown) has nobody waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        for waiter, done in items:
            if waiter.done():  # the caller gave up (deadline, cancellation)
                continue
            if done.cancelled():
                waiter.cancel()
            elif (error := done.exception()) is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(done.result())


_INBOXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Inbox] = weakref.WeakKeyDictionary()


async def settled(future: Future[T]) -> T:
    """Await a pipeline future from the event loop; cancelling the wait (the caller's
    deadline) cancels the future, so a command still queued is never applied."""
    loop = asyncio.get_running_loop()
    inbox = _INBOXES.get(loop)
    if inbox is None:
        inbox = _INBOXES.setdefault(loop, _Inbox(loop))
    waiter: asyncio.Future[T] = loop.create_future()
    future.add_done_callback(lambda done: inbox.post(waiter, done))
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise
