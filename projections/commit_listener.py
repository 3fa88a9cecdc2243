"""Wake a projection runner in another process the moment the ledger commits.

The `eventsourcing` PostgreSQL recorder sends NOTIFY on its events table's channel in every
insert transaction; LISTENing to it replaces the runner's idle polling interval with a
wake-up within milliseconds. Polling stays as the fallback: a lost notification (for
example while reconnecting) delays a batch by one poll interval, never loses it.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections.abc import Callable

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ledger.config import eventsourcing_env
from ledger.logs import one_line, retry_delay

log = logging.getLogger(__name__)


class CommitListener:
    # The longest one wait lasts without input: a safety net, as stop() wakes it at once.
    wait_seconds = 1.0

    def __init__(
        self,
        database_url: str,
        channel: str,
        on_commit: Callable[[], None],
        on_payload: Callable[[str], None] | None = None,
    ) -> None:
        """``on_payload`` (optional) gets each notification's payload, before ``on_commit``."""
        env = eventsourcing_env(database_url)
        self._conninfo = make_conninfo(
            dbname=env["POSTGRES_DBNAME"],
            host=env["POSTGRES_HOST"],
            port=env["POSTGRES_PORT"],
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"] or None,
            connect_timeout=env["POSTGRES_CONNECT_TIMEOUT"],
        )
        self._channel = channel
        self._on_commit = on_commit
        self._on_payload = on_payload
        self._stop = threading.Event()
        # stop() writes to one end so the listener's wait returns at once (a shutdown does
        # not sit out a poll interval per listener).
        self._wake_reader, self._wake_writer = socket.socketpair()
        self._thread = threading.Thread(target=self._run, name="commit-listener", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):  # the listener has ended and closed the socket
            self._wake_writer.send(b"\0")
        if self._thread.ident is not None:  # started
            self._thread.join(5)

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            self._wake_reader.close()
            self._wake_writer.close()

    def _listen(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                    failures = 0
                    # poll(), not select(): a process with many sockets open may give this
                    # connection a descriptor above select()'s 1024.
                    waiter = select.poll()
                    waiter.register(conn.pgconn.socket, select.POLLIN)
                    waiter.register(self._wake_reader, select.POLLIN)
                    while not self._stop.is_set():
                        # What has arrived, without waiting (the LISTEN's own answer may have
                        # brought some); a lost connection raises here.
                        for note in conn.notifies(timeout=0):
                            if self._on_payload is not None:
                                self._on_payload(note.payload)
                            self._on_commit()
                        waiter.poll(self.wait_seconds * 1000)
            except Exception as error:  # reconnect after a pause, never leave for good
                failures += 1
                delay = retry_delay(failures)
                log.warning(
                    "commit listener reconnecting: %s (attempt %d); retrying in %.1f s",
                    one_line(error),
                    failures,
                    delay,
                    exc_info=not isinstance(error, psycopg.Error),
                )
                self._stop.wait(delay)
