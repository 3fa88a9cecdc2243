"""Sign-in, scopes and cookies of ``ledger console`` in a real headless Chromium (issue 21,
must show 3): no token → the sign-in page; a wrong token → refused on the sign-in page; a
token without ``audit`` → a 403 page naming the scope; the session cookie is HttpOnly and
SameSite=Strict and holds no token.

Method: a real ``ledger serve`` with a token file and a real ``ledger console`` in front of
it (tests/browser/conftest.py); the browser signs in by typing the token and pressing Enter.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.browser.console_pages import (
    instant,
    page_text,
    path_of,
    sign_in,
    status_of_current_page,
    url,
    wait_until,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SESSION_COOKIE = "ledger_console_session"


def as_of_url(console, history) -> str:
    return url(
        console,
        "/as-of",
        sku=history.sku,
        location_id=history.location_id,
        at=instant(history.checkpoints[-1]),
        axis="recorded",
    )


def test_without_a_token_every_page_leads_to_sign_in(browser, console, history):
    """Goal: nothing of the ledger is shown before sign-in. Method: open each page fresh."""
    for path in ("/", "/positions", "/ledger", "/as-of", "/verify"):
        browser.delete_all_cookies()
        browser.get(url(console, path, sku=history.sku, location_id=history.location_id))
        assert path_of(browser) == "/sign-in", (path, browser.current_url)
        assert browser.find_elements(By.NAME, "token"), page_text(browser)
        assert not browser.find_elements(By.CSS_SELECTOR, "[data-bucket]")


def test_an_audit_token_signs_in_and_returns_to_the_page_asked_for(
    browser, console, history, tokens
):
    """Goal: sign-in with an `audit`-only token works and lands on the page first asked for;
    the cookie carries a random session id, never the token, with the flags of docs/console.md.
    """
    target = as_of_url(console, history)
    browser.get(target)
    assert path_of(browser) == "/sign-in"
    field = browser.find_element(By.NAME, "token")
    field.send_keys(tokens["auditor"])
    field.submit()
    assert path_of(browser) == "/as-of", browser.current_url
    assert browser.find_elements(By.CSS_SELECTOR, "[data-bucket='on_hand']"), page_text(browser)
    assert status_of_current_page(browser) == 200

    [cookie] = [c for c in browser.get_cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] is True, cookie
    assert cookie["sameSite"] == "Strict", cookie
    assert cookie["secure"] is False, cookie  # plain HTTP on loopback; TLS: Secure
    assert tokens["auditor"] not in cookie["value"], cookie
    # The page's script cannot read it (HttpOnly, as the browser enforces it).
    assert SESSION_COOKIE not in browser.execute_script("return document.cookie")


def test_sign_in_makes_a_new_session_id(browser, console, tokens):
    """Goal: no session fixation — the id known before sign-in is not the signed-in one."""
    browser.get(url(console, "/sign-in"))
    [before] = [c["value"] for c in browser.get_cookies() if c["name"] == SESSION_COOKIE]
    sign_in(browser, console, tokens["auditor"])
    [after] = [c["value"] for c in browser.get_cookies() if c["name"] == SESSION_COOKIE]
    assert before != after


def test_an_unknown_token_is_refused_on_the_sign_in_page(browser, console, history):
    browser.get(url(console, "/sign-in"))
    field = browser.find_element(By.NAME, "token")
    field.send_keys("tok-nobody-knows")
    field.submit()
    assert path_of(browser) == "/sign-in"
    assert "does not accept this token" in page_text(browser)
    browser.get(as_of_url(console, history))
    assert path_of(browser) == "/sign-in"  # still signed out


def test_a_token_without_the_audit_scope_gets_403_naming_it(browser, console, history, tokens):
    """Goal: a `query`-only token may sign in, but an audit page answers 403 and says that
    the `audit` scope is missing (the ledger's PERMISSION_DENIED, forwarded)."""
    sign_in(browser, console, tokens["reader"])
    browser.get(as_of_url(console, history))
    assert path_of(browser) == "/as-of"
    assert status_of_current_page(browser) == 403
    text = page_text(browser)
    assert "audit" in text and "scope" in text, text
    missing = browser.find_element(By.ID, "missing-scope")
    assert missing.get_attribute("data-scope") == "audit"
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-bucket]"), text


def test_sign_out_ends_the_session(browser, console, history, tokens):
    sign_in(browser, console, tokens["auditor"])
    browser.find_element(By.CSS_SELECTOR, "form[action='/sign-out'] button").click()
    wait_until(lambda: path_of(browser) == "/sign-in", "the sign-in page after sign-out")
    browser.get(as_of_url(console, history))
    assert path_of(browser) == "/sign-in"


def test_the_header_names_the_principal_signed_in(browser, console, tokens):
    """Goal: the header says who is signed in, whichever scopes the token holds (the ledger
    names a principal only in a refusal, so the console asks calls it refuses). A token the
    ledger refuses nothing (`admin`) is shown as "Signed in" without a name."""
    for name in ("reader", "auditor", "inspector", "admin"):
        browser.delete_all_cookies()
        sign_in(browser, console, tokens[name], next_path="/verify")
        principal = browser.find_element(By.ID, "principal")
        expected = "" if name == "admin" else name
        assert principal.get_attribute("data-principal") == expected, name
        assert principal.text == ("Signed in as " + name if expected else "Signed in"), name
