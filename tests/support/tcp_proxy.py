"""A TCP proxy that can stall: a real, slow network path to a real server (tests).

``StallingProxy(connect)`` listens on 127.0.0.1 and a free port; every accepted connection
gets its own upstream connection from ``connect()`` and two forwarding threads. ``stall()``
holds all bytes in both directions (nothing is lost: they are forwarded on ``resume()``), so a
client whose next round trip is stalled simply waits, as it would for a database that takes
that long to answer. ``close()`` drops every connection.

``postgres_url_through(url, proxy_port)`` rewrites a ``postgresql://`` URL to go through the
proxy, and ``postgres_upstream(url)`` gives the ``connect`` callable for the server it named
(TCP or a unix socket directory).
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

CHUNK = 65536


class StallingProxy:
    def __init__(self, connect: Callable[[], socket.socket]) -> None:
        self._connect = connect
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self.connections = 0
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()  # let blocked forwarders run into the closed sockets
        _close(self._listener)
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = self._connect()
            except OSError:
                _close(client)  # the server is down: this client sees a reset, the next may not
                continue
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._forward, args=(source, target), name="stalling-proxy", daemon=True
                ).start()

    def _forward(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(CHUNK):
                self._flowing.wait()
                target.sendall(data)
        except OSError:
            pass
        _close(source)
        _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = int(query.get("port", [str(parts.port or 5432)])[0])
    return host, port


def postgres_upstream(url: str) -> Callable[[], socket.socket]:
    """How the proxy reaches the server of ``url``: TCP, or the unix socket of a host
    that is a directory (libpq's convention)."""
    host, port = _host_port(url)
    if host.startswith("/"):
        path = f"{host}/.s.PGSQL.{port}"

        def unix() -> socket.socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            return sock

        return unix
    return lambda: socket.create_connection((host, port))


def postgres_url_through(url: str, proxy_port: int) -> str:
    """``url`` with host and port replaced by the proxy's (query parameters win in libpq and
    in the ledger's URL reading, so they are set there)."""
    parts = urlsplit(url)
    query = {key: values[0] for key, values in parse_qs(parts.query).items()}
    query.update(host="127.0.0.1", port=str(proxy_port))
    return urlunsplit(parts._replace(query=urlencode(query)))
