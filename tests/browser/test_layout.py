"""Usable at phone width and by keyboard (issue 21: "usable at 1280x800 and at phone width,
keyboard navigable"), in a real headless Chromium.

Method: every page of the scripted history at a 390 px wide viewport must not scroll
sideways as a whole (wide tables scroll inside their own box); and from the top of a page
the keyboard alone reaches the skip link, jumps to the content, and lands in its first field.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from tests.browser.console_pages import sign_in, url, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PHONE_WIDTH = 390


def pages(console, history) -> dict[str, str]:
    sku, location = history.sku, history.location_id
    return {
        "positions": url(console, "/positions", sku=sku, channels="web"),
        "ledger": url(console, "/ledger", sku=sku, location_id=location),
        "as-of": url(console, "/as-of", sku=sku, location_id=location, axis="effective"),
        "verify": url(console, "/verify"),
        "reconcile": url(console, "/reconcile"),
        "operations": url(console, "/operations"),
    }


def test_no_page_scrolls_sideways_at_phone_width(browser, console, history, tokens):
    sign_in(browser, console, tokens["admin"], next_path="/positions")
    width = browser.execute_script("return window.innerWidth")
    size = browser.get_window_size()
    browser.set_window_size(size["width"] - width + PHONE_WIDTH, size["height"])
    assert browser.execute_script("return window.innerWidth") == PHONE_WIDTH
    overflowing = {}
    for name, address in pages(console, history).items():
        browser.get(address)
        scroll_width = browser.execute_script("return document.documentElement.scrollWidth")
        if scroll_width > PHONE_WIDTH:
            overflowing[name] = scroll_width
    assert overflowing == {}, f"pages wider than {PHONE_WIDTH} px: {overflowing}"


def test_no_page_scrolls_sideways_at_1280(browser, console, history, tokens):
    """At 1280x800 no page, and no table inside its scroll box, is wider than the window:
    the stock ledger with its nine bucket columns on both axes included."""
    sign_in(browser, console, tokens["admin"], next_path="/positions")
    assert browser.execute_script("return window.innerWidth") == 1280
    addresses = pages(console, history)
    addresses["ledger-effective"] = url(
        console, "/ledger", sku=history.sku, location_id=history.location_id, axis="effective"
    )
    overflowing = {}
    for name, address in addresses.items():
        browser.get(address)
        page, boxes = browser.execute_script(
            "return [document.documentElement.scrollWidth,"
            " Array.from(document.querySelectorAll('.scroll'),"
            "  box => [box.scrollWidth, box.clientWidth])]"
        )
        if page > 1280 or any(inner > shown for inner, shown in boxes):
            overflowing[name] = (page, boxes)
    assert overflowing == {}, f"wider than 1280 px: {overflowing}"
    table = browser.find_element(By.ID, "ledger-table")
    assert table.get_attribute("data-axis") == "effective"
    assert table.find_elements(By.CSS_SELECTOR, "tr[data-late='true']")


def test_keyboard_reaches_skip_link_content_and_first_field(browser, console, history, tokens):
    sign_in(browser, console, tokens["admin"], next_path="/positions")
    browser.get(pages(console, history)["ledger"])
    keys = ActionChains(browser)
    keys.send_keys(Keys.TAB).perform()
    focused = browser.switch_to.active_element
    assert focused.get_attribute("class") == "skip", focused.get_attribute("outerHTML")
    assert focused.is_displayed()  # it shows itself when focused
    keys.send_keys(Keys.ENTER).perform()
    wait_until(lambda: browser.switch_to.active_element.get_attribute("id") == "main", "#main")
    keys.send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element.get_attribute("id") == "sku"
    # And on through the form with the keyboard only: a new position, submitted with Enter.
    other_sku, other_location = history.other_positions[0]
    field = browser.switch_to.active_element
    field.clear()
    field.send_keys(other_sku)
    keys.send_keys(Keys.TAB).perform()
    field = browser.switch_to.active_element
    assert field.get_attribute("id") == "location_id"
    field.clear()
    field.send_keys(other_location, Keys.ENTER)
    table = wait_until(
        lambda: browser.find_elements(
            By.CSS_SELECTOR, f"#ledger-table[data-position='{other_sku}@{other_location}']"
        ),
        "the other position's ledger",
    )[0]
    assert table.find_elements(By.CSS_SELECTOR, "tr[data-entry-position]")
