"""PostgreSQL and NATS for the run: the ones given, else throwaway embedded servers
(``LEDGER_TEST_POSTGRES_DSN`` / ``LEDGER_TEST_NATS_URL`` are honoured, as in the tests)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from tools.bench.progress import progress


class InfraUnavailable(RuntimeError):
    """PostgreSQL or NATS could not be started (the benchmark cannot run here)."""


@contextlib.contextmanager
def postgres(url: str | None) -> Iterator[str]:
    """URL of an empty database: ``url`` itself (it must be empty), else a new database on
    an embedded server (PR_SET_PDEATHSIG is tied to this thread: call from the main one)."""
    if url:
        yield url
        return
    from testbed.postgres import PostgresStartError, postgres_server_from_env_or_embedded

    progress("starting PostgreSQL")
    try:
        server = postgres_server_from_env_or_embedded()
    except (PostgresStartError, OSError, ImportError) as error:
        raise InfraUnavailable(f"PostgreSQL did not start: {error}") from error
    name = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        database = server.create_database(name)
        try:
            yield database
        finally:
            server.drop_database(name)
    finally:
        server.cleanup()


@contextlib.contextmanager
def nats(url: str | None) -> Iterator[str]:
    """URL of a nats-server with JetStream: ``url`` itself, else an embedded one (file
    storage, ``sync_interval: always``, as in production)."""
    if url:
        yield url
        return
    from testbed.nats import NatsStartError, nats_server_from_env_or_embedded

    progress("starting nats-server")
    try:
        server = nats_server_from_env_or_embedded()
    except (NatsStartError, OSError, ImportError) as error:
        raise InfraUnavailable(f"nats-server did not start: {error}") from error
    try:
        yield server.url
    finally:
        server.cleanup()
