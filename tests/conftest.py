"""Suite-wide fixtures.

PostgreSQL
----------
``postgres_server`` (session): one server for the whole run, started lazily the first
time a test asks for it.  If ``LEDGER_TEST_POSTGRES_DSN`` is set, that server is used
(nothing is started or stopped; its role needs CREATEDB); otherwise a throwaway
``EmbeddedPostgres`` is started and deleted at the end of the session.  The object has
``.dsn(dbname="postgres") -> str``, ``.create_database(name) -> dsn`` and
``.drop_database(name)``.

``postgres_database_url`` (function): a brand-new, empty database ``t_<12 hex>`` on
``postgres_server``, as a ``postgresql://user@host:port/t_...`` URL; dropped
``WITH (FORCE)`` after the test, so leftover connections do not block teardown.

Tests that need to stop, restart or crash a server must start their own
``testbed.postgres.EmbeddedPostgres`` instead of touching the session server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from testbed.nats import NatsServer, nats_server_from_env_or_embedded
from testbed.postgres import PostgresServer, postgres_server_from_env_or_embedded
from testbed.prometheus import (
    PrometheusBinaries,
    PrometheusUnavailable,
    prometheus_binaries,
)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = postgres_server_from_env_or_embedded()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    url = postgres_server.create_database(name)
    try:
        yield url
    finally:
        postgres_server.drop_database(name)


# --------------------------------------------------------------------------- NATS


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """One NATS server with JetStream for the whole run, started lazily the first time a
    test asks for it (directly or via ``nats_url``).

    If ``LEDGER_TEST_NATS_URL`` is set, that server is used (nothing is started or
    stopped; it must have JetStream enabled); otherwise a throwaway
    ``testbed.nats.EmbeddedNats`` (127.0.0.1, free port, file store in a temp dir,
    ``sync_interval: always``) is started and deleted at the end of the session.  The
    object has ``.url``.  Tests that need to stop, restart or crash a server must start
    their own ``EmbeddedNats`` instead of touching this one.
    """
    server = nats_server_from_env_or_embedded()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    """``nats://host:port`` of the session's ``nats_server``.

    The server is shared by every test of the run (and possibly by other runs, when
    ``LEDGER_TEST_NATS_URL`` points at a long-lived server): nothing is reset between
    tests.  Tests isolate themselves by using unique stream, subject, consumer and KV
    bucket names (e.g. ``f"T_{uuid.uuid4().hex[:12]}"`` for a stream on subjects
    ``f"t.{hex}.>"``) and should delete the streams they create.
    """
    return nats_server.url


# --------------------------------------------------------------------------- Prometheus


@pytest.fixture(scope="session")
def prometheus_tools() -> PrometheusBinaries:
    """``prometheus`` and ``promtool`` from Debian's package, installed on first use
    (``testbed.prometheus``). A machine where that fails fails the test: the alerts
    are part of the product, so their checks never skip."""
    try:
        return prometheus_binaries()
    except PrometheusUnavailable as error:
        pytest.fail(f"Prometheus is not available: {error}", pytrace=False)
