"""The standard library's mutual HMAC handshake, as ``multiprocessing.connection``'s Listener
and Client run it, on connections we open ourselves (for TCP_NODELAY and a connect timeout)."""

from __future__ import annotations

import multiprocessing.connection as _mpc
import socket
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

# Module functions the stubs do not declare (typeshed lists only Listener/Client/wait).
_answer: Callable[[Any, bytes], None] = getattr(_mpc, "answer_challenge")  # noqa: B009
_deliver: Callable[[Any, bytes], None] = getattr(_mpc, "deliver_challenge")  # noqa: B009


def message_connection(sock: socket.socket) -> Connection:
    """A blocking message connection over ``sock``, small writes sent at once (no Nagle)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return Connection(sock.detach())


def authenticate_client(connection: Connection, key: bytes) -> None:
    """The connecting side: prove we hold ``key``, then make the writer prove it."""
    _answer(connection, key)
    _deliver(connection, key)


def authenticate_server(connection: Connection, key: bytes) -> None:
    """The writer's side (the mirror image of :func:`authenticate_client`)."""
    _deliver(connection, key)
    _answer(connection, key)
