""":class:`AsyncLedgerCalls`, what every RPC method of :class:`AsyncLedgerClient` runs on: the
``grpc.aio`` channel and its stubs, and one logical call (deadline, retries, correlation id,
``on_call`` report).

The sync twin of this module is generated from it (``python -m tools.gen_sync_client``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import grpc
import grpc.aio  # async only
from google.protobuf.message import Message
from inventory.ledger.v1 import (
    audit_service_pb2_grpc,
    movement_service_pb2_grpc,
    policy_service_pb2_grpc,
    query_service_pb2_grpc,
    reservation_service_pb2_grpc,
)

from inventory_ledger_client._aio_stream import AsyncLedgerStream
from inventory_ledger_client._core import (
    DEFAULT_STREAM_TIMEOUT,
    DEFAULT_TIMEOUT,
    CallInfo,
    Deadline,
    Metadata,
    OnCall,
    Pem,
    Token,
    call_metadata,
    call_unary_async,
    channel_credentials,
    channel_options,
    check_correlation_id,
    check_timeout,
    local_deadline_error,
    new_correlation_id,
    rpc_error,
)
from inventory_ledger_client.errors import LedgerError, correlation_id_in
from inventory_ledger_client.retry import DEFAULT_RETRY, RetryPolicy


class AsyncLedgerCalls:
    """The channel, the options and the call machinery of :class:`AsyncLedgerClient` (which
    documents the options)."""

    def __init__(
        self,
        target: str | None = None,
        *,
        token: Token = None,
        tls: bool = False,
        root_certificates: Pem = None,
        private_key: Pem = None,
        certificate_chain: Pem = None,
        server_name: str | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        channel: grpc.aio.Channel | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        stream_timeout: float | None = DEFAULT_STREAM_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        wait_for_ready: bool = False,
        metadata: Metadata = (),
        options: Sequence[tuple[str, Any]] = (),
        on_call: OnCall = None,
    ) -> None:
        check_timeout(timeout, None)
        if channel is None:
            if not target:
                raise ValueError("give a target (host:port) or a channel")
            creds = channel_credentials(
                tls=tls,
                root_certificates=root_certificates,
                private_key=private_key,
                certificate_chain=certificate_chain,
                credentials=credentials,
            )
            merged = channel_options(options, server_name)
            channel = (
                grpc.aio.insecure_channel(target, options=merged)
                if creds is None
                else grpc.aio.secure_channel(target, creds, options=merged)
            )
            self._owns_channel = True
        else:
            self._owns_channel = False
        self.channel = channel
        self.target = target
        self._token = token
        self._timeout = timeout
        self._stream_timeout = stream_timeout
        self._retry = retry
        self._wait_for_ready = wait_for_ready
        self._extra_metadata = tuple(metadata)
        self._on_call = on_call
        self._reservations = reservation_service_pb2_grpc.ReservationServiceStub(channel)
        self._query = query_service_pb2_grpc.InventoryQueryServiceStub(channel)
        self._movements = movement_service_pb2_grpc.MovementServiceStub(channel)
        self._policy = policy_service_pb2_grpc.PolicyServiceStub(channel)
        self._audit = audit_service_pb2_grpc.AuditServiceStub(channel)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the channel (unless it was given to the client)."""
        if self._owns_channel:
            await self.channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- machinery ---------------------------------------------------------------------------

    def _metadata(self, correlation_id: str) -> tuple[tuple[str, str | bytes], ...]:
        return call_metadata(correlation_id, self._token, self._extra_metadata)

    def _report(self, info: CallInfo) -> None:
        if self._on_call is not None:
            self._on_call(info)

    async def _unary(
        self,
        method: str,
        multicallable: Any,
        request: Message,
        correlation_id: str | None,
        timeout: float | None,
    ) -> Any:
        sent_id = check_correlation_id(correlation_id) if correlation_id else new_correlation_id()
        request_id = getattr(request, "request_id", None) or None
        deadline = Deadline(check_timeout(timeout, self._timeout))
        attempts = 0
        last: LedgerError | None = None
        while True:
            remaining = deadline.remaining()
            if remaining is not None and remaining <= 0:
                error = last or local_deadline_error(
                    method=method, correlation_id=sent_id, request_id=request_id, attempts=attempts
                )
                self._report_failure(method, request_id, sent_id, attempts, error, deadline)
                raise error
            attempts += 1
            try:
                response, call = await call_unary_async(
                    multicallable,
                    request,
                    timeout=remaining,
                    metadata=self._metadata(sent_id),
                    wait_for_ready=self._wait_for_ready,
                )
            except grpc.RpcError as failure:
                error = rpc_error(
                    failure,
                    method=method,
                    correlation_id=sent_id,
                    request_id=request_id,
                    attempts=attempts,
                    request=request,
                )
                delay = self._retry_delay(error, attempts, deadline)
                if delay is not None:
                    last = error
                    await asyncio.sleep(delay)
                    continue
                self._report_failure(method, request_id, sent_id, attempts, error, deadline)
                raise error from failure
            echoed = correlation_id_in(await call.initial_metadata()) or sent_id
            self._report(
                CallInfo(
                    method, request_id, echoed, attempts, grpc.StatusCode.OK, deadline.elapsed()
                )
            )
            return response

    def _retry_delay(self, error: LedgerError, attempts: int, deadline: Deadline) -> float | None:
        """Seconds to wait before the next attempt after ``error``, or None to give up."""
        if not (RetryPolicy.retryable(error.code) and self._retry.allows_another(attempts)):
            return None
        delay = self._retry.backoff(attempts, error.retry_after)
        return delay if deadline.allows_sleep(delay) else None

    def _report_failure(
        self,
        method: str,
        request_id: str | None,
        sent_id: str,
        attempts: int,
        error: LedgerError,
        deadline: Deadline,
    ) -> None:
        self._report(
            CallInfo(
                method,
                request_id,
                error.correlation_id or sent_id,
                attempts,
                error.code,
                deadline.elapsed(),
            )
        )

    def _stream(
        self,
        method: str,
        multicallable: Any,
        request: Message,
        *,
        correlation_id: str | None,
        timeout: float | None,
        reconnect: bool | RetryPolicy,
        resume: Callable[[Any, Any], Any] | None = None,
    ) -> AsyncLedgerStream[Any]:
        if timeout is not None:
            check_timeout(timeout, None)
        policy = RetryPolicy.reconnecting() if reconnect is True else (reconnect or None)
        return AsyncLedgerStream(
            self,
            method,
            multicallable,
            request,
            correlation_id=(
                check_correlation_id(correlation_id) if correlation_id else new_correlation_id()
            ),
            timeout=timeout,
            reconnect=policy,
            resume=resume,
        )
