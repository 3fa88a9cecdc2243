"""How the browser tests talk to the console's pages: sign-in, reading ``data-*`` cells, the
HTTP status of the page shown. Selectors are the ones docs/console.md promises (field names,
ids and ``data-*`` attributes), never layout."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode, urlsplit

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement

from testbed.console import ConsoleProcess

WAIT_SECONDS = 15.0


def instant(value: dt.datetime) -> str:
    """RFC 3339 in UTC, as the console's forms take it (``2026-03-31T23:59:00Z``)."""
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def url(console: ConsoleProcess, path: str, **params: Any) -> str:
    query = {name: value for name, value in params.items() if value not in (None, "")}
    return f"{console.url}{path}" + (f"?{urlencode(query)}" if query else "")


def path_of(driver: WebDriver) -> str:
    return urlsplit(driver.current_url).path


def wait_until(probe: Callable[[], Any], what: str, timeout: float = WAIT_SECONDS) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def sign_in(driver: WebDriver, console: ConsoleProcess, token: str, next_path: str = "") -> None:
    """Open the sign-in page, type the token and press Enter (the keyboard, as a person
    would); wait until the browser has left the sign-in page."""
    driver.get(url(console, "/sign-in", next=next_path))
    field = driver.find_element(By.NAME, "token")
    field.send_keys(token)
    field.send_keys(Keys.ENTER)
    wait_until(lambda: path_of(driver) != "/sign-in", "the browser to leave /sign-in")


def status_of_current_page(driver: WebDriver) -> int:
    """The HTTP status the current URL answers (fetched again with the same cookies; only
    for GET pages, which change nothing)."""
    return int(
        driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "fetch(window.location.href, {credentials: 'same-origin', redirect: 'manual'})"
            "  .then(r => done(r.status), e => done(-1));"
        )
    )


def buckets(scope: WebDriver | WebElement) -> dict[str, int]:
    """``{bucket: value}`` of the ``data-bucket`` cells under ``scope`` (each bucket once)."""
    cells = scope.find_elements(By.CSS_SELECTOR, "[data-bucket]")
    found: dict[str, int] = {}
    for cell in cells:
        name = cell.get_attribute("data-bucket") or ""
        value = cell.get_attribute("data-value")
        text = value if value is not None else cell.text
        number = int(text.replace(",", "").replace("\u2212", "-").strip())
        if name in found and found[name] != number:
            raise AssertionError(f"two different {name} cells: {found[name]} and {number}")
        found[name] = number
    return found


def page_text(driver: WebDriver) -> str:
    return str(driver.find_element(By.TAG_NAME, "body").text)
