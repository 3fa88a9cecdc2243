"""``ledger console`` against hostile or careless requests (issue 21, review findings): a
flood of anonymous requests signs nobody out, a foreign ``Host`` (DNS rebinding) and another
site's page start nothing, bodies are bounded and a form without a cookie is refused before
its body is read, two confirmations of one reconcile report post it once, the CSV of
``ledger audit history`` is the console's, and late marks do not depend on the window.

Method: real ``ledger serve`` processes (SQLite; one with a token file, one in open mode) and
real ``ledger console`` subprocesses on loopback, spoken to over raw ``http.client`` so the
``Host``, ``Sec-Fetch-Site`` and ``Content-Length`` headers are exactly what a test sends.
"""

from __future__ import annotations

import concurrent.futures
import csv
import datetime as dt
import http.client
import io
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from inventory_ledger_client import LedgerClient, movement

from entrypoints.grpc.tokens import principal_entry
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.integration.console_http import HttpAnswer, HttpSession
from tests.integration.test_console import bucket_cells, elements

pytestmark = pytest.mark.slow

AUDITOR, ADMIN = "tok-s-auditor", "tok-s-admin"
SKU, LOCATION = "SKU-S1", "DC-S"
REPO = Path(__file__).resolve().parents[2]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    root = tmp_path_factory.mktemp("console-security")
    tokens = root / "tokens.json"
    entries = [
        principal_entry("auditor", AUDITOR, ["audit"], rate_per_second=0),
        principal_entry("admin", ADMIN, ["admin"], rate_per_second=0),
    ]
    tokens.write_text(json.dumps({"principals": entries}))
    with LedgerProcess(
        f"sqlite:///{root / 'ledger.db'}", extra_args=["--token-file", str(tokens)]
    ) as process:
        now = _now()
        with LedgerClient(process.address, token=ADMIN) as client:

            def record(message_id: str, kind: str, **fields: object) -> None:
                client.record_movements(
                    [
                        movement(
                            kind,
                            source="wms",
                            sku=SKU,
                            location_id=LOCATION,
                            message_id=message_id,
                            **fields,
                        )
                    ]
                )
                time.sleep(0.02)

            record("r1", "receipt", qty=10, occurred_at=now - dt.timedelta(hours=1))
            # Recorded after r1 but occurred 4 hours before it: late.
            record("s1", "shipment", qty=3, occurred_at=now - dt.timedelta(hours=5))
            record("a1", "adjustment", delta=-1, reason='=HYPERLINK("http://x.example","y")')
            record("+a2", "adjustment", delta=1, reason="@SUM(A1)")
        yield process


@pytest.fixture(scope="module")
def console(ledger: LedgerProcess) -> Iterator[ConsoleProcess]:
    with ConsoleProcess(ledger.address) as process:
        yield process


@pytest.fixture(scope="module")
def open_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LedgerProcess, ConsoleProcess]]:
    root = tmp_path_factory.mktemp("console-open")
    with LedgerProcess(f"sqlite:///{root / 'open.db'}") as process:
        with LedgerClient(process.address) as client:
            client.record_movements(
                [
                    movement(
                        "receipt", source="wms", sku="O-1", location_id="L", message_id="m", qty=7
                    )
                ]
            )
        with ConsoleProcess(process.address) as console_process:
            yield process, console_process


def raw(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 15.0,
) -> HttpAnswer:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return HttpAnswer(response.status, response.getheaders(), response.read())
    finally:
        connection.close()


def signed_in(console: ConsoleProcess, token: str) -> HttpSession:
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    answer = browser.post("/sign-in", {"csrf_token": form.csrf_token(), "token": token})
    assert answer.status == 303, answer.text
    return browser


def cookie_header(browser: HttpSession) -> str:
    return "; ".join(f"{k}={v}" for k, v in browser.cookies.items())


# ---- 1. sessions ------------------------------------------------------------------------------


def test_a_flood_of_anonymous_requests_signs_nobody_out(console, ledger):
    """Goal: anonymous visitors store nothing, so no number of them evicts a signed-in
    session (it used to: every cookieless request stored a session, the oldest went past
    1000). Method: sign in, then 1100 cookieless requests (sign-in form, refused forms,
    pages); the signed-in session still reads, and a new visitor can still sign in."""
    auditor = signed_in(console, AUDITOR)
    assert auditor.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 200
    assert console.port is not None
    port = console.port

    def visitor(first: int) -> list[int]:
        """Every eighth of the 1100 requests, on a keep-alive connection of its own."""
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        statuses = []
        for index in range(first, 1100, 8):
            if index % 3 == 0:
                form = b"token=x&csrf_token=forged"
                headers = {
                    "content-type": "application/x-www-form-urlencoded",
                    "connection": "keep-alive",
                }
                connection.request("POST", "/sign-in", body=form, headers=headers)
            else:
                path = "/sign-in" if index % 3 == 1 else "/as-of?sku=A&location_id=B"
                connection.request("GET", path, headers={"connection": "keep-alive"})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
        return statuses

    # Eight visitors at once: the same 1100 requests, in a fraction of the time.
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = [code for codes in pool.map(visitor, range(8)) for code in codes]
    assert len(statuses) == 1100
    assert set(statuses) <= {200, 303, 403}, set(statuses)
    page = auditor.get("/as-of", {"sku": SKU, "location_id": LOCATION})
    assert page.status == 200, (page.status, page.header("location"))
    assert bucket_cells(page.text, data_position=f"{SKU}@{LOCATION}")["on_hand"] == 7
    signed_in(console, AUDITOR)


def test_a_visitor_cookie_is_not_a_session(console, ledger):
    """Goal: the cookie a visitor gets before sign-in names nothing on the server: sign-in
    replaces it, and a made-up well-formed value is just another visitor (its forms need
    the HMAC of that value, which a forged token is not)."""
    made_up = "A" * 43
    visitor = HttpSession(console.url, cookies={"ledger_console_session": made_up})
    form = visitor.get("/sign-in")
    assert form.status == 200 and not form.set_cookies()  # kept, not replaced
    assert visitor.post("/sign-in", {"csrf_token": "forged", "token": AUDITOR}).status == 403
    answer = visitor.post("/sign-in", {"csrf_token": form.csrf_token(), "token": AUDITOR})
    assert answer.status == 303
    assert visitor.cookies["ledger_console_session"] != made_up


# ---- 2. DNS rebinding and other sites ---------------------------------------------------------


def test_a_foreign_host_is_refused_in_open_mode(open_world):
    """Goal: a page of another name that resolves to the loopback console (DNS rebinding)
    gets nothing and writes nothing. Method: open mode (no sign-in on loopback); the same
    requests with Host attacker.example are 400, with the listen address or localhost 200."""
    ledger, console = open_world
    port = console.port
    assert port is not None
    path = "/as-of?sku=O-1&location_id=L"
    with LedgerClient(ledger.address) as client:
        before = len(client.list_movements("O-1", "L").entries)
    foreign = raw(port, "GET", path, {"Host": f"attacker.example:{port}"})
    assert foreign.status == 400 and b"data-bucket" not in foreign.body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
        page = raw(port, "GET", path, {"Host": host})
        assert page.status == 200, host
        assert bucket_cells(page.text)["on_hand"] == 7
    # A write through a foreign name: refused before the form is looked at.
    page = raw(port, "GET", "/reconcile", {"Host": f"127.0.0.1:{port}"})
    cookie = (page.header("set-cookie") or "").split(";")[0]
    csrf = page.csrf_token()
    body = f"csrf_token={csrf}&report_id=x&confirm=yes".encode()
    headers = {
        "Host": f"attacker.example:{port}",
        "Cookie": cookie,
        "Content-Type": "application/x-www-form-urlencoded",
    }
    assert raw(port, "POST", "/reconcile/post", headers, body).status == 400
    headers["Host"] = f"127.0.0.1:{port}"
    assert raw(port, "POST", "/reconcile/post", headers, body).status == 400  # no such report
    with LedgerClient(ledger.address) as client:
        assert len(client.list_movements("O-1", "L").entries) == before


def test_another_site_cannot_start_a_verification(open_world):
    """Goal: with open mode on loopback, an image or EventSource on another site's page
    would start a whole-ledger verification without any cookie; the browser says where a
    request comes from (Sec-Fetch-Site) and such requests start nothing."""
    _ledger, console = open_world
    port = console.port
    assert port is not None
    for path in ("/verify/run", "/verify/events"):
        for site in ("cross-site", "same-site"):
            refused = raw(port, "GET", path, {"Sec-Fetch-Site": site})
            assert refused.status == 403, (path, site)
            assert b"Nothing was started" in refused.body
    page = raw(port, "GET", "/verify/run", {"Sec-Fetch-Site": "same-origin"})
    assert page.status == 200
    [section] = elements(page.text, id="verify-result")
    assert section["attrs"]["data-ok"] == "true"
    typed = raw(port, "GET", "/verify/events", {"Sec-Fetch-Site": "none"})
    assert typed.status == 200 and b"event: result" in typed.body


# ---- 3. bodies ------------------------------------------------------------------------------


def test_an_oversized_body_is_refused_without_being_read(console):
    """Goal: no request makes the console store or hold a large body. Method: a declared
    60 MB upload is answered 413 at once, with nothing sent after the headers (it used to be
    written to a temporary file, then refused); a chunked upload without a length is cut
    off once it passes the limit; the sign-in form takes a few KiB, not 100."""
    assert console.port is not None
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    connection.putrequest("POST", "/reconcile")
    connection.putheader("Content-Type", "multipart/form-data; boundary=XYZ")
    connection.putheader("Content-Length", str(60 * 1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and time.monotonic() - started < 5
    connection.close()

    browser = HttpSession(console.url)
    csrf = browser.get("/sign-in").csrf_token()
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=10)
    connection.putrequest("POST", "/sign-in")
    connection.putheader("Content-Type", "application/x-www-form-urlencoded")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.putheader("Cookie", cookie_header(browser))
    connection.endheaders()
    chunk = b"a" * 16384
    try:
        for _ in range(64):  # 1 MiB in all, far past the limit
            connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        connection.send(b"0\r\n\r\n")
    except OSError:
        pass  # the console answered and closed while we were still sending
    response = connection.getresponse()
    assert response.status == 413
    connection.close()

    big = browser.post("/sign-in", {"csrf_token": csrf, "token": "x" * 100_000})
    assert big.status == 413
    assert browser.post("/sign-in", {"csrf_token": csrf, "token": AUDITOR}).status == 303


def test_a_form_without_a_cookie_is_refused_before_its_body_is_read(console):
    """Goal: the CSRF cookie is checked before a body is parsed. Method: a cookieless upload
    declares 1 MiB and sends none of it; the 403 comes back at once (the console used to wait
    for the body, parse and spool it, and only then refuse it)."""
    assert console.port is not None
    connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=5)
    connection.putrequest("POST", "/reconcile")
    connection.putheader("Content-Type", "multipart/form-data; boundary=XYZ")
    connection.putheader("Content-Length", str(1024 * 1024))
    connection.endheaders()
    response = connection.getresponse()  # a timeout here: the console waited for the body
    assert response.status == 403
    assert b'id="csrf-refused"' in response.read()
    connection.close()


def test_a_count_upload_takes_one_file(console):
    """Goal: the form limits apply (the form was parsed with the defaults before the page
    asked for one file): two files in one upload are refused and nothing is compared."""
    admin = signed_in(console, ADMIN)
    csrf = admin.get("/reconcile").csrf_token()
    boundary = "----two-files"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n{csrf}\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="as_of"\r\n\r\n{_stamp(_now())}\r\n',
    ]
    for name in ("counts", "extra"):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="c.csv"'
            f"\r\nContent-Type: text/csv\r\n\r\nsku,location_id,on_hand\r\n{SKU},{LOCATION},1\r\n"
        )
    parts.append(f"--{boundary}--\r\n")
    assert console.port is not None
    answer = raw(
        console.port,
        "POST",
        "/reconcile",
        {
            "Content-Type": f"multipart/form-data; boundary={boundary}",
            "Cookie": cookie_header(admin),
        },
        "".join(parts).encode(),
    )
    assert answer.status == 400, answer.text
    assert not elements(answer.text, id="reconcile-report")


# ---- 6. reconcile --------------------------------------------------------------------------


def test_two_confirmations_at_once_post_the_report_once(ledger, console):
    """Goal: pressing "post" twice at once posts once and fails neither with 500. Method: an
    admin uploads a count with one variance; two confirmations race; one posts (200), the
    other finds no report (400), and the ledger has one cycle count more."""
    sku = "SKU-S2"
    with LedgerClient(ledger.address, token=ADMIN) as client:
        client.record_movements(
            [
                movement(
                    "receipt", source="wms", sku=sku, location_id=LOCATION, message_id="s2", qty=9
                )
            ]
        )
        before = len(client.list_movements(sku, LOCATION).entries)
    time.sleep(0.05)
    admin = signed_in(console, ADMIN)
    csrf = admin.get("/reconcile").csrf_token()
    counts = f"sku,location_id,on_hand\n{sku},{LOCATION},4\n".encode()
    report = admin.post_file(
        "/reconcile", {"csrf_token": csrf, "as_of": _stamp(_now())}, "counts", "c.csv", counts
    )
    assert report.status == 200, report.text
    [confirm] = [e for e in elements(report.text, name="report_id") if e["tag"] == "input"]
    form = {"csrf_token": csrf, "report_id": confirm["attrs"]["value"], "confirm": "yes"}
    statuses: list[int] = []
    barrier = threading.Barrier(2)

    def press() -> None:
        browser = HttpSession(console.url, cookies=dict(admin.cookies))
        barrier.wait()
        statuses.append(browser.post("/reconcile/post", form).status)

    threads = [threading.Thread(target=press) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [200, 400], statuses
    with LedgerClient(ledger.address, token=ADMIN) as client:
        assert len(client.list_movements(sku, LOCATION).entries) == before + 1


# ---- 4 and 5. the CSV and late marks ------------------------------------------------------------


def _cli_history_csv(ledger: LedgerProcess, *args: str) -> str:
    """What ``ledger audit history --csv`` prints for the test position."""
    env = {**os.environ, "LEDGER_TOKEN": AUDITOR}
    env.pop("LEDGER_TARGET", None)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "audit",
            "history",
            "--target",
            ledger.address,
            "--sku",
            SKU,
            "--location-id",
            LOCATION,
            "--csv",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _cli_history(ledger: LedgerProcess, *args: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(_cli_history_csv(ledger, *args))))


def test_the_cli_csv_is_the_consoles_and_quotes_formulas(ledger, console):
    """Goal: ``ledger audit history --csv`` and the console's CSV are one format: the same
    header, the same cells (``true``/``false``), and a text cell starting with = + - @
    quoted (the CLI wrote a reason ``=HYPERLINK(...)`` as it was, a formula)."""
    printed = _cli_history_csv(ledger)
    cli = list(csv.DictReader(io.StringIO(printed)))
    auditor = signed_in(console, AUDITOR)
    download = auditor.get(
        "/ledger.csv", {"sku": SKU, "location_id": LOCATION, "page_size": "1000"}
    )
    assert download.status == 200
    console_rows = list(csv.DictReader(io.StringIO(download.text)))
    assert download.text.split("\r\n")[0] == printed.splitlines()[0]
    assert cli == console_rows
    reasons = {row["reason"] for row in cli}
    assert '\'=HYPERLINK("http://x.example","y")' in reasons and "'@SUM(A1)" in reasons
    assert any(row["message_id"] == "'+a2" for row in cli)
    assert {row["late"] for row in cli} == {"true", "false"}
    assert [row["delta"] for row in cli if row["type"] == "adjustment"] == ["-1", "1"]


def test_late_marks_on_the_effective_axis_do_not_depend_on_the_window_end(ledger, console):
    """Goal: whether an entry is late depends on entries before it in ledger order, which on
    the effective axis may lie after the window's end. Method: the shipment (occurred 5 h
    ago) was recorded after the receipt (occurred 1 h ago); with ``to`` 2 h ago the window
    holds the shipment only, and it is still marked late, as the CLI marks it."""
    to = _stamp(_now() - dt.timedelta(hours=2))
    auditor = signed_in(console, AUDITOR)
    page = auditor.get(
        "/ledger", {"sku": SKU, "location_id": LOCATION, "axis": "effective", "to": to}
    )
    assert page.status == 200, page.text
    rows = [e for e in elements(page.text, data_entry_position="*") if e["tag"] == "tr"]
    marks = [row["attrs"]["data-late"] for row in rows]
    assert marks == ["true"], marks
    cli = _cli_history(ledger, "--axis", "effective", "--to", to)
    assert [row["late"] for row in cli] == marks
    assert [row["position"] for row in cli] == [r["attrs"]["data-entry-position"] for r in rows]


# ---- 7 and 8. a long position: verification and the fold -------------------------------------

BIG_ENTRIES = 40_000
VERIFY = ("inventory.ledger.v1.AuditService", "VerifyLedger")


@pytest.fixture(scope="module")
def big_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[LedgerProcess, ConsoleProcess, str]]:
    """Open mode, metrics on, one position with 40,000 receipts: verifying the ledger takes
    about two seconds and folding the position a third of one."""
    from tests.integration.test_metrics import metrics_url

    root = tmp_path_factory.mktemp("console-big")
    with LedgerProcess(
        f"sqlite:///{root / 'big.db'}", extra_args=["--metrics-listen", "127.0.0.1:0"]
    ) as process:
        url = metrics_url(process.log_text)
        with LedgerClient(process.address, timeout=60) as client:
            for batch in range(BIG_ENTRIES // 250):
                client.record_movements(
                    [
                        movement(
                            "receipt",
                            source="wms",
                            sku="BIG",
                            location_id="L",
                            message_id=f"big-{batch}-{index}",
                            qty=1,
                        )
                        for index in range(250)
                    ]
                )
        with ConsoleProcess(process.address) as console_process:
            yield process, console_process, url


def _verify_counts(url: str) -> dict[str, float]:
    from tests.integration.test_metrics import by, scrape

    counts = by(scrape(url)["ledger_rpc_duration_seconds_count"], "service", "method", "code")
    return {key[2]: n for key, n in counts.items() if key[:2] == VERIFY}


def _leave_after(port: int, path: str, seconds: float) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("GET", path, headers={"Sec-Fetch-Site": "same-origin"})
    time.sleep(seconds)
    connection.close()  # the browser went away (a closed tab, a stopped load)


def test_a_browser_that_goes_away_cancels_the_verification(big_world):
    """Goal: a verification nobody waits for any more stops in the ledger too. Method: the
    page without script (/verify/run) and the event stream (/verify/events) are each left
    0.4 s into a whole-ledger verification (about 2 s); the ledger's metrics then count each
    VerifyLedger call as CANCELLED, none as OK (/verify/run used to run it to its end)."""
    from tests.integration.test_metrics import eventually

    _ledger, console, url = big_world
    assert console.port is not None and _verify_counts(url) == {}
    _leave_after(console.port, "/verify/run", 0.4)
    _leave_after(console.port, "/verify/events", 0.4)
    eventually(url, lambda _s: sum(_verify_counts(url).values()) >= 2)
    assert _verify_counts(url) == {"CANCELLED": 2}


def test_folding_a_long_position_leaves_the_console_answering(big_world):
    """Goal: the running balance of a long position is folded off the event loop, so other
    people's pages are served meanwhile. Method: while the stock ledger of the 40,000-entry
    position is computed (its fold alone takes about 0.35 s), /healthz is asked again and
    again; no answer takes 0.2 s (one used to wait for the whole fold)."""
    _ledger, console, _url = big_world
    port = console.port
    assert port is not None
    done = threading.Event()
    answers: list[int] = []

    def ledger_page() -> None:
        try:
            page = raw(port, "GET", "/ledger?sku=BIG&location_id=L", timeout=60)
            answers.append(page.status)
        finally:
            done.set()

    thread = threading.Thread(target=ledger_page)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    gaps: list[float] = []
    thread.start()
    while not done.is_set():
        started = time.monotonic()
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        gaps.append(time.monotonic() - started)
    thread.join()
    connection.close()
    assert answers == [200]
    assert len(gaps) > 20 and max(gaps) < 0.2, (len(gaps), sorted(gaps)[-5:])
