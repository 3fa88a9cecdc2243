"""The verify page in a real headless Chromium: the button runs ``VerifyLedger`` through the
console's server-sent events (static/verify.js) and shows the result; the same form
without script (``/verify/run``) shows the same figures.

Method: the scripted history's ledger, checked whole and for one position; the figures
shown are compared with what the gRPC API says the ledger holds (StreamLedger's entries,
ListMovements of the position). A broken chain: a ledger of its own whose stored row is
edited behind the service (as tests/integration/test_audit.py does); the page names the
first broken link as ``VerifyLedger`` and ``ledger audit verify --json`` do.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from inventory_ledger_client import LedgerClient, movement
from selenium.webdriver.common.by import By

from entrypoints.grpc.tokens import principal_entry
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.browser.console_pages import sign_in, url, wait_until
from tests.browser.history import list_all_movements

pytestmark = [pytest.mark.slow, pytest.mark.browser]


def ledger_size(client) -> tuple[int, int]:
    """(entries, positions) of the whole ledger, from StreamLedger."""
    with client.stream_ledger(0) as stream:
        entries = list(stream)
    return len(entries), len({(entry.sku, entry.location_id) for entry in entries})


def run(browser, sku: str = "", location_id: str = ""):
    form = browser.find_element(By.ID, "verify-form")
    for name, value in (("sku", sku), ("location_id", location_id)):
        field = form.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    old = browser.find_elements(By.ID, "verify-result")
    form.find_element(By.ID, "verify-button").click()
    if old:
        wait_until(lambda: _gone(old[0]), "the old result to go")
    return wait_until(lambda: browser.find_elements(By.ID, "verify-result"), "the result")[0]


def _gone(element) -> bool:
    try:
        element.is_displayed()
    except Exception:
        return True
    return False


def test_verify_streams_the_whole_ledger_and_one_position(
    browser, console, history, tokens, client_for
):
    auditor = client_for("auditor")
    sign_in(browser, console, tokens["auditor"], next_path="/verify")
    entries, positions = ledger_size(auditor)

    whole = run(browser)
    assert whole.get_attribute("data-ok") == "true"
    assert int(whole.get_attribute("data-entries-checked")) == entries
    assert int(whole.get_attribute("data-positions-checked")) == positions
    assert "Every chain holds" in whole.text
    assert not browser.find_elements(By.ID, "verify-failure")
    # The script left the page where it was: the result came over server-sent events.
    assert browser.current_url.endswith("/verify")

    one = run(browser, history.sku, history.location_id)
    assert one.get_attribute("data-ok") == "true"
    assert int(one.get_attribute("data-positions-checked")) == 1
    own = list_all_movements(auditor, history.sku, history.location_id)
    assert int(one.get_attribute("data-entries-checked")) == len(own)

    # Without script: the form's own GET answers the same figures.
    browser.get(url(console, "/verify/run", sku=history.sku, location_id=history.location_id))
    plain = browser.find_element(By.ID, "verify-result")
    assert plain.get_attribute("data-ok") == "true"
    assert int(plain.get_attribute("data-entries-checked")) == len(own)


def test_a_tampered_chain_is_named_like_verify_ledger_and_the_cli(browser, tmp_path: Path):
    """Goal: "if broken, the first broken link and its reason". Method: SKU-T and SKU-U get
    three receipts each at DC; SKU-T's receipt of 7 (version 3) is edited to 70 in the
    database; the page's result equals the last VerifyLedger message and the CLI's JSON."""
    principals = tmp_path / "principals.json"
    principals.write_text(
        json.dumps(
            {
                "principals": [
                    principal_entry("auditor", "tok-v-auditor", ["audit"], rate_per_second=0),
                    principal_entry("admin", "tok-v-admin", ["admin"], rate_per_second=0),
                ]
            }
        )
    )
    (tmp_path / "auditor.token").write_text("tok-v-auditor\n")
    database = tmp_path / "ledger.db"
    with LedgerProcess(f"sqlite:///{database}", extra_args=["--token-file", str(principals)]) as (
        ledger
    ):
        with LedgerClient(ledger.address, token="tok-v-admin", timeout=10) as admin:
            for sku in ("SKU-T", "SKU-U"):
                admin.record_movements(
                    [
                        movement("receipt", source="wms", sku=sku, location_id="DC", qty=qty)
                        for qty in (5, 7, 9)
                    ]
                )
        with sqlite3.connect(database) as connection:
            changed = connection.execute(
                "UPDATE stored_events SET state = CAST(replace(CAST(state AS TEXT),"
                " '\"qty\":7', '\"qty\":70') AS BLOB) WHERE originator_version = 3"
                " AND originator_id = (SELECT replace(position_id, '-', '')"
                " FROM ledger_position_index WHERE sku = 'SKU-T' AND location_id = 'DC')"
            ).rowcount
        assert changed == 1

        with (
            LedgerClient(ledger.address, token="tok-v-auditor", timeout=30) as auditor,
            auditor.verify_ledger() as stream,
        ):
            last = list(stream)[-1]
        assert last.done and not last.ok
        expected = [
            {
                "position": f"{link.sku}@{link.location_id}",
                "version": str(link.version),
                "ledger_position": str(link.position),
                "reason": link.reason,
            }
            for link in last.broken_links
        ]
        assert [(row["position"], row["version"]) for row in expected] == [("SKU-T@DC", "3")]

        clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        cli = subprocess.run(
            [
                *(sys.executable, "-m", "entrypoints.cli", "audit", "verify", "--json"),
                *("--target", ledger.address, "--token-file", str(tmp_path / "auditor.token")),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean,
            check=False,
        )
        assert cli.returncode == 1, cli.stderr
        said = json.loads(cli.stdout)
        assert not said["ok"] and said["entries_checked"] == last.entries_checked
        assert [
            {
                "position": f"{link['sku']}@{link['location_id']}",
                "version": str(link["version"]),
                "ledger_position": str(link["position"]),
                "reason": link["reason"],
            }
            for link in said["broken_links"]
        ] == expected

        with ConsoleProcess(ledger.address) as console:
            sign_in(browser, console, "tok-v-auditor", next_path="/verify")
            whole = run(browser)
            assert whole.get_attribute("data-ok") == "false"
            assert int(whole.get_attribute("data-entries-checked")) == last.entries_checked
            assert int(whole.get_attribute("data-positions-checked")) == last.positions_checked
            shown = [
                {
                    "position": row.get_attribute("data-position"),
                    **{
                        name: row.find_element(
                            By.CSS_SELECTOR, f"[data-field='{field}']"
                        ).text.strip()
                        for name, field in (
                            ("version", "version"),
                            ("ledger_position", "position"),
                            ("reason", "reason"),
                        )
                    },
                }
                for row in browser.find_elements(By.CSS_SELECTOR, "#broken-links tr[data-position]")
            ]
            assert shown == expected
            assert last.broken_links[0].detail in browser.find_element(By.ID, "broken-links").text
            # The other position's chain holds.
            other = run(browser, "SKU-U", "DC")
            assert other.get_attribute("data-ok") == "true"
            assert not browser.find_elements(By.ID, "broken-links")
            log = console.log_text()
        assert "Traceback" not in log, log
