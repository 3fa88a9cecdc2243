"""The console served over HTTPS (its cookie then also Secure) and in front of a ledger in
open mode (no sign-in on loopback), in a real headless Chromium (issue 21: cookie flags as
stated; open mode works on loopback like ``ledger serve``).

Method: HTTPS with a certificate from a throwaway CA (trustme) that this browser is told
to accept; open mode with a ledger of its own started without a token file.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import trustme
from inventory_ledger_client import LedgerClient, movement
from selenium.webdriver.common.by import By

from testbed.browser import chromium_driver
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.browser.console_pages import buckets, instant, page_text, path_of, sign_in, url

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SESSION_COOKIE = "ledger_console_session"


def test_over_https_the_session_cookie_is_also_secure(ledger, history, tokens, tmp_path: Path):
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "console.pem", tmp_path / "console.key"
    certificate.cert_chain_pems[0].write_to_path(str(cert_path))
    for extra in certificate.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_path), append=True)
    certificate.private_key_pem.write_to_path(str(key_path))
    extra_args = ["--https-cert", str(cert_path), "--https-key", str(key_path)]
    with ConsoleProcess(ledger.address, extra_args=extra_args) as console:
        assert console.url.startswith("https://")
        driver = chromium_driver(accept_insecure_certs=True)
        try:
            sign_in(driver, console, tokens["auditor"], next_path="/verify")
            assert driver.current_url.startswith("https://") and path_of(driver) == "/verify"
            [cookie] = [c for c in driver.get_cookies() if c["name"] == SESSION_COOKIE]
            assert cookie["secure"] is True, cookie
            assert cookie["httpOnly"] is True, cookie
            assert cookie["sameSite"] == "Strict", cookie
        finally:
            driver.quit()
        assert "Traceback" not in console.log_text(), console.log_text()


def test_open_mode_on_loopback_needs_no_sign_in(browser, tmp_path: Path):
    with LedgerProcess(f"sqlite:///{tmp_path / 'open.db'}") as ledger:
        with LedgerClient(ledger.address) as client:
            client.record_movements(
                [
                    movement(
                        "receipt",
                        source="wms-open",
                        sku="SKU-OPEN",
                        location_id="DC-7",
                        qty=9,
                        message_id="open-1",
                    )
                ]
            )
            at = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
            want = client.get_position_as_of("SKU-OPEN", "DC-7", at)
        with ConsoleProcess(ledger.address) as console:
            browser.get(url(console, "/as-of", sku="SKU-OPEN", location_id="DC-7", at=instant(at)))
            assert path_of(browser) == "/as-of", page_text(browser)
            shown = buckets(browser.find_element(By.ID, "as-of-buckets"))
            assert shown["on_hand"] == want.on_hand == 9
            assert shown["available"] == want.available
            principal = browser.find_element(By.ID, "principal")
            assert principal.get_attribute("data-principal") == ""
            assert browser.find_elements(By.ID, "sign-in-link")
