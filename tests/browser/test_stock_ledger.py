"""The stock-ledger page in a real headless Chromium (issue 21, must show 2): its running
balances equal a fold of ``ListMovements`` (tests/browser/history.py's own fold, not the
console's), late entries are marked, and the CSV the browser downloads holds exactly the
rows the page shows.

Method: signed in with an `audit`-only token, the browser opens the page through its form
(recorded axis, every entry) and through a link (effective axis, a window, four rows per
page, walked with the "Next page" link); each row's ``data-bucket`` cells are compared with
the reference fold of the position's whole ``ListMovements`` answer on that axis, and the CSV
link's download with the table.
"""

from __future__ import annotations

import csv
import datetime as dt

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from testbed.browser import wait_for_download
from tests.browser.console_pages import instant, path_of, sign_in, url, wait_until
from tests.browser.history import BUCKETS, list_all_movements, running_balances

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SHOWN = (*BUCKETS, "available")

# One round trip for the whole table (per-element WebDriver calls are slow).
READ_TABLE = """
const cell = (tr, name) => {
  const found = tr.querySelector('[data-field="' + name + '"]');
  return found ? found.textContent.trim() : "";
};
return Array.from(document.querySelectorAll("#ledger-table tbody tr[data-entry-position]"))
  .map(tr => ({
    position: Number(tr.dataset.entryPosition),
    version: Number(tr.dataset.version),
    late: tr.dataset.late === "true",
    late_mark: tr.querySelector("[data-late-mark]") !== null,
    type: tr.querySelector('[data-field="type"]').firstChild.textContent.trim(),
    message_id: cell(tr, "message_id"),
    occurred_at: cell(tr, "occurred_at"),
    recorded_at: cell(tr, "recorded_at"),
    axes: Array.from(tr.querySelectorAll("[data-bucket]"), td => td.dataset.axis),
    buckets: Object.fromEntries(Array.from(tr.querySelectorAll("[data-bucket]"),
      td => [td.dataset.bucket, Number(td.textContent.trim())])),
  }));
"""


def shown_rows(browser) -> list[dict]:
    return browser.execute_script(READ_TABLE)


def entry_type(entry) -> str:
    from inventory.ledger.v1 import audit_service_pb2

    return audit_service_pb2.EntryType.Name(entry.type).removeprefix("ENTRY_TYPE_").lower()


def late_positions(entries_in_ledger_order) -> set[int]:
    """Entries that occurred before something recorded earlier (docs/audit.md: late)."""
    late, newest = set(), None
    for entry in entries_in_ledger_order:
        occurred = entry.occurred_at.ToDatetime(dt.UTC)
        if newest is not None and occurred < newest:
            late.add(int(entry.position))
        newest = occurred if newest is None else max(newest, occurred)
    return late


def reference(client, history, axis):
    """(entries in ListMovements order on ``axis``, {position: balance after it}, late set)."""
    entries = list_all_movements(client, history.sku, history.location_id, axis=axis)
    balances = {
        int(entry.position): balance
        for entry, balance in zip(entries, running_balances(entries), strict=True)
    }
    in_ledger_order = list_all_movements(client, history.sku, history.location_id)
    return entries, balances, late_positions(in_ledger_order)


def check_rows(rows, entries, balances, late, axis):
    assert [row["position"] for row in rows] == [int(e.position) for e in entries]
    for row, entry in zip(rows, entries, strict=True):
        where = (row["position"], row["type"], row["message_id"])
        assert row["version"] == entry.version, where
        assert row["type"] == entry_type(entry), where
        assert row["message_id"] == entry.message_id, where
        assert set(row["axes"]) == {axis}, where
        want = {bucket: balances[row["position"]][bucket] for bucket in SHOWN}
        assert {bucket: row["buckets"].get(bucket) for bucket in SHOWN} == want, where
        assert row["late"] == row["late_mark"] == (row["position"] in late), where


def download_csv(browser, page: int) -> list[dict[str, str]]:
    browser.find_element(By.ID, "csv-link").click()
    path = wait_for_download(browser.download_dir, f"ledger-*-p{page}.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_csv(csv_rows, rows):
    """The CSV holds exactly the rows shown: same entries, order, times and balances."""
    assert [int(line["position"]) for line in csv_rows] == [row["position"] for row in rows]
    for line, row in zip(csv_rows, rows, strict=True):
        assert int(line["version"]) == row["version"]
        assert line["type"] == row["type"]
        assert line["message_id"] == row["message_id"]
        assert line["occurred_at"] == row["occurred_at"]
        assert line["recorded_at"] == row["recorded_at"]
        assert line["late"] == ("true" if row["late"] else "false")
        assert {bucket: int(line[bucket]) for bucket in SHOWN} == {
            bucket: row["buckets"][bucket] for bucket in SHOWN
        }


def test_reference_fold_equals_get_position_as_of(history, client_for):
    """The reference fold itself is checked against the ledger: after each group of entries
    recorded together, its balance is what GetPositionAsOf answers at that instant."""
    auditor = client_for("auditor")
    entries = list_all_movements(auditor, history.sku, history.location_id)
    folded = running_balances(entries)
    assert len(entries) >= 12
    checked = 0
    for index, (entry, balance) in enumerate(zip(entries, folded, strict=True)):
        if index + 1 < len(entries) and entries[index + 1].recorded_at == entry.recorded_at:
            continue
        at = entry.recorded_at.ToDatetime(dt.UTC)
        position = auditor.get_position_as_of(history.sku, history.location_id, at)
        assert {bucket: int(getattr(position, bucket)) for bucket in SHOWN} == balance
        checked += 1
    assert checked >= 8


def test_running_balances_on_the_recorded_axis(browser, console, history, tokens, client_for):
    entries, balances, late = reference(client_for("auditor"), history, "recorded")
    assert len(late) >= 2  # the backdated shipment and adjustment
    sign_in(browser, console, tokens["auditor"], next_path="/ledger")
    assert path_of(browser) == "/ledger"
    form = browser.find_element(By.ID, "ledger-form")
    form.find_element(By.ID, "sku").send_keys(history.sku)
    form.find_element(By.ID, "location_id").send_keys(history.location_id)
    Select(form.find_element(By.ID, "axis")).select_by_value("recorded")
    form.find_element(By.ID, "show").click()
    wait_until(lambda: browser.find_elements(By.ID, "ledger-table"), "the ledger table")

    table = browser.find_element(By.ID, "ledger-table")
    assert table.get_attribute("data-position") == f"{history.sku}@{history.location_id}"
    assert table.get_attribute("data-axis") == "recorded"
    rows = shown_rows(browser)
    check_rows(rows, entries, balances, late, "recorded")
    late_messages = {row["message_id"] for row in rows if row["late"]}
    assert {"dn-0999", "adj-77"} <= late_messages, late_messages
    check_csv(download_csv(browser, 1), rows)


def test_running_balances_on_the_effective_axis_paged(
    browser, console, history, tokens, client_for
):
    """A window on the effective axis, four rows a page: every row's balance is the
    position's after that entry folded from its first entry (not from the window's start),
    and page 2's CSV is page 2's rows."""
    entries, balances, late = reference(client_for("auditor"), history, "effective")
    start = history.effective_instants[2].replace(hour=0, minute=0)  # the second day
    end = history.checkpoints[-1]
    window = [entry for entry in entries if start <= entry.occurred_at.ToDatetime(dt.UTC) < end]
    assert len(window) > 8 and window[0].position != entries[0].position
    page_size = 4
    path = url(
        console,
        "/ledger",
        sku=history.sku,
        location_id=history.location_id,
        axis="effective",
        **{"from": instant(start), "to": instant(end)},
        page_size=page_size,
    ).removeprefix(console.url)
    sign_in(browser, console, tokens["auditor"], next_path=path)
    summary = browser.find_element(By.ID, "ledger-summary")
    assert int(summary.get_attribute("data-window-rows")) == len(window)
    pages = int(summary.get_attribute("data-pages"))
    assert pages == -(-len(window) // page_size)

    seen: list[dict] = []
    for page in range(1, pages + 1):
        assert int(browser.find_element(By.ID, "ledger-summary").get_attribute("data-page")) == page
        rows = shown_rows(browser)
        assert len(rows) == min(page_size, len(window) - len(seen))
        if page == 2:
            check_csv(download_csv(browser, 2), rows)
        seen.extend(rows)
        if page < pages:
            old = browser.find_element(By.ID, "ledger-table")
            browser.find_element(By.ID, "next-page").click()
            wait_until(lambda old=old: _stale(old), "the next page")
    assert not browser.find_elements(By.ID, "next-page")
    check_rows(seen, window, balances, late, "effective")


def _stale(element) -> bool:
    try:
        element.is_displayed()
    except Exception:
        return True
    return False
