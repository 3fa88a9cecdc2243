"""An API process's end of the writer socket: writes go to the seat's holder.

``submit`` returns a future like the in-process pipeline's; one thread sends every call
queued since its last write in one message, one thread settles the futures from the
answers. When the connection is lost every call still waiting fails with UNAVAILABLE
(``StoreUnavailable``: callers retry with the same request id, which the ledger's durable
idempotency turns into the first answer or a first write) and the client reconnects to
whoever holds the seat then. Calls made while no writer is reachable fail at once.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from multiprocessing import AuthenticationError
from multiprocessing.connection import Connection
from typing import Any

from ledger.domain.errors import StoreUnavailable
from ledger.use_cases.context import CallContext
from ledger.writer import wire
from ledger.writer.election import WriterAdvert
from ledger.writer.handshake import (
    authenticate_client,
    message_connection,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 2.0
RECONNECT_DELAY_SECONDS = 0.1
_CLOSE = object()

Locate = Callable[[], WriterAdvert | None]


class _CallFuture(Future[Any]):
    """Cancelling a call the writer has not started yet keeps it from being applied."""

    def __init__(self, link: _Link, call_id: int) -> None:
        super().__init__()
        self._link = link
        self._call_id = call_id

    def cancel(self) -> bool:
        cancelled = super().cancel()
        if cancelled:
            self._link.forget(self._call_id)
            self._link.post((wire.CANCEL, self._call_id))
        return cancelled


class _Link:
    """One live connection to the writer."""

    def __init__(self, connection: Connection, on_commit: Callable[[], None]) -> None:
        self._connection = connection
        self._on_commit = on_commit
        self._pending: dict[int, Future[Any]] = {}
        self._lock = threading.Lock()
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.lost = threading.Event()
        threading.Thread(target=self._send, name="writer-link-out", daemon=True).start()
        threading.Thread(target=self._receive, name="writer-link-in", daemon=True).start()

    def call(self, call_id: int, message: tuple[Any, ...]) -> Future[Any]:
        future = _CallFuture(self, call_id)
        with self._lock:
            if self.lost.is_set():
                raise StoreUnavailable("the writer process is not reachable")
            self._pending[call_id] = future
        self._outbox.put(message)
        return future

    def post(self, message: tuple[Any, ...]) -> None:
        self._outbox.put(message)

    def forget(self, call_id: int) -> None:
        with self._lock:
            self._pending.pop(call_id, None)

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
        except (EOFError, OSError) as error:
            self._lose(f"the writer process went away ({error or 'connection closed'})")

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
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
        with contextlib.suppress(OSError):
            self._connection.close()
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
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._keep_connected, name="writer-connect", daemon=True
        )
        self._thread.start()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def submit(
        self, ctx: CallContext, use_case: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Future[Any]:
        link = self._link
        if link is None or link.lost.is_set():
            raise StoreUnavailable("no writer process is reachable; retry with the same request id")
        call_id = next(self._ids)
        return link.call(call_id, (wire.CALL, call_id, use_case, ctx, args, dict(kwargs)))

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def close(self) -> None:
        self._stop.set()
        link = self._link
        if link is not None:
            link.close()
        self._thread.join(5)

    def _committed(self) -> None:
        for listener in self._listeners:
            listener()

    def _keep_connected(self) -> None:
        while not self._stop.is_set():
            link = self._connect()
            if link is None:
                self._stop.wait(RECONNECT_DELAY_SECONDS)
                continue
            self._link = link
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
            connection = message_connection(sock)
            try:
                authenticate_client(connection, advert.authkey)
            except BaseException:
                connection.close()
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
        return _Link(connection, self._committed)
