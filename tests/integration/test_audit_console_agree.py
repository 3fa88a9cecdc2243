"""``ledger audit as-of --json``, the console's as-of page and ``GetPositionAsOf`` give the
same figures for the same question (issue 21, must show 4).

Method: one real ``ledger serve`` (SQLite) with a token file, the browser tests' scripted
history (tests/browser/history.py: facts recorded late with an earlier ``occurred_at``, holds,
a safety stock, so the axes and ``known_at`` change the answers), and one real ``ledger
console`` in front of it. The same auditor token (scope ``audit`` only) asks all three: the
CLI as a subprocess with ``--token-file``, the console over HTTP signed in with it (its
``data-bucket`` cells, read as tests/integration/test_console.py reads them), and the Python
client over gRPC. Questions: five recorded instants, five effective instants, five
(effective instant, ``known_at``) pairs.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from inventory_ledger_client import LedgerClient

from entrypoints.grpc.tokens import principal_entry
from entrypoints.ledger_fold import format_instant
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.browser.history import History, write_history
from tests.integration.console_http import HttpSession
from tests.integration.test_console import elements

pytestmark = pytest.mark.slow

AUDITOR, ADMIN = "tok-agree-auditor", "tok-agree-admin"
# The figures all three give: the buckets of the as-of table and the position's version.
FIGURES = (
    "on_hand",
    "receiving",
    "quarantine",
    "damaged",
    "in_transit_inbound",
    "reserved",
    "allocated",
    "safety_stock",
    "expired",
    "available",
    "version",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("agree")
    principals = root / "principals.json"
    principals.write_text(
        json.dumps(
            {
                "principals": [
                    principal_entry("auditor", AUDITOR, ["audit"], rate_per_second=0),
                    principal_entry("admin", ADMIN, ["admin"], rate_per_second=0),
                ]
            }
        )
    )
    token_file = root / "auditor.token"
    token_file.write_text(AUDITOR + "\n")
    with LedgerProcess(
        f"sqlite:///{root / 'ledger.db'}", extra_args=["--token-file", str(principals)]
    ) as ledger:
        with LedgerClient(ledger.address, token=ADMIN, timeout=10) as admin:
            history = write_history(admin)
        with ConsoleProcess(ledger.address) as console:
            yield {
                "ledger": ledger,
                "console": console,
                "history": history,
                "token_file": token_file,
            }
            assert "Traceback" not in console.log_text(), console.log_text()
        assert "Traceback" not in ledger.log_text(all_runs=True)


def cli_as_of(
    ledger: LedgerProcess,
    token_file: Path,
    history: History,
    at: dt.datetime,
    axis: str,
    known_at: dt.datetime | None,
) -> dict[str, Any]:
    argv = ["as-of", "--sku", history.sku, "--location-id", history.location_id]
    argv += ["--at", format_instant(at), "--axis", axis, "--json"]
    if known_at is not None:
        argv += ["--known-at", format_instant(known_at)]
    argv += ["--target", ledger.address, "--token-file", str(token_file)]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    done = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "audit", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def console_as_of(
    session: HttpSession,
    history: History,
    at: dt.datetime,
    axis: str,
    known_at: dt.datetime | None,
) -> tuple[dict[str, str], dict[str, int]]:
    """The as-of table's attributes and its figures (``data-bucket`` cells and version)."""
    params = {
        "sku": history.sku,
        "location_id": history.location_id,
        "at": format_instant(at),
        "axis": axis,
        "points": "2",
    }
    if known_at is not None:
        params["known_at"] = format_instant(known_at)
    page = session.get("/as-of", params)
    assert page.status == 200, page.text
    [table] = elements(page.text, id="as-of-buckets")
    key = f"{history.sku}@{history.location_id}"
    shown: dict[str, int] = {}
    for cell in elements(page.text, data_bucket="*"):
        assert cell["tag"] == "td" and cell["attrs"]["data-position"] == key, cell
        assert cell["attrs"]["data-axis"] == axis, cell
        name = cell["attrs"]["data-bucket"]
        assert name not in shown, f"two {name} cells"
        shown[name] = int(cell["text"].strip())
    [version] = elements(page.text, data_field="version", data_position=key)
    shown["version"] = int(version["text"].strip())
    return table["attrs"], shown


def test_audit_cli_console_and_grpc_agree(world: dict[str, Any]) -> None:
    ledger, console, history = world["ledger"], world["console"], world["history"]
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    signed = browser.post("/sign-in", {"csrf_token": form.csrf_token(), "token": AUDITOR})
    assert signed.status == 303, signed.text

    questions: list[tuple[dt.datetime, str, dt.datetime | None]] = [
        (at, "recorded", None) for at in history.checkpoints[1:6]
    ]
    questions += [(at, "effective", None) for at in history.effective_instants]
    questions += [(at, "effective", known) for at, known in history.known_at_pairs]
    assert len(questions) == 15

    answers = set()
    with LedgerClient(ledger.address, token=AUDITOR, timeout=10) as auditor:
        for at, axis, known_at in questions:
            case = (format_instant(at), axis, format_instant(known_at))
            position = auditor.get_position_as_of(
                history.sku, history.location_id, at, axis=axis, known_at=known_at
            )
            grpc_figures = {name: int(getattr(position, name)) for name in FIGURES}
            cli = cli_as_of(ledger, world["token_file"], history, at, axis, known_at)
            attributes, page = console_as_of(browser, history, at, axis, known_at)

            # The three were asked the same question ...
            assert (cli["sku"], cli["location_id"], cli["axis"]) == (
                history.sku,
                history.location_id,
                axis,
            )
            assert (cli["at"], cli["known_at"] or "") == (case[0], case[2])
            assert (attributes["data-at"], attributes["data-axis"]) == (case[0], axis)
            assert attributes["data-known-at"] == case[2]
            # ... and give the same answer.
            assert {name: cli[name] for name in FIGURES} == grpc_figures, case
            assert page == grpc_figures, case
            assert cli["fences"] == dict(sorted(position.fences.items())), case
            answers.add(tuple(sorted(grpc_figures.items())))

    # The questions really differ (equal zeros would prove nothing): late facts, holds,
    # the safety stock and known_at make at least eight distinct answers.
    assert len(answers) >= 8, answers
    assert all(dict(answer)["version"] > 0 for answer in answers)
