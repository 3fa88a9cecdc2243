"""The reconcile page's post in a real headless Chromium (issue 21, must show 3): a forged
CSRF token on the confirmation form is refused with a 403 page and nothing is posted; the
same confirmation with the session's own token posts the count.

Method: signed in with an `admin` token (so only the CSRF token can be what refuses), the
browser uploads a count file for a position of its own (``SKU-COUNT @ DC-9``, so the shared
history is untouched), compares, then rewrites the confirmation form's hidden ``csrf_token``
in the page and submits it. The ledger is read through the gRPC API before and after.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest
from selenium.webdriver.common.by import By

from tests.browser.console_pages import (
    instant,
    page_text,
    path_of,
    sign_in,
    wait_until,
)
from tests.browser.history import list_all_movements

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SKU, LOCATION, COUNTED = "SKU-COUNT", "DC-9", 4


def upload_counts(browser, tmp_path, as_of: dt.datetime, sku: str = SKU) -> None:
    counts = tmp_path / f"{sku}-count.csv"
    counts.write_text(f"sku,location_id,on_hand\n{sku},{LOCATION},{COUNTED}\n")
    form = browser.find_element(By.ID, "reconcile-form")
    form.find_element(By.ID, "counts").send_keys(str(counts))
    form.find_element(By.ID, "as_of").send_keys(instant(as_of))
    form.find_element(By.ID, "compare-button").click()
    wait_until(lambda: browser.find_elements(By.ID, "reconcile-report"), "the variance report")


def test_forged_csrf_token_on_reconcile_post_is_refused(
    browser, console, history, tokens, client_for, tmp_path
):
    auditor = client_for("auditor")

    def ledger_state():
        entries = list_all_movements(auditor, SKU, LOCATION)
        head = list_all_movements(auditor, history.sku, history.location_id)
        return [e.position for e in entries], len(head)

    as_of = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
    before = ledger_state()
    assert before[0] == []

    sign_in(browser, console, tokens["admin"], next_path="/reconcile")
    assert path_of(browser) == "/reconcile"
    upload_counts(browser, tmp_path, as_of)
    variances = browser.find_elements(By.CSS_SELECTOR, "#variances-table tr[data-status='OVER']")
    assert len(variances) == 1, page_text(browser)
    confirm = browser.find_element(By.ID, "reconcile-confirm")

    # Forge: the form keeps every field but carries another CSRF token.
    genuine = confirm.find_element(By.NAME, "csrf_token").get_attribute("value")
    forged = "forged-" + genuine[::-1]
    browser.execute_script(
        "document.querySelector('#reconcile-confirm input[name=csrf_token]').value = arguments[0]",
        forged,
    )
    confirm.find_element(By.ID, "confirm").click()
    confirm.find_element(By.ID, "post-button").click()
    wait_until(lambda: browser.find_elements(By.ID, "error"), "the refusal page")
    error = browser.find_element(By.ID, "error")
    assert error.get_attribute("data-status") == "403", page_text(browser)
    assert browser.find_elements(By.ID, "csrf-refused"), page_text(browser)
    assert not browser.find_elements(By.ID, "reconcile-posted")
    assert ledger_state() == before  # nothing posted, nothing else written

    # The same session's genuine form posts: the refusal above was the CSRF token's doing.
    browser.get(console.url + "/reconcile")
    upload_counts(browser, tmp_path, as_of)
    confirm = browser.find_element(By.ID, "reconcile-confirm")
    assert confirm.find_element(By.NAME, "csrf_token").get_attribute("value") == genuine
    confirm.find_element(By.ID, "confirm").click()
    confirm.find_element(By.ID, "post-button").click()
    posted = wait_until(lambda: browser.find_elements(By.ID, "reconcile-posted"), "the posting")[0]
    assert posted.get_attribute("data-recorded") == "1", page_text(browser)
    [*_opened, count] = list_all_movements(auditor, SKU, LOCATION)
    assert count.source == "reconcile" and count.counted == COUNTED, count
    assert ledger_state()[1] == before[1]  # the scripted position is untouched


def test_reconcile_post_without_confirmation_is_not_posted(
    browser, console, tokens, client_for, tmp_path
):
    """The explicit confirmation step: the post button does nothing until the box is ticked
    (the browser enforces `required`), and the page still offers the confirmation."""
    sku = "SKU-COUNT-UNCONFIRMED"
    sign_in(browser, console, tokens["admin"], next_path="/reconcile")
    as_of = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    upload_counts(browser, tmp_path, as_of, sku=sku)
    confirm = browser.find_element(By.ID, "reconcile-confirm")
    confirm.find_element(By.ID, "post-button").click()
    time.sleep(0.5)  # a submit, had there been one, would have left this page by now
    assert browser.find_elements(By.ID, "reconcile-confirm")
    assert not browser.find_elements(By.ID, "reconcile-posted")
    assert list_all_movements(client_for("auditor"), sku, LOCATION) == []
