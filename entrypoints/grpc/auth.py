"""The call guard: who is calling, may they call this method, are they within their rate,
and one access log line per call (docs/security.md).

:class:`CallGuard` wraps every method handler once, as it is registered on the
:class:`GuardedServer`: one wrapper per call times it (metrics), sheds load and, for every
method but health and reflection, resolves the bearer token in ``authorization`` to a
principal (UNAUTHENTICATED), charges the principal's token bucket (RESOURCE_EXHAUSTED with
RetryInfo), checks the method's scope (PERMISSION_DENIED) and logs the access line. The
admitted :class:`~entrypoints.grpc.rpc.Call` goes to the servicer wrappers in
``entrypoints.grpc.rpc`` through a context variable; they check the request's channel.
Without a token file the guard admits everyone as the unrestricted, unlimited principal
``anonymous`` (open mode).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any

import grpc
from grpc_status import rpc_status
from inventory.ledger.v1 import (
    audit_service_pb2,
    movement_service_pb2,
    policy_service_pb2,
    query_service_pb2,
    reservation_service_pb2,
)

from entrypoints.grpc.errors import (
    PermissionDenied,
    RateLimited,
    ServerOverloaded,
    Unauthenticated,
    counted,
    status_for,
)
from entrypoints.grpc.load_shedding import LoadShedder, shed
from entrypoints.grpc.metrics_interceptor import RpcMetrics, final_code, timed
from entrypoints.grpc.rpc import CORRELATION_HEADER, CURRENT_CALL, Call, correlation_id_of
from entrypoints.grpc.tokens import ANONYMOUS_PRINCIPAL, Principal, TokenRegistry
from ledger.access_lines import AccessFields
from ledger.config import DEFAULT_MAX_CALLS_IN_FLIGHT, Settings
from ledger.logs import ACCESS_LOGGER, CALL_FIELDS, log_access

access_log = logging.getLogger(ACCESS_LOGGER)

PUBLIC = ""  # no credentials needed
# The principal of a call refused as UNAUTHENTICATED, in its access line.
NOBODY = Principal("(none)", frozenset())
# Scope of each ledger service; `admin` implies every scope. Methods of services not named
# here (there are none today) need `admin`: a new service is closed until it is listed.
SERVICE_SCOPES: dict[str, str] = {
    "inventory.ledger.v1.InventoryQueryService": "query",
    "inventory.ledger.v1.ReservationService": "reserve",
    "inventory.ledger.v1.MovementService": "record",
    "inventory.ledger.v1.PolicyService": "policy",
    "inventory.ledger.v1.AuditService": "audit",
    # Load balancers and grpcurl must work without a token.
    "grpc.health.v1.Health": PUBLIC,
    "grpc.reflection.v1alpha.ServerReflection": PUBLIC,
    "grpc.reflection.v1.ServerReflection": PUBLIC,
}
# Per-method exceptions to SERVICE_SCOPES (full method name -> scope); none so far:
# GetReservation and ListReservations need `reserve` like the rest of the service.
METHOD_SCOPES: dict[str, str] = {}
FALLBACK_SCOPE = "admin"

LEDGER_SERVICES = (
    query_service_pb2.DESCRIPTOR.services_by_name["InventoryQueryService"],
    reservation_service_pb2.DESCRIPTOR.services_by_name["ReservationService"],
    movement_service_pb2.DESCRIPTOR.services_by_name["MovementService"],
    policy_service_pb2.DESCRIPTOR.services_by_name["PolicyService"],
    audit_service_pb2.DESCRIPTOR.services_by_name["AuditService"],
)

# Codes that are the server's fault are logged as warnings; the rest are the caller's.
_SERVER_SIDE = {"INTERNAL", "UNKNOWN", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED"}


def scope_for(method: str) -> str:
    """The scope ``/package.Service/Method`` needs ('' for public methods)."""
    if method in METHOD_SCOPES:
        return METHOD_SCOPES[method]
    service = method.lstrip("/").rsplit("/", 1)[0]
    return SERVICE_SCOPES.get(service, FALLBACK_SCOPE)


def method_scopes() -> dict[str, str]:
    """Every RPC of every ledger service with its scope (docs/security.md lists them)."""
    return {
        f"/{service.full_name}/{method.name}": scope_for(f"/{service.full_name}/{method.name}")
        for service in LEDGER_SERVICES
        for method in service.methods
    }


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one per call."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """0.0 when a token was taken, else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One token bucket per principal name (thread-safe, monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._buckets: dict[str, TokenBucket] = {}

    def acquire(self, principal: Principal) -> float:
        """0.0 when the call may go ahead, else the seconds to wait (RetryInfo)."""
        if principal.rate_per_second <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(principal.name)
            if bucket is None or (bucket.rate, bucket.burst) != (
                principal.rate_per_second,
                principal.burst,
            ):
                # New principal, or its limits changed in a reloaded token file.
                bucket = TokenBucket(principal.rate_per_second, principal.burst, now)
                self._buckets[principal.name] = bucket
            return bucket.take(now)


def bearer_token(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            return None
    return None


class CallGuard:
    """Wraps each method handler once, when it is registered (:class:`GuardedServer`): per
    call one wrapper times the call (``entrypoints.grpc.metrics_interceptor``), sheds load,
    authenticates, puts the :class:`Call` (correlation id, principal) where the servicer
    wrappers find it, and logs the access line. Health and reflection are only timed."""

    def __init__(
        self,
        registry: TokenRegistry | None = None,
        limiter: RateLimiter | None = None,
        max_calls_in_flight: int = DEFAULT_MAX_CALLS_IN_FLIGHT,
    ) -> None:
        self.registry = registry  # None: open mode
        self.limiter = limiter or RateLimiter()
        # Load shedding: a unary call that could not be answered before its deadline, or
        # one past the cap on calls in flight, is refused on arrival
        # (entrypoints.grpc.load_shedding).
        self.shedder = LoadShedder(max_calls_in_flight)
        # Wrapped handlers by method (generic handlers answer per call: wrap each once).
        self._wrapped: dict[
            str, tuple[grpc.RpcMethodHandler[Any, Any], grpc.RpcMethodHandler[Any, Any]]
        ] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> CallGuard:
        limit = settings.max_calls_in_flight
        if not settings.token_file:
            return cls(None, max_calls_in_flight=limit)
        registry = TokenRegistry(settings.token_file, check_seconds=settings.token_reload_seconds)
        return cls(registry, max_calls_in_flight=limit)

    def reload(self) -> None:
        """SIGHUP: re-read the token file now."""
        if self.registry is not None:
            self.registry.reload()

    def handler_for(
        self, method: str, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """``handler`` of ``/package.Service/Method`` as the guard serves it."""
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        wrapped = self._wrap(handler, method, scope_for(method))
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    # ---- admission --------------------------------------------------------------------------

    def _admit(self, call: Call, scope: str, context: grpc.aio.ServicerContext) -> None:
        """Sets ``call.principal`` or raises the refusal."""
        if self.registry is None:
            call.principal = ANONYMOUS_PRINCIPAL
            return
        call.principal = NOBODY
        token = bearer_token(context)
        if token is None:
            raise Unauthenticated("missing bearer token: send 'authorization: Bearer <token>'")
        principal = self.registry.authenticate(token)
        if principal is None:
            raise Unauthenticated("unknown bearer token")
        call.principal = principal
        wait = self.limiter.acquire(principal)
        if wait > 0:
            raise RateLimited(principal.name, wait)
        if not principal.has_scope(scope):
            raise PermissionDenied(
                "MISSING_SCOPE",
                f"principal {principal.name!r} lacks scope {scope!r} for {call.method}",
                principal=principal.name,
                scope=scope,
            )

    def _open(
        self, method: str, scope: str, started: float, context: grpc.aio.ServicerContext
    ) -> tuple[Call, Exception | None]:
        """The call, in :data:`CURRENT_CALL` (and, admitted, in the log fields), and the
        refusal if it is not admitted."""
        call = Call(method, correlation_id_of(context), started=started)
        CURRENT_CALL.set(call)  # each call runs in its own task: the variable is the call's
        try:
            self._admit(call, scope, context)
        except (Unauthenticated, RateLimited, PermissionDenied) as refusal:
            return call, refusal
        CALL_FIELDS.set(
            {
                "method": call.method,
                "principal": call.principal.name,
                "correlation_id": call.correlation_id,
            }
        )
        return call, None

    @staticmethod
    async def _refuse(call: Call, refusal: Exception, context: grpc.aio.ServicerContext) -> None:
        await context.send_initial_metadata(((CORRELATION_HEADER, call.correlation_id),))
        status = rpc_status.to_status(counted(status_for(refusal, call.correlation_id)))
        await context.abort(status.code, status.details, status.trailing_metadata)

    # ---- handler wrapping ---------------------------------------------------------------------

    def _wrap(
        self, handler: grpc.RpcMethodHandler[Any, Any], method: str, scope: str
    ) -> grpc.RpcMethodHandler[Any, Any]:
        metrics = RpcMetrics(method)
        if scope == PUBLIC:
            unary: Callable[..., Any] = functools.partial(timed, metrics=metrics)
            stream: Callable[..., Any] = unary
        else:
            unary = functools.partial(
                self._unary_response, method=method, scope=scope, metrics=metrics
            )
            stream = functools.partial(
                self._stream_response, method=method, scope=scope, metrics=metrics
            )
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **serializers)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(stream(handler.unary_stream), **serializers)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **serializers)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                stream(handler.stream_stream), **serializers
            )
        return handler  # no behaviour at all: nothing to guard

    def _unary_response(
        self, behavior: Callable[..., Any], method: str, scope: str, metrics: RpcMetrics
    ) -> Callable[..., Awaitable[Any]]:
        shedder = self.shedder
        asynchronous = inspect.iscoroutinefunction(behavior)

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = metrics.start()
            admitted: float | None = None
            call: Call | None = None
            error: BaseException | None = None
            try:
                # First, and as cheaply as possible: under overload most calls end here, and
                # each one refused must cost a small fraction of one served (no access line:
                # the shedder logs a summary, the metrics count them).
                try:
                    admitted = shedder.admit(context.time_remaining())
                except ServerOverloaded as overloaded:
                    await shed(overloaded, context)
                call, refusal = self._open(method, scope, started, context)
                if refusal is not None:
                    await self._refuse(call, refusal, context)
                if asynchronous:
                    return await behavior(request, context)
                result = behavior(request, context)
                return await result if inspect.isawaitable(result) else result
            except BaseException as exc:
                error = exc
                raise
            finally:
                code = final_code(context, error)
                seconds = metrics.done(started, code)
                if admitted is not None:
                    shedder.done(admitted)
                if call is not None:
                    _log_call(call, code, seconds)

        return guarded

    def _stream_response(
        self, behavior: Callable[..., Any], method: str, scope: str, metrics: RpcMetrics
    ) -> Callable[..., AsyncIterator[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            started = metrics.start()
            call: Call | None = None
            error: BaseException | None = None
            result: Any = None
            try:
                call, refusal = self._open(method, scope, started, context)
                if refusal is not None:
                    await self._refuse(call, refusal, context)
                result = behavior(request, context)
                if inspect.isawaitable(result):  # a coroutine writing with context.write
                    await result
                else:
                    async for message in result:
                        yield message
            except BaseException as exc:
                error = exc
                raise
            finally:
                # The servicer's stream ends now (its finally blocks run), not when collected.
                aclose = getattr(result, "aclose", None)
                if aclose is not None:
                    await aclose()
                code = final_code(context, error)
                seconds = metrics.done(started, code)
                if call is not None:
                    _log_call(call, code, seconds)

        return guarded


class _GuardedGenericHandler(grpc.GenericRpcHandler):
    """A generic handler whose answers the guard wraps (once per method)."""

    def __init__(self, inner: grpc.GenericRpcHandler, guard: CallGuard) -> None:
        self._inner = inner
        self._guard = guard

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        return self._guard.handler_for(handler_call_details.method, handler)


class GuardedServer(grpc.aio.Server):
    """A ``grpc.aio`` server whose method handlers the guard wraps as they are registered.

    Not a server interceptor: gRPC runs interceptors on every call (a coroutine chain to look
    the handler up, and the metrics interceptor re-wrapped it each time); wrapping at
    registration leaves one wrapper per call and no per-call lookup work.
    """

    def __init__(self, server: grpc.aio.Server, guard: CallGuard) -> None:
        self._server = server
        self.guard = guard

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(
            tuple(_GuardedGenericHandler(handler, self.guard) for handler in generic_rpc_handlers)
        )

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self._server.add_registered_method_handlers(
            service_name,
            {
                name: self.guard.handler_for(f"/{service_name}/{name}", handler)
                for name, handler in method_handlers.items()
            },
        )

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        return await self._server.wait_for_termination(timeout)


def _log_call(call: Call, code: str, seconds: float) -> None:
    """The access line: method, principal, correlation id, status code, duration (queued as
    its fields; the log listener writes it: ``ledger.logs.log_access``)."""
    level = logging.WARNING if code in _SERVER_SIDE else logging.INFO
    if access_log.isEnabledFor(level):
        fields = AccessFields(
            time.time(),
            level,
            call.method,
            code,
            call.principal.name,
            call.correlation_id,
            round(seconds * 1000, 3),
        )
        log_access(fields)
