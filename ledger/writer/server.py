"""The writer process's socket: API processes' calls in, the pipeline's answers out.

Per connected API process, one thread reads its calls and queues them on the pipeline, and
one thread sends what is ready: every answer finished since its last write, in one message.
So the writer thread itself only settles futures; it never waits on a socket or on another
process's event loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import queue
import socket
import threading
from concurrent.futures import Future
from multiprocessing import AuthenticationError
from typing import Any

from ledger.domain.errors import StoreUnavailable
from ledger.writer import wire
from ledger.writer.handshake import MessageSocket
from ledger.writer.local import LocalWriter

log = logging.getLogger(__name__)

_WAKE = object()
_CLOSE = object()


class _Peer:
    """One API process's connection."""

    def __init__(
        self,
        channel: MessageSocket,
        writer: LocalWriter,
        on_close: Any,
        draining: threading.Event,
    ) -> None:
        self._channel = channel
        self._connection = channel.connection
        self._writer = writer
        self._draining = draining
        self._on_close = on_close
        self._pending: dict[int, Future[Any]] = {}
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._woken = False
        self._closed = threading.Event()

    def start(self, authkey: bytes) -> None:
        threading.Thread(
            target=self._receive, args=(authkey,), name="writer-peer-in", daemon=True
        ).start()

    def wake(self) -> None:
        """Events were committed: tell the API process (coalesced with its next message)."""
        if not self._woken:
            self._woken = True
            self._outbox.put(_WAKE)

    def close(self) -> None:
        """Send what is ready, then hang up (the sender thread closes the connection)."""
        self._outbox.put(_CLOSE)

    def hang_up(self) -> None:
        self._channel.hang_up()

    def _receive(self, authkey: bytes) -> None:
        try:
            self._channel.authenticate_server(authkey)
        except (AuthenticationError, OSError, EOFError) as error:
            log.warning("writer: refused a connection: %s", error)
            self.hang_up()
            self._on_close(self)
            return
        threading.Thread(target=self._send, name="writer-peer-out", daemon=True).start()
        try:
            while True:
                for message in wire.loads(self._connection.recv_bytes()):
                    self._handle(message)
        # TypeError: the connection was closed by the sender thread while this one read.
        except (EOFError, OSError, TypeError):
            pass  # the API process went away or the writer is stopping
        finally:
            # Its calls can no longer be answered: what has not started is not applied (its
            # caller got UNAVAILABLE and retries with the same request id).
            for future in list(self._pending.values()):
                future.cancel()
            self._outbox.put(_CLOSE)
            self._on_close(self)

    def _handle(self, message: tuple[Any, ...]) -> None:
        if message[0] == wire.CALL:
            _, call_id, use_case, ctx, args, kwargs = message
            if self._draining.is_set():
                self._outbox.put((call_id, StoreUnavailable("the writer is stopping")))
                return
            try:
                future = self._writer.submit(ctx, use_case, args, kwargs)
            except Exception as error:  # refused up front (back-pressure, unknown use case)
                self._outbox.put((call_id, error))
                return
            self._pending[call_id] = future
            future.add_done_callback(functools.partial(self._settled, call_id))
        elif message[0] == wire.CANCEL:
            pending = self._pending.get(message[1])
            if pending is not None:
                pending.cancel()

    def _settled(self, call_id: int, future: Future[Any]) -> None:
        self._pending.pop(call_id, None)
        if not future.cancelled():
            self._outbox.put((call_id, future))

    def _send(self) -> None:
        while True:
            items = [self._outbox.get()]
            with contextlib.suppress(queue.Empty):
                while True:
                    items.append(self._outbox.get_nowait())
            messages: list[tuple[Any, ...]] = []
            closing = False
            for item in items:
                if item is _CLOSE:
                    closing = True
                elif item is _WAKE:
                    self._woken = False
                    messages.append((wire.COMMITTED,))
                else:
                    messages.append(_answer(*item))
            try:
                if messages:
                    # The queue's depth rides on every message (admission in the API process).
                    messages.insert(0, (wire.LOAD, self._writer.expected_wait()))
                    self._connection.send_bytes(_dumps(messages))
            except (OSError, ValueError):
                closing = True
            if closing:
                self.hang_up()
                return


def _answer(call_id: int, outcome: Future[Any] | BaseException) -> tuple[Any, ...]:
    if isinstance(outcome, BaseException):
        return wire.FAILED, call_id, wire.portable(outcome)
    error = outcome.exception()
    if error is not None:
        return wire.FAILED, call_id, wire.portable(error)
    return wire.ANSWER, call_id, outcome.result()


def _dumps(messages: list[tuple[Any, ...]]) -> bytes:
    try:
        return wire.dumps(messages)
    except Exception:
        return wire.dumps([_one_by_one(message) for message in messages])


def _one_by_one(message: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        wire.dumps([message])
    except Exception as error:
        log.exception("writer: an answer could not be sent")
        unsendable = RuntimeError(f"the call was applied but its answer could not be sent: {error}")
        return wire.FAILED, message[1], wire.portable(unsendable)
    return message


class WriterServer:
    """Accepts API processes on ``host:port`` (port 0: any free one; see :attr:`port`)."""

    def __init__(self, writer: LocalWriter, host: str, port: int, authkey: bytes) -> None:
        self._writer = writer
        self._authkey = authkey
        self._socket = socket.create_server((host, port), backlog=64)
        self.port: int = self._socket.getsockname()[1]
        self._peers: set[_Peer] = set()
        self._lock = threading.Lock()
        self._stopping = False
        self._draining = threading.Event()
        writer.add_commit_listener(self._committed)
        self._thread = threading.Thread(target=self._accept, name="writer-accept", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._socket.accept()
            except OSError:
                return  # closed
            peer = _Peer(MessageSocket(sock), self._writer, self._forget, self._draining)
            with self._lock:
                if self._stopping:
                    peer.hang_up()
                    return
                self._peers.add(peer)
            peer.start(self._authkey)

    def _forget(self, peer: _Peer) -> None:
        with self._lock:
            self._peers.discard(peer)

    def _committed(self) -> None:
        for peer in list(self._peers):
            peer.wake()

    def connected(self) -> int:
        return len(self._peers)

    def drain(self) -> None:
        """Stop taking calls: new ones are answered UNAVAILABLE (their callers retry on the
        seat's next holder); those already queued are still answered once the pipeline has
        run them (close the pipeline, then :meth:`close`)."""
        self._draining.set()
        with contextlib.suppress(OSError):
            self._socket.close()

    def close(self) -> None:
        """Drop every connection, after what is ready to send (API processes then reconnect
        to the seat's next holder)."""
        with self._lock:
            self._stopping = True
            peers = list(self._peers)
        with contextlib.suppress(OSError):
            self._socket.close()
        for peer in peers:
            peer.close()
