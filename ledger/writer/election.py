"""The ledger's writer seat on PostgreSQL: who writes, and where API processes find it.

One ``ledger writer`` per ledger holds the seat: a session-level advisory lock on a
connection it keeps for as long as it lives. Candidates wait for the lock (standbys); the
server releases it the moment the holder's session ends (process killed, host gone, network
cut past the keepalives), and one standby takes the seat. The holder then advertises its
address and a fresh key in ``ledger_writer_seat`` (one row), where API processes read
them. The key authenticates API processes to the writer; it is as secret as the database
(anyone who can read the row could write the ledger directly anyway).

The seat routes writes to one process; it is not what keeps the ledger consistent. Every
batch the writer commits still takes the per-turn writer mutex and the version checks
(``ledger.store.writer_mutex``), so even two processes that both believe they hold the seat
(a holder cut off from the database while its successor starts) cannot corrupt it: they
would conflict and retry, as replicas did before the seat existed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from ledger.config import eventsourcing_env
from ledger.store.pg_ddl import advisory_key

log = logging.getLogger(__name__)

SEAT_TABLE = "ledger_writer_seat"


@dataclass(frozen=True)
class WriterAdvert:
    host: str
    port: int
    authkey: bytes
    pid: int


def _conninfo(database_url: str) -> tuple[str, str]:
    env = eventsourcing_env(database_url)
    conninfo = make_conninfo(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        connect_timeout=env["POSTGRES_CONNECT_TIMEOUT"],
        # Both ends of the seat's session give up on a silent peer within about half a
        # minute: the server side (options) releases a vanished holder's lock, the client
        # side notices a server that is gone. The server's defaults would keep a holder
        # whose host disappeared without a reset for over two hours.
        keepalives_idle=10,
        keepalives_interval=5,
        keepalives_count=3,
        tcp_user_timeout=20_000,
        options=(
            "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=5"
            " -c tcp_keepalives_count=3 -c tcp_user_timeout=20000"
        ),
    )
    return conninfo, env["POSTGRES_SCHEMA"]


def read_advert(database_url: str) -> WriterAdvert | None:
    """Where the seat's holder listens (None before any writer took the seat). The row may
    name a holder that just died: connecting fails, and the caller asks again."""
    conninfo, schema = _conninfo(database_url)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f"{schema}.{SEAT_TABLE}",)
        ).fetchone()
        if not exists or not exists[0]:
            return None
        row = connection.execute(
            sql.SQL("SELECT host, port, authkey, pid FROM {}.{} WHERE seat = 1").format(
                sql.Identifier(schema), sql.Identifier(SEAT_TABLE)
            )
        ).fetchone()
    if row is None:
        return None
    return WriterAdvert(str(row[0]), int(row[1]), bytes(row[2]), int(row[3]))


class WriterSeat:
    def __init__(self, database_url: str) -> None:
        self._conninfo, self._schema = _conninfo(database_url)
        self._key = advisory_key(self._schema, SEAT_TABLE)
        self._connection: psycopg.Connection[Any] | None = None

    def take(self, stop: threading.Event, poll_seconds: float = 0.2) -> bool:
        """Wait until this process holds the seat (True) or ``stop`` is set (False)."""
        waiting_logged = unavailable_logged = False
        while not stop.is_set():
            try:
                if self._try_take():
                    return True
            except psycopg.Error as error:
                self._discard()
                if not unavailable_logged:  # once per outage, not every poll
                    log.warning("writer seat: database unavailable, retrying: %s", error)
                    unavailable_logged = True
                stop.wait(poll_seconds * 5)
                continue
            unavailable_logged = False
            if not waiting_logged:
                log.info("standby: another writer holds the seat; waiting to take over")
                waiting_logged = True
            stop.wait(poll_seconds)
        return False

    def _try_take(self) -> bool:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(self._conninfo, autocommit=True)
        row = self._connection.execute("SELECT pg_try_advisory_lock(%s)", (self._key,)).fetchone()
        return bool(row and row[0])

    def advertise(self, host: str, port: int, authkey: bytes, pid: int) -> None:
        """Publish where this holder listens (only the holder writes the row)."""
        assert self._connection is not None, "take the seat first"
        table = sql.Identifier(self._schema), sql.Identifier(SEAT_TABLE)
        self._connection.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.{} (seat int PRIMARY KEY CHECK (seat = 1),"
                " host text NOT NULL, port int NOT NULL, authkey bytea NOT NULL,"
                " pid int NOT NULL, since timestamptz NOT NULL DEFAULT now())"
            ).format(*table)
        )
        self._connection.execute(
            sql.SQL(
                "INSERT INTO {}.{} (seat, host, port, authkey, pid) VALUES (1, %s, %s, %s, %s)"
                " ON CONFLICT (seat) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port,"
                " authkey = EXCLUDED.authkey, pid = EXCLUDED.pid, since = now()"
            ).format(*table),
            (host, port, authkey, pid),
        )

    def still_held(self) -> bool:
        """Whether the session that holds the lock is still alive (one round trip)."""
        if self._connection is None or self._connection.closed:
            return False
        try:
            self._connection.execute("SELECT 1")
        except psycopg.Error:
            self._discard()
            return False
        return True

    def release(self) -> None:
        """Give the seat up: ending the session releases the lock at once."""
        self._discard()

    def _discard(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(psycopg.Error):
                self._connection.close()
        self._connection = None
