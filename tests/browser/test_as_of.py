"""The as-of page in a real headless Chromium (issue 21, must show 1): signed in with an
`audit`-only token, the page's ``data-bucket`` cells equal ``GetPositionAsOf`` at five
instants on the recorded axis, five on the effective axis and five (as_of, known_at) pairs.

Method: the scripted history (tests/browser/history.py) has facts recorded late with an
earlier ``occurred_at``, so the axes disagree; the browser fills the as-of form with the
keyboard and submits it, and every bucket cell shown is compared with the gRPC answer for
the same arguments (the same token's rights, through the Python client).
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.console_pages import buckets, instant, path_of, sign_in, url, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.browser]

# What GetPositionAsOf answers that the page must show, by data-bucket name.
SHOWN = (
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
)


def ask(browser, *, at, axis, known_at=None):
    """Fill the as-of form (SKU and location stay from the last answer) and submit it."""
    form = browser.find_element(By.ID, "as-of-form")
    for name, value in (("at", instant(at)), ("known_at", instant(known_at) if known_at else "")):
        field = form.find_element(By.ID, name)
        field.clear()
        field.send_keys(value)
    Select(form.find_element(By.ID, "axis")).select_by_value(axis)
    old = browser.find_elements(By.ID, "as-of-buckets")
    form.find_element(By.ID, "show").click()
    if old:
        wait_until(lambda: not _attached(old[0]), "the next as-of page")
    return wait_until(lambda: browser.find_elements(By.ID, "as-of-buckets"), "the buckets")[0]


def _attached(element) -> bool:
    try:
        element.is_displayed()
    except Exception:
        return False
    return True


def expected(client, history, *, at, axis, known_at=None) -> dict[str, int]:
    position = client.get_position_as_of(
        history.sku, history.location_id, at, axis=axis, known_at=known_at
    )
    return {bucket: int(getattr(position, bucket)) for bucket in SHOWN}


def test_as_of_cells_equal_get_position_as_of(browser, console, history, tokens, client_for):
    auditor = client_for("auditor")
    first = url(
        console,
        "/as-of",
        sku=history.sku,
        location_id=history.location_id,
        at=instant(history.checkpoints[0]),
        axis="recorded",
    )
    sign_in(browser, console, tokens["auditor"], next_path=first.removeprefix(console.url))
    assert path_of(browser) == "/as-of", browser.current_url

    questions = [(at, "recorded", None) for at in history.checkpoints[1:6]]
    questions += [(at, "effective", None) for at in history.effective_instants]
    questions += [(at, "effective", known) for at, known in history.known_at_pairs]
    assert len(questions) == 15
    answers = {}
    for at, axis, known_at in questions:
        table = ask(browser, at=at, axis=axis, known_at=known_at)
        key = f"{history.sku}@{history.location_id}"
        assert table.get_attribute("data-position") == key
        assert table.get_attribute("data-axis") == axis
        assert table.get_attribute("data-at") == instant(at)
        assert (table.get_attribute("data-known-at") or "") == (
            instant(known_at) if known_at else ""
        )
        cells = table.find_elements(By.CSS_SELECTOR, "[data-bucket]")
        assert {cell.get_attribute("data-axis") for cell in cells} == {axis}
        assert {cell.get_attribute("data-position") for cell in cells} == {key}
        shown = buckets(table)
        want = expected(auditor, history, at=at, axis=axis, known_at=known_at)
        assert {name: shown.get(name) for name in SHOWN} == want, (at, axis, known_at)
        answers[(at, axis, known_at)] = want

    # The history makes the questions differ (else equal cells would prove little): the
    # late shipment is in the effective answer for that evening, not in what was known
    # before it was recorded, and the recorded axis never saw stock at the dock.
    evening = history.effective_instants[1]
    before, after = history.known_at_pairs[0][1], history.known_at_pairs[1][1]
    assert answers[(evening, "effective", None)]["on_hand"] == 95
    assert answers[(evening, "effective", before)]["on_hand"] == 120
    assert answers[(evening, "effective", after)]["on_hand"] == 95
    distinct = {tuple(sorted(answer.items())) for answer in answers.values()}
    assert len(distinct) >= 8, answers


def test_as_of_chart_shows_both_axes(browser, console, history, tokens):
    """The chart is server-rendered SVG with on_hand and available on both axes, and its
    value table agrees with the dots drawn."""
    sign_in(
        browser,
        console,
        tokens["auditor"],
        next_path=url(
            console,
            "/as-of",
            sku=history.sku,
            location_id=history.location_id,
            axis="effective",
        ).removeprefix(console.url),
    )
    chart = browser.find_element(By.ID, "as-of-chart")
    series = {
        (line.get_attribute("data-chart-axis"), line.get_attribute("data-chart-bucket"))
        for line in chart.find_elements(By.CSS_SELECTOR, "polyline")
    }
    assert series == {
        (axis, bucket) for axis in ("recorded", "effective") for bucket in ("on_hand", "available")
    }
    assert chart.size["width"] > 400 and chart.size["height"] > 150, chart.size
    dots = {
        (dot.get_attribute("data-chart-axis"), dot.get_attribute("data-chart-bucket"),
         dot.get_attribute("data-at")): int(dot.get_attribute("data-value"))
        for dot in chart.find_elements(By.CSS_SELECTOR, "circle[data-at]")
    }  # fmt: skip
    cells = {
        (cell.get_attribute("data-chart-axis"), cell.get_attribute("data-chart-bucket"),
         cell.get_attribute("data-at")): int(cell.get_attribute("textContent"))
        for cell in browser.find_elements(By.CSS_SELECTOR, "#chart-table td[data-at]")
    }  # fmt: skip
    assert dots and dots == cells
