""":class:`AsyncLedgerStream`: a server stream, one logical call across reconnects.

The sync twin of this module is generated from it (``python -m tools.gen_sync_client``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Self, TypeVar

import grpc
from google.protobuf.message import Message

from inventory_ledger_client._core import CallInfo, Deadline, local_deadline_error, rpc_error
from inventory_ledger_client.errors import LedgerError, correlation_id_in
from inventory_ledger_client.retry import RetryPolicy

if TYPE_CHECKING:
    from inventory_ledger_client._aio_calls import AsyncLedgerCalls

T = TypeVar("T", bound=Message)


class AsyncLedgerStream(Generic[T]):
    """A server stream: ``async for`` it; ``cancel()`` or ``await aclose()`` ends it.

    ``correlation_id`` is the one the server echoed (the sent one until it answers). With
    ``reconnect``, a stream broken by ``UNAVAILABLE``/``ABORTED`` is re-opened with back-off and
    resumed (``WatchAvailability`` starts again with current values, ``initial=True``;
    ``StreamLedger`` continues after the last entry received, so nothing is lost or repeated).
    """

    def __init__(
        self,
        client: AsyncLedgerCalls,
        method: str,
        multicallable: Any,
        request: Message,
        *,
        correlation_id: str,
        timeout: float | None,
        reconnect: RetryPolicy | None,
        resume: Callable[[Any, Any], Any] | None,
    ) -> None:
        self._client = client
        self.method = method
        self._multicallable = multicallable
        self._request = request
        self.correlation_id = correlation_id
        self._timeout = timeout
        self._reconnect = reconnect
        self._resume = resume
        self._lock = threading.Lock()  # cancel() may run on another thread (sync client)
        self._call: Any = None
        self._cancelled = False
        self._iterator = self._run()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        return await anext(self._iterator)

    def cancel(self) -> None:
        """End the stream; the consumer's ``async for`` stops without an error."""
        with self._lock:
            self._cancelled = True
            call = self._call
        if call is not None:
            call.cancel()

    async def aclose(self) -> None:
        self.cancel()
        await self._iterator.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[T, None]:
        deadline = Deadline(self._timeout)
        sent_id = self.correlation_id
        request = self._request
        attempts = 0  # failed attempts since the last message
        total = 0
        code = grpc.StatusCode.OK
        try:
            while True:
                total += 1
                remaining = deadline.remaining()
                if remaining is not None and remaining <= 0:
                    code = grpc.StatusCode.DEADLINE_EXCEEDED
                    raise local_deadline_error(
                        method=self.method, correlation_id=sent_id, request_id=None, attempts=total
                    )
                call = self._open(request, remaining, sent_id)
                if call is None:
                    code = grpc.StatusCode.CANCELLED
                    return
                received = False
                try:
                    async for message in call:
                        if not received:
                            received = True
                            attempts = 0
                            self.correlation_id = (
                                correlation_id_in(await call.initial_metadata()) or sent_id
                            )
                        if self._resume is not None:
                            request = self._resume(request, message)
                        yield message
                    return
                except asyncio.CancelledError:  # async only
                    # grpc.aio raises CancelledError for a call cancelled locally; only ours
                    # ends the stream quietly, a cancelled task stays cancelled.
                    code = grpc.StatusCode.CANCELLED
                    if self._cancelled:
                        return
                    raise
                except grpc.RpcError as failure:
                    if self._cancelled:
                        code = grpc.StatusCode.CANCELLED
                        return
                    attempts += 1
                    error = rpc_error(
                        failure,
                        method=self.method,
                        correlation_id=sent_id,
                        request_id=None,
                        attempts=total,
                        request=request,
                    )
                    code = error.code
                    delay = self._reopen_delay(error, attempts, received, deadline)
                    if delay is None:
                        raise error from failure
                    await asyncio.sleep(delay)
        except GeneratorExit:  # closed by the consumer
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            with self._lock:
                call, self._call = self._call, None
            if call is not None:
                call.cancel()
            self._client._report(
                CallInfo(self.method, None, self.correlation_id, total, code, deadline.elapsed())
            )

    def _open(self, request: Message, remaining: float | None, sent_id: str) -> Any:
        """Start one attempt, or None when :meth:`cancel` came first (checked under the lock)."""
        with self._lock:
            if self._cancelled:
                return None
            self._call = self._multicallable(
                request,
                timeout=remaining,
                metadata=self._client._metadata(sent_id),
                wait_for_ready=self._client._wait_for_ready,
            )
            return self._call

    def _reopen_delay(
        self, error: LedgerError, attempts: int, received: bool, deadline: Deadline
    ) -> float | None:
        """Seconds to wait before re-opening after ``error``, or None to give up."""
        policy = self._reconnect
        if policy is None and not received:
            policy = self._client._retry  # nothing delivered yet: retrying is invisible
        if (
            policy is None
            or not RetryPolicy.retryable(error.code)
            or not policy.allows_another(attempts)
        ):
            return None
        delay = policy.backoff(attempts, error.retry_after)
        return delay if deadline.allows_sleep(delay) else None
