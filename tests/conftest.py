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
``tests.support.postgres.EmbeddedPostgres`` instead of touching the session server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from tests.support.postgres import PostgresServer, postgres_server_from_env_or_embedded


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
