"""Fixtures of the console's browser tests: a real ``ledger serve`` with a token file and a
scripted history, a real ``ledger console`` in front of it, and a headless Chromium.

``browser`` is a new Chromium per test (no cookies carried over). When a test fails, its
screenshot (PNG) and page source are saved to the artefact directory
(``LEDGER_TEST_ARTEFACTS``, default ``<tmp>/ledger-browser-artefacts``) and the report names
the files. The ledger, its history and the console are shared by the whole session: the
history takes a few seconds to write (one recorded-axis checkpoint per step), and no test
changes it (the refused reconcile post checks exactly that).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from inventory_ledger_client import LedgerClient

from entrypoints.grpc.tokens import principal_entry
from testbed.browser import chromium_driver
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.browser.history import History, write_history

# name -> (token, scopes). The auditor holds `audit` only: the must-show signs in with it.
PRINCIPALS: dict[str, tuple[str, list[str]]] = {
    "auditor": ("tok-browser-auditor", ["audit"]),
    "inspector": ("tok-browser-inspector", ["audit", "query"]),
    "reader": ("tok-browser-reader", ["query"]),
    "admin": ("tok-browser-admin", ["admin"]),
}
ARTEFACTS_ENVIRONMENT = "LEDGER_TEST_ARTEFACTS"


def artefact_dir() -> Path:
    path = Path(
        os.environ.get(ARTEFACTS_ENVIRONMENT)
        or Path(tempfile.gettempdir()) / "ledger-browser-artefacts"
    )
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """On a failed test (or setup) that used ``browser``: save what the browser showed."""
    outcome = yield
    report = outcome.get_result()
    if report.when not in ("setup", "call") or not report.failed:
        return
    driver = getattr(item, "funcargs", {}).get("browser")
    if driver is None:
        return
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", item.nodeid)[-150:]
    target = artefact_dir()
    saved = []
    try:
        png = target / f"{stem}.png"
        if driver.save_screenshot(str(png)):
            saved.append(str(png))
        html = target / f"{stem}.html"
        html.write_text(f"<!-- {driver.current_url} -->\n{driver.page_source}")
        saved.append(str(html))
    except Exception as error:  # the browser may be what broke; say so, keep the report
        saved.append(f"(could not save the browser's state: {error!r})")
    report.sections.append(("browser artefacts", "\n".join(saved)))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (1280x800 viewport); downloads go to ``tmp_path/downloads``."""
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    driver = chromium_driver(download_dir=downloads)
    driver.download_dir = downloads  # for tests that download (wait_for_download)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def tokens() -> dict[str, str]:
    return {name: token for name, (token, _scopes) in PRINCIPALS.items()}


@pytest.fixture(scope="session")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    """``ledger serve`` on SQLite with a token file of ``PRINCIPALS``."""
    base = tmp_path_factory.mktemp("browser-ledger")
    token_file = base / "tokens.json"
    entries = [
        principal_entry(name, token, scopes, rate_per_second=0)
        for name, (token, scopes) in PRINCIPALS.items()
    ]
    token_file.write_text(json.dumps({"principals": entries}))
    process = LedgerProcess(
        f"sqlite:///{base / 'ledger.db'}", extra_args=["--token-file", str(token_file)]
    )
    with process:
        yield process
        assert "Traceback" not in process.log_text(all_runs=True), process.log_text()


@pytest.fixture(scope="session")
def client_for(ledger: LedgerProcess, tokens: dict[str, str]) -> Iterator[Callable[[str], Any]]:
    """``client_for("auditor")``: a ``LedgerClient`` with that principal's token."""
    clients: dict[str, LedgerClient] = {}

    def make(name: str) -> LedgerClient:
        if name not in clients:
            clients[name] = LedgerClient(ledger.address, token=tokens[name], timeout=10)
        return clients[name]

    try:
        yield make
    finally:
        for client in clients.values():
            client.close()


@pytest.fixture(scope="session")
def history(client_for: Callable[[str], LedgerClient]) -> History:
    return write_history(client_for("admin"))


@pytest.fixture(scope="session")
def console(ledger: LedgerProcess, history: History) -> Iterator[ConsoleProcess]:
    """``ledger console`` against ``ledger`` (after the history is written)."""
    process = ConsoleProcess(ledger.address)
    with process:
        yield process
        log = process.log_text()
        assert "Traceback" not in log, log


def pytest_configure(config: pytest.Config) -> None:
    # Registered here (with the tests it marks), so `-m browser` selects them under
    # --strict-markers without another entry in pyproject.toml.
    config.addinivalue_line("markers", "browser: drives a real headless Chromium (Selenium)")
