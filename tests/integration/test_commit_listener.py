"""projections.commit_listener.CommitListener over a real PostgreSQL: every NOTIFY on its
channel reaches the callbacks, a dropped connection is re-established, and stop() returns
without sitting out the listener's poll interval (a ``ledger serve`` on PostgreSQL runs two
listeners and took 2 s to stop because of it)."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from ledger.config import eventsourcing_env
from projections.commit_listener import CommitListener

pytestmark = pytest.mark.postgres

CHANNEL = "test_commit_listener"


def _connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    env = eventsourcing_env(url)
    return psycopg.connect(
        dbname=env["POSTGRES_DBNAME"],
        host=env["POSTGRES_HOST"],
        port=env["POSTGRES_PORT"],
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"] or None,
        autocommit=True,
    )


def _notify_until(
    url: str, payloads: list[str], want: int, prefix: str = "", seconds: float = 10.0
) -> None:
    """NOTIFY ``prefix1``, ``prefix2``, ... until ``want`` payloads with that prefix have
    arrived (the LISTEN may not be in place yet)."""
    deadline = time.monotonic() + seconds
    with _connect(url) as conn:
        sent = 0
        while len([p for p in payloads if p.startswith(prefix)]) < want:
            assert time.monotonic() < deadline, payloads
            sent += 1
            payload = f"{prefix}{sent}"
            conn.execute(sql.SQL("NOTIFY {}, {}").format(sql.Identifier(CHANNEL), payload))
            time.sleep(0.05)


def test_notifications_arrive_and_stop_is_prompt(postgres_database_url: str) -> None:
    payloads: list[str] = []
    commits = threading.Semaphore(0)
    listener = CommitListener(postgres_database_url, CHANNEL, commits.release, payloads.append)
    listener.wait_seconds = 30.0  # a stop that waited for the wait to end would take that
    listener.start()
    try:
        _notify_until(postgres_database_url, payloads, 3)
        assert commits.acquire(timeout=5)
        assert [int(p) for p in payloads] == sorted(int(p) for p in payloads)
    finally:
        time.sleep(0.2)  # idle: the listener is waiting for input
        started = time.monotonic()
        listener.stop()
        stopped_after = time.monotonic() - started
    assert not listener._thread.is_alive()
    assert stopped_after < 1.0, stopped_after
    listener.stop()  # a second stop is harmless


def test_stop_before_start_is_harmless(postgres_database_url: str) -> None:
    CommitListener(postgres_database_url, CHANNEL, lambda: None).stop()


def test_a_terminated_connection_is_reestablished(postgres_database_url: str) -> None:
    payloads: list[str] = []
    listener = CommitListener(postgres_database_url, CHANNEL, lambda: None, payloads.append)
    listener.start()
    try:
        _notify_until(postgres_database_url, payloads, 1)
        with _connect(postgres_database_url) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
            ).fetchall()
        assert killed == [(True,)]
        # Only a new LISTEN session can hear these: the old one is gone.
        _notify_until(postgres_database_url, payloads, 1, prefix="after-", seconds=20)
    finally:
        listener.stop()
