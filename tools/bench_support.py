"""What the benchmarks under tools/ share."""

from __future__ import annotations

import contextlib
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def database(spec: str | None) -> Iterator[tuple[str, str]]:
    """(kind, url) of an empty database for the run; cleaned up afterwards."""
    if spec is None or spec == "sqlite":
        with tempfile.TemporaryDirectory(prefix="bench-ledger-") as tmp:
            yield "sqlite", f"sqlite:///{Path(tmp) / 'ledger.db'}"
        return
    if spec == "postgres":
        from testbed.postgres import postgres_server_from_env_or_embedded

        print("starting PostgreSQL ...", file=sys.stderr, flush=True)
        server = postgres_server_from_env_or_embedded()
        name = f"bench_{uuid.uuid4().hex[:12]}"
        try:
            url = server.create_database(name)
            try:
                yield "postgres", url
            finally:
                server.drop_database(name)
        finally:
            server.cleanup()
        return
    kind = "postgres" if spec.startswith(("postgres://", "postgresql://")) else spec.split(":")[0]
    yield kind, spec
