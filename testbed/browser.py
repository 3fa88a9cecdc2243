"""A real headless Chromium for the console's browser tests, driven by Selenium.

``chromium_driver()`` starts Debian's ``chromium`` through ``/usr/bin/chromedriver`` (both
installed with ``apt-get`` when missing: a browser test never skips) at 1280x800, headless,
with downloads going to a directory of the caller's choice:

    with closing(chromium_driver(download_dir=tmp)) as driver:
        driver.get("http://127.0.0.1:8080/")
        csv_path = wait_for_download(tmp, "*.csv")

Nothing here downloads a browser or a driver (Selenium Manager is kept offline): the
versions are the distribution's, and they match each other.
"""

from __future__ import annotations

import base64
import fcntl
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
APT_PACKAGES = ("chromium", "chromium-driver")
WINDOW_SIZE = (1280, 800)
INSTALL_TIMEOUT_SECONDS = 600.0
PAGE_LOAD_TIMEOUT_SECONDS = 30.0
SCRIPT_TIMEOUT_SECONDS = 30.0


class BrowserUnavailable(RuntimeError):
    """Chromium or chromedriver is missing and could not be installed (the message says
    what was tried and what the package manager answered)."""


def ensure_chromium() -> None:
    """Install Debian's ``chromium`` and ``chromium-driver`` unless both are there.

    One installer at a time (a lock file), so parallel test processes do not fight over
    dpkg; a failure raises ``BrowserUnavailable`` with apt-get's output."""
    if _installed():
        return
    lock_path = Path(tempfile.gettempdir()) / "ledger-browser-install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed():
            return
        apt_get = shutil.which("apt-get")
        if apt_get is None:
            raise BrowserUnavailable(
                f"{CHROMIUM} or {CHROMEDRIVER} is missing and there is no apt-get to install "
                f"{' '.join(APT_PACKAGES)}; install them (or an equivalent Chromium and its "
                "matching chromedriver at those paths) to run the browser tests"
            )
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        outputs = []
        for argv in (
            [apt_get, "update"],
            [apt_get, "install", "-y", "--no-install-recommends", *APT_PACKAGES],
        ):
            done = subprocess.run(
                argv,
                env=env,
                capture_output=True,
                text=True,
                timeout=INSTALL_TIMEOUT_SECONDS,
                check=False,
            )
            outputs.append(f"$ {' '.join(argv)} (exit {done.returncode})\n{done.stdout[-2000:]}")
            outputs.append(done.stderr[-2000:])
            if done.returncode != 0:
                break
        if not _installed():
            raise BrowserUnavailable(
                f"installing {' '.join(APT_PACKAGES)} did not provide {CHROMIUM} and "
                f"{CHROMEDRIVER}:\n" + "\n".join(outputs)
            )


def _installed() -> bool:
    return all(path.exists() and os.access(path, os.X_OK) for path in (CHROMIUM, CHROMEDRIVER))


def chromium_options(
    *, download_dir: Path | None = None, accept_insecure_certs: bool = False
) -> Options:
    """Headless Chromium at 1280x800 that runs as root in a container: no sandbox (it
    needs user namespaces a container seldom grants), /tmp instead of a small /dev/shm.
    ``accept_insecure_certs``: a test's own HTTPS certificate is accepted."""
    options = Options()
    options.accept_insecure_certs = accept_insecure_certs
    options.binary_location = str(CHROMIUM)
    width, height = WINDOW_SIZE
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-sync",
        "--disable-features=Translate,MediaRouter,OptimizationHints",
        "--lang=en-US",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
    ):
        options.add_argument(argument)
    if download_dir is not None:
        options.add_experimental_option(
            "prefs",
            {
                "download.default_directory": str(download_dir),
                "download.prompt_for_download": False,
                "download.directory_upgrade": True,
                "safebrowsing.enabled": False,
            },
        )
    return options


def chromium_driver(
    *, download_dir: Path | None = None, accept_insecure_certs: bool = False
) -> webdriver.Chrome:
    """A new headless Chromium session (``driver.quit()`` ends it and its processes)."""
    ensure_chromium()
    # Selenium Manager would go looking for drivers on the network; the paths are given.
    os.environ.setdefault("SE_OFFLINE", "true")
    service = Service(executable_path=str(CHROMEDRIVER))
    driver = webdriver.Chrome(
        service=service,
        options=chromium_options(
            download_dir=download_dir, accept_insecure_certs=accept_insecure_certs
        ),
    )
    try:
        driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_SECONDS)
        driver.set_script_timeout(SCRIPT_TIMEOUT_SECONDS)
        width, height = WINDOW_SIZE
        driver.set_window_size(width, height)
        # Headless Chromium keeps room for a toolbar it does not draw: grow the window so
        # the page itself (the viewport) is 1280x800.
        inner_width, inner_height = driver.execute_script(
            "return [window.innerWidth, window.innerHeight]"
        )
        driver.set_window_size(width + width - inner_width, height + height - inner_height)
        if download_dir is not None:
            # Headless Chromium ignores the download prefs unless told through CDP as well.
            driver.execute_cdp_cmd(
                "Browser.setDownloadBehavior",
                {"behavior": "allow", "downloadPath": str(download_dir)},
            )
    except BaseException:
        driver.quit()
        raise
    return driver


def wait_for_download(directory: Path, pattern: str = "*", timeout: float = 20.0) -> Path:
    """The one finished download matching ``pattern`` in ``directory`` (Chromium writes
    ``*.crdownload`` while a download is under way)."""
    deadline = time.monotonic() + timeout
    while True:
        partial = list(directory.glob("*.crdownload"))
        done = [path for path in directory.glob(pattern) if not path.name.endswith(".crdownload")]
        if done and not partial:
            if len(done) > 1:
                raise AssertionError(f"more than one download matches {pattern}: {done}")
            return done[0]
        if time.monotonic() > deadline:
            present = sorted(path.name for path in directory.iterdir())
            raise AssertionError(f"no finished download {pattern} in {directory}: {present}")
        time.sleep(0.05)


def full_page_screenshot(driver: webdriver.Chrome, path: Path, *, height_max: int = 4000) -> None:
    """A PNG of the whole page (up to ``height_max`` CSS pixels tall) at the window's width,
    taken through the DevTools protocol so the window itself is left as it is."""
    width, height = driver.execute_script(
        "const root = document.documentElement;"
        "return [root.clientWidth,"
        " Math.max(document.body ? document.body.scrollHeight : 0, root.scrollHeight)]"
    )
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {
                "x": 0,
                "y": 0,
                "width": int(width),
                "height": min(int(height), height_max),
                "scale": 1,
            },
        },
    )
    path.write_bytes(base64.b64decode(shot["data"]))
