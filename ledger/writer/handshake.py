"""One TCP connection between an API process and the writer: message framing and the mutual
HMAC handshake of ``multiprocessing.connection`` (as its Listener and Client run them), on
sockets we open ourselves for TCP_NODELAY, timeouts and a hang-up that wakes a blocked
reader."""

from __future__ import annotations

import contextlib
import multiprocessing.connection as _mpc
import os
import socket
import struct
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# Module functions the stubs do not declare (typeshed lists only Listener/Client/wait).
_answer: Callable[[Any, bytes], None] = getattr(_mpc, "answer_challenge")  # noqa: B009
_deliver: Callable[[Any, bytes], None] = getattr(_mpc, "deliver_challenge")  # noqa: B009

# The handshake of a peer that accepts but never speaks (a stale advert's port now used by
# another program, a hung holder) must not block its caller for good.
HANDSHAKE_SECONDS = 2.0


class MessageSocket:
    """Length-prefixed messages over a blocking TCP socket, small writes sent at once."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)  # blocking: Connection reads and writes the descriptor itself
        self._sock = sock
        # Its own descriptor: closing it never closes the socket under a blocked reader.
        self.connection = Connection(os.dup(sock.fileno()))

    def authenticate_client(self, key: bytes) -> None:
        """The connecting side: prove we hold ``key``, then make the writer prove it."""
        with self._timed(HANDSHAKE_SECONDS):
            _answer(self.connection, key)
            _deliver(self.connection, key)

    def authenticate_server(self, key: bytes) -> None:
        """The writer's side (the mirror image of :meth:`authenticate_client`)."""
        with self._timed(HANDSHAKE_SECONDS):
            _deliver(self.connection, key)
            _answer(self.connection, key)

    def hang_up(self) -> None:
        """Shut the socket down (a thread blocked reading it gets end of file at once, and
        the peer sees the connection end), then release the descriptors."""
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            self.connection.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    @contextlib.contextmanager
    def _timed(self, seconds: float) -> Any:
        """Blocking reads and writes give up after ``seconds`` (OSError) inside the block."""
        self._set_timeouts(seconds)
        try:
            yield
        finally:
            self._set_timeouts(0.0)

    def _set_timeouts(self, seconds: float) -> None:
        whole = int(seconds)
        value = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            self._sock.setsockopt(socket.SOL_SOCKET, option, value)
