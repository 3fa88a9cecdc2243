"""An API process's end of the writer socket: writes go to the seat's holder.

``submit`` returns a future like the in-process pipeline's; one thread sends every call
queued since its last write in one message, one thread settles the futures from the
answers. When the connection is lost every call still waiting fails with UNAVAILABLE
(``StoreUnavailable``: callers retry with the same request id, which the ledger's durable
idempotency turns into the first answer or a first write) and the client reconnects to
whoever holds the seat then. A call made while no writer is connected waits up to
``PARK_SECONDS`` (within its deadline) for one, then fails UNAVAILABLE.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from multiprocessing import AuthenticationError
from typing import Any

from ledger.domain.errors import StoreUnavailable
from ledger.pipeline import admit
from ledger.use_cases.context import CallContext
from ledger.writer import wire
from ledger.writer.election import WriterAdvert
from ledger.writer.handshake import MessageSocket

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
# How long a call waits for a writer when none is connected (bounded by its deadline).
PARK_SECONDS = 2.0
_NO_WRITER = "no writer process is reachable; retry with the same request id"
RECONNECT_DELAY_SECONDS = 0.1
RECONNECT_DELAY_MAX_SECONDS = 1.0
_CLOSE = object()
# How long the writer's word on its queue is trusted for refusing calls here.
LOAD_FRESH_SECONDS = 0.1

Locate = Callable[[], WriterAdvert | None]


class _CallFuture(Future[Any]):
    """Cancelling a call the writer has not started yet keeps it from being applied (one
    still parked, waiting for a writer, is simply dropped)."""

    def __init__(self, writer: RemoteWriter, call_id: int) -> None:
        super().__init__()
        self._writer = writer
        self.link: _Link | None = None
        self._call_id = call_id

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._writer.cancelled(self._call_id, self)
        return cancelled


class _Link:
    """One live connection to the writer."""

    def __init__(self, channel: MessageSocket, on_commit: Callable[[], None]) -> None:
        self._channel = channel
        self._connection = channel.connection
        self._on_commit = on_commit
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lost = threading.Event()
        # The writer's last word on its queue: (seconds a call would wait, when it was said).
        self._load: tuple[float, float] = (0.0, 0.0)
        threading.Thread(target=self._send, name="writer-link-out", daemon=True).start()
        threading.Thread(target=self._receive, name="writer-link-in", daemon=True).start()

    def call(self, call_id: int, message: tuple[Any, ...], future: _CallFuture) -> None:
        """Send the call; its answer settles ``future`` (StoreUnavailable if lost). Under the
        lock, so a cancel either finds it pending (and its CANCEL follows the CALL) or
        happened first (and the call is never sent)."""
        with self._lock:
            if future.cancelled():
                return
            future.link = self
            if self.lost.is_set():
                with contextlib.suppress(InvalidStateError):
                    future.set_exception(StoreUnavailable(_NO_WRITER))
                return
            self._pending[call_id] = future
            self._outbox.put(message)

    def expected_wait(self) -> float:
        """The writer's latest estimate, less the time since it was given; 0 once older than
        LOAD_FRESH_SECONDS. A busy writer says it again within milliseconds (every answer
        and commit carries it); a refusing link sends nothing to hear back from, and the
        queue empties faster than the estimate says when callers give up, so old news must
        not keep refusing (a 30 s estimate once refused every call of a bench figure)."""
        seconds, said_at = self._load
        age = time.monotonic() - said_at
        return 0.0 if age > LOAD_FRESH_SECONDS else max(0.0, seconds - age)

    def cancel(self, call_id: int) -> None:
        with self._lock:
            if self._pending.pop(call_id, None) is not None:
                self._outbox.put((wire.CANCEL, call_id))

    def close(self) -> None:
        self._outbox.put(_CLOSE)

    def _send(self) -> None:
        while not self.lost.is_set():
            items = [self._outbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._outbox.get_nowait())
            closing = any(item is _CLOSE for item in items)
            messages = [item for item in items if item is not _CLOSE]
            try:
                if messages:
                    self._connection.send_bytes(wire.dumps(messages))
            except (OSError, ValueError) as error:
                self._lose(f"sending to the writer failed: {error}")
                return
            if closing:
                self._lose("closed")
                return

    def _receive(self) -> None:
        try:
            while True:
                for message in wire.loads(self._connection.recv_bytes()):
                    self._handle(message)
        # TypeError: the connection was closed by our sender thread while this one read.
        except (EOFError, OSError, TypeError) as error:
            self._lose(f"the writer process went away ({error or 'connection closed'})")

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == wire.LOAD:
            self._load = (message[1], time.monotonic())
            return
        if kind == wire.COMMITTED:
            self._on_commit()
            return
        with self._lock:
            future = self._pending.pop(message[1], None)
        if future is None:
            return  # cancelled by its caller meanwhile
        with contextlib.suppress(InvalidStateError):
            if kind == wire.ANSWER:
                future.set_result(message[2])
            else:
                future.set_exception(wire.rebuilt(message[2]))

    def _lose(self, why: str) -> None:
        with self._lock:
            if self.lost.is_set():
                return
            self.lost.set()
            pending, self._pending = self._pending, {}
        self._outbox.put(_CLOSE)  # the sender may be waiting for work: let it end
        self._channel.hang_up()
        for future in pending.values():
            with contextlib.suppress(InvalidStateError):
                future.set_exception(
                    StoreUnavailable(
                        f"{why}; the write may or may not have been applied:"
                        " retry with the same request id"
                    )
                )


class RemoteWriter:
    """The :class:`ledger.writer.local.Writer` of an API process whose writer is elsewhere."""

    def __init__(self, locate: Locate) -> None:
        self._locate = locate
        self._ids = itertools.count(1)
        self._listeners: list[Callable[[], None]] = []
        self._link: _Link | None = None
        # Calls made while no writer is connected (a takeover, a database outage), with the
        # monotonic time they give up; sent as soon as a writer is reached.
        self._parked: dict[int, tuple[tuple[Any, ...], _CallFuture, float]] = {}
        self._park_lock = threading.Lock()
        self._has_parked = threading.Event()
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_connected, name="writer-connect", daemon=True
        )
        self._thread.start()
        # Parked calls give up on time even while a connection attempt is under way.
        self._reaper = threading.Thread(target=self._reap, name="writer-parked", daemon=True)
        self._reaper.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def submit(
        self, ctx: CallContext, use_case: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Future[Any]:
        call_id = next(self._ids)
        message = (wire.CALL, call_id, use_case, ctx, args, dict(kwargs))
        future = _CallFuture(self, call_id)
        with self._park_lock:
            link = self._link
            if link is None or link.lost.is_set():
                # Park it for a moment rather than fail it: a takeover takes about a second.
                remaining = ctx.time_remaining_seconds
                wait = PARK_SECONDS if remaining is None else min(PARK_SECONDS, remaining)
                if wait <= 0 or self._stop.is_set():
                    raise StoreUnavailable(_NO_WRITER)
                self._parked[call_id] = (message, future, time.monotonic() + wait)
                self._has_parked.set()
                return future
        remaining = ctx.time_remaining_seconds
        if remaining is not None:
            # Refused here, as the writer would refuse it, without the trip there and back:
            # under overload most calls are refused, and each one sent cost both processes.
            admit(link.expected_wait(), remaining)
        link.call(call_id, message, future)
        return future

    def cancelled(self, call_id: int, future: _CallFuture) -> None:
        """A caller cancelled: a parked call is dropped, a sent one gets a CANCEL."""
        with self._park_lock:
            if self._parked.pop(call_id, None) is not None:
                return
        link = future.link
        if link is not None:
            link.cancel(call_id)

    def _reap(self) -> None:
        while not self._stop.is_set():
            self._has_parked.wait(1.0)
            self._stop.wait(0.05)
            self._expire_parked()

    def _expire_parked(self) -> None:
        now = time.monotonic()
        with self._park_lock:
            expired = [i for i, (_, _, until) in self._parked.items() if until <= now]
            futures = [self._parked.pop(i)[1] for i in expired]
            if not self._parked:
                self._has_parked.clear()
        for future in futures:
            with contextlib.suppress(InvalidStateError):
                future.set_exception(StoreUnavailable(_NO_WRITER))

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self._stop.set()
        link = self._link
        if link is not None:
            link.close()
        self._thread.join(5)
        with self._park_lock:
            parked, self._parked = self._parked, {}
        for _, future, _ in parked.values():
            with contextlib.suppress(InvalidStateError):
                future.set_exception(StoreUnavailable(_NO_WRITER))

    def _committed(self) -> None:
        for listener in self._listeners:
            listener()

    def _keep_connected(self) -> None:
        delay = RECONNECT_DELAY_SECONDS
        while not self._stop.is_set():
            link = self._connect()
            if link is None:
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX_SECONDS)
                continue
            delay = RECONNECT_DELAY_SECONDS
            with self._park_lock:
                if self._stop.is_set():  # closed while this connection was being opened
                    link.close()
                    return
                self._link = link
                parked, self._parked = self._parked, {}
                self._has_parked.clear()
            now = time.monotonic()
            for call_id, (message, future, until) in parked.items():
                link.call(call_id, _with_time_left(message, until - now), future)
            self._connected.set()
            # Followers may have missed commits while no link was up: wake them once.
            self._committed()
            while not link.lost.wait(0.5):
                if self._stop.is_set():
                    return
            self._connected.clear()
            if self._stop.is_set():
                return
            log.warning("lost the writer process; reconnecting to the seat's holder")

    def _connect(self) -> _Link | None:
        try:
            advert = self._locate()
        except Exception as error:
            log.debug("writer seat unreadable: %s", error)
            return None
        if advert is None:
            return None
        try:
            sock = socket.create_connection(
                (advert.host, advert.port), timeout=CONNECT_TIMEOUT_SECONDS
            )
            channel = MessageSocket(sock)
            try:
                channel.authenticate_client(advert.authkey)
            except BaseException:
                channel.hang_up()
                raise
        except (OSError, EOFError, AuthenticationError) as error:
            log.debug("writer at %s:%d not reachable: %s", advert.host, advert.port, error)
            return None
        log.info(
            "writing through the writer process at %s:%d (pid %d)",
            advert.host,
            advert.port,
            advert.pid,
        )
        return _Link(channel, self._committed)


def _with_time_left(message: tuple[Any, ...], seconds: float) -> tuple[Any, ...]:
    """A parked call's context with the time it spent parked taken off its deadline."""
    kind, call_id, use_case, ctx, args, kwargs = message
    if ctx.time_remaining_seconds is not None:
        ctx = dataclasses.replace(ctx, time_remaining_seconds=max(seconds, 0.001))
    return kind, call_id, use_case, ctx, args, kwargs
