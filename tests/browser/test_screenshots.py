"""Screenshots of every console page for docs/console.md, taken by a real headless Chromium
from the scripted history (issue 21, must show 5), and a check that each is a real picture.

Method: signed in with an `admin` token (every page shows content), the browser opens each
page, waits for what that page exists to show (the variance report, the streamed verify
result, ...), and saves a full-page PNG at 1280 px wide to ``$LEDGER_SCREENSHOT_DIR/<page>.png``
when that variable is set, else to the test's temporary directory (a test run leaves the
working tree alone). Each file is then checked: a PNG of that width, and not blank (the
browser decodes it and counts its colours). The committed pictures are refreshed with the
command in docs/console.md ("Screenshots"); ``test_console_doc_shows_every_page`` checks that
docs/console.md embeds a committed PNG of every page.
"""

from __future__ import annotations

import base64
import os
import re
import struct
import subprocess
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from testbed.browser import full_page_screenshot
from tests.browser.console_pages import instant, path_of, sign_in, url, wait_until

REPOSITORY = Path(__file__).resolve().parents[2]
SCREENSHOT_ENVIRONMENT = "LEDGER_SCREENSHOT_DIR"
COMMITTED_DIR = "docs/console-screenshots"  # where docs/console.md finds them
PAGES = (
    "sign-in",
    "positions",
    "ledger",
    "as-of",
    "verify",
    "reconcile",
    "operations",
    "error-403",
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONSOLE_DOC = REPOSITORY / "docs" / "console.md"
_IMAGE = re.compile(r"!\[([^\]]*)\]\(\s*<?([^\s)>]+)>?")

# Decodes a PNG (data URL) in the page and counts its colours and non-white pixels.
COUNT_COLOURS = """
const done = arguments[arguments.length - 1];
const image = new Image();
image.onload = () => {
  const canvas = document.createElement("canvas");
  canvas.width = image.width; canvas.height = image.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const data = context.getImageData(0, 0, image.width, image.height).data;
  const colours = new Set();
  let inked = 0;
  for (let i = 0; i < data.length; i += 4) {
    const rgb = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
    colours.add(rgb);
    if (rgb !== 0xffffff) inked += 1;
  }
  done({colours: colours.size, inked: inked, pixels: data.length / 4});
};
image.onerror = () => done(null);
image.src = arguments[0];
"""


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE, "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.fixture
def screenshot_dir(tmp_path: Path) -> Path:
    """``$LEDGER_SCREENSHOT_DIR`` (relative to the working directory) when set, else a
    directory of this test's own."""
    chosen = os.environ.get(SCREENSHOT_ENVIRONMENT)
    path = Path(chosen).resolve() if chosen else tmp_path / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def shoot(browser, directory: Path, name: str) -> Path:
    path = directory / f"{name}.png"
    path.unlink(missing_ok=True)
    browser.execute_script("document.activeElement && document.activeElement.blur()")
    full_page_screenshot(browser, path)
    return path


@pytest.mark.slow
@pytest.mark.browser
def test_screenshot_of_every_page(browser, console, history, tokens, tmp_path, screenshot_dir):
    written: dict[str, Path] = {}
    sku, location = history.sku, history.location_id

    browser.get(url(console, "/sign-in"))
    written["sign-in"] = shoot(browser, screenshot_dir, "sign-in")

    sign_in(browser, console, tokens["admin"], next_path="/positions")
    browser.get(url(console, "/positions", sku=sku, channels="web"))
    wait_until(lambda: browser.find_elements(By.ID, "positions-table"), "the positions")
    written["positions"] = shoot(browser, screenshot_dir, "positions")

    browser.get(url(console, "/ledger", sku=sku, location_id=location, axis="recorded"))
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, "tr[data-late='true']"), "rows")
    written["ledger"] = shoot(browser, screenshot_dir, "ledger")

    at = history.effective_instants[1]
    browser.get(
        url(
            console,
            "/as-of",
            sku=sku,
            location_id=location,
            at=instant(at),
            axis="effective",
            chart_to=instant(history.checkpoints[-1]),
        )
    )
    wait_until(lambda: browser.find_elements(By.ID, "as-of-chart"), "the chart")
    written["as-of"] = shoot(browser, screenshot_dir, "as-of")

    browser.get(url(console, "/verify"))
    browser.find_element(By.ID, "verify-button").click()
    result = wait_until(lambda: browser.find_elements(By.ID, "verify-result"), "the result")[0]
    assert result.get_attribute("data-ok") == "true"
    written["verify"] = shoot(browser, screenshot_dir, "verify")

    counts = tmp_path / "dc1-count-2026.csv"
    counts.write_text(f"sku,location_id,on_hand\n{sku},{location},90\nSKU-NEW,{location},6\n")
    browser.get(url(console, "/reconcile"))
    form = browser.find_element(By.ID, "reconcile-form")
    form.find_element(By.ID, "counts").send_keys(str(counts))
    form.find_element(By.ID, "as_of").send_keys(instant(history.checkpoints[-1]))
    form.find_element(By.ID, "compare-button").click()
    wait_until(lambda: browser.find_elements(By.ID, "reconcile-confirm"), "the report")
    written["reconcile"] = shoot(
        browser, screenshot_dir, "reconcile"
    )  # not posted: the history stays

    browser.get(url(console, "/operations"))
    wait_until(lambda: browser.find_elements(By.ID, "projection-status"), "the status")
    written["operations"] = shoot(browser, screenshot_dir, "operations")

    browser.delete_all_cookies()
    sign_in(browser, console, tokens["reader"], next_path="/positions")
    browser.get(url(console, "/as-of", sku=sku, location_id=location))
    assert path_of(browser) == "/as-of"
    wait_until(lambda: browser.find_elements(By.ID, "missing-scope"), "the 403 page")
    written["error-403"] = shoot(browser, screenshot_dir, "error-403")

    assert sorted(written) == sorted(PAGES)
    browser.get("about:blank")
    for name, path in written.items():
        data = path.read_bytes()
        width, height = png_size(data)
        assert width == 1280 and height >= 400, (name, width, height)
        assert len(data) > 10_000, (name, len(data))
        data_url = "data:image/png;base64," + base64.b64encode(data).decode()
        seen = browser.execute_async_script(COUNT_COLOURS, data_url)
        assert seen is not None, f"{name}: the browser could not decode {path}"
        assert seen["colours"] >= 16, (name, seen)
        assert seen["inked"] > seen["pixels"] * 0.01, (name, seen)


def test_console_doc_shows_every_page() -> None:
    """docs/console.md embeds (``![...](...)``, a relative link) a committed screenshot of
    every page, each a 1280 px wide PNG, and every committed screenshot is shown."""
    text = CONSOLE_DOC.read_text(encoding="utf-8")
    embedded = {}
    for alt, target in _IMAGE.findall(text):
        assert "://" not in target and not target.startswith("/"), target
        path = (CONSOLE_DOC.parent / target).resolve()
        embedded[path.relative_to(REPOSITORY).as_posix()] = alt
    tracked = set(
        subprocess.run(
            ["git", "ls-files", "--", COMMITTED_DIR],
            cwd=REPOSITORY,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    )
    for page in PAGES:
        name = f"{COMMITTED_DIR}/{page}.png"
        assert name in embedded, f"docs/console.md does not embed {name}"
        assert embedded[name].strip(), f"{name} has no alt text"
        assert name in tracked, f"{name} is not committed"
        width, height = png_size((REPOSITORY / name).read_bytes())
        assert width == 1280 and height >= 400, (name, width, height)
    shown = {name for name in embedded if name.startswith(COMMITTED_DIR + "/")}
    assert tracked <= shown, f"committed but not shown: {sorted(tracked - shown)}"
