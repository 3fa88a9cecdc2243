"""Fixtures of the client tests: a real ``ledger serve`` on SQLite, and the client package.

The typed client lives in ``clients/python/src`` next to the generated stubs. The repository's
own install (``pip install -e .``) maps that directory, so ``inventory_ledger_client`` imports
like the stubs do; an environment installed before the client existed gets the directory put
on ``sys.path`` here instead. Either way the tests import the source in this checkout.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.server import LedgerProcess

REPO = Path(__file__).resolve().parent.parent.parent
CLIENT_DIR = REPO / "clients" / "python"
CLIENT_SRC = CLIENT_DIR / "src"

if importlib.util.find_spec("inventory_ledger_client") is None:
    sys.path.insert(0, str(CLIENT_SRC))


@pytest.fixture(scope="module")
def ledger_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    """One server per test module (tests use their own SKUs and order refs)."""
    directory = tmp_path_factory.mktemp("client-ledger")
    process = LedgerProcess(f"sqlite:///{directory / 'ledger.db'}")
    process.start()
    try:
        yield process
        if process.running:
            assert process.stop() == 0, process.log_text()
        log = process.log_text(all_runs=True)
        assert "Traceback" not in log, log
    finally:
        process.close()
