"""The verify page in a real headless Chromium: the button runs ``VerifyLedger`` through the
console's server-sent events (static/verify.js) and shows the result; the same form
without script (``/verify/run``) shows the same figures.

Method: the scripted history's ledger, checked whole and for one position; the figures
shown are compared with what the gRPC API says the ledger holds (StreamLedger's entries,
ListMovements of the position).
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

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
