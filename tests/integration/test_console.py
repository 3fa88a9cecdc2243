"""``ledger console`` over HTTP (issue 21): sign-in and its cookie, CSRF refusals, the 403
page naming a missing scope, open mode on loopback, and the figures of the as-of and
stock-ledger pages against the gRPC answers.

Method: a real ``ledger serve`` (SQLite) with a token file, a real ``ledger console``
subprocess in front of it, and a cookie-keeping ``http.client`` session that follows no
redirects, so every status and ``Set-Cookie`` header is seen as the server sent it. Values
are read from the pages' ``data-*`` attributes (docs/console.md), never from layout.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from inventory_ledger_client import LedgerClient, movement

from entrypoints.grpc.tokens import principal_entry
from testbed.console import ConsoleProcess
from testbed.server import LedgerProcess
from tests.integration.console_http import HttpAnswer, HttpSession

pytestmark = pytest.mark.slow

SESSION_COOKIE = "ledger_console_session"
TOKENS = {
    "auditor": "tok-c-auditor",
    "reader": "tok-c-reader",
    "clerk": "tok-c-clerk",
    "admin": "tok-c-admin",
}
SKU, LOCATION = "SKU-C1", "DC-C"
BUCKETS = (
    "on_hand",
    "receiving",
    "quarantine",
    "damaged",
    "in_transit_inbound",
    "reserved",
    "allocated",
    "safety_stock",
    "available",
)


# ---- a minimal DOM: every element with its attributes and text ------------------------------


class _Elements(HTMLParser):
    VOID = {"input", "meta", "link", "br", "img", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[dict[str, Any]] = []
        self._open: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = {"tag": tag, "attrs": {k: v or "" for k, v in attrs}, "text": "", "parents": []}
        element["parents"] = [parent["attrs"] for parent in self._open]
        self.elements.append(element)
        if tag not in self.VOID:
            self._open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for index in range(len(self._open) - 1, -1, -1):
            if self._open[index]["tag"] == tag:
                del self._open[index:]
                return

    def handle_data(self, data: str) -> None:
        for element in self._open:
            element["text"] += data


def elements(html: str, **wanted: str) -> list[dict[str, Any]]:
    """Elements whose attributes include ``wanted`` (``data_bucket="on_hand"``; a value of
    ``"*"`` only needs the attribute)."""
    parser = _Elements()
    parser.feed(html)
    names = {key.replace("_", "-"): value for key, value in wanted.items()}
    return [
        element
        for element in parser.elements
        if all(
            name in element["attrs"] and value in ("*", element["attrs"][name])
            for name, value in names.items()
        )
    ]


def bucket_cells(html: str, **scope: str) -> dict[str, int]:
    return {
        cell["attrs"]["data-bucket"]: int(cell["text"].strip())
        for cell in elements(html, data_bucket="*", **scope)
        if cell["tag"] == "td"
    }


# ---- fixtures -------------------------------------------------------------------------------


def _tokens_file(path: Path) -> Path:
    entries = [
        principal_entry("auditor", TOKENS["auditor"], ["audit"]),
        principal_entry("reader", TOKENS["reader"], ["query"]),
        principal_entry("clerk", TOKENS["clerk"], ["audit", "query", "record"]),
        principal_entry("admin", TOKENS["admin"], ["admin"], rate_per_second=0),
    ]
    path.write_text(json.dumps({"principals": entries}))
    return path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pause() -> None:
    time.sleep(0.05)  # recorded_at moves on; checkpoints fall strictly between entries


def write_history(client: LedgerClient) -> list[dt.datetime]:
    """Receipts, a late (backdated) shipment, a reservation committed and shipped, an
    adjustment; returns checkpoints taken between the steps (on the recorded clock)."""
    start = _now()
    checkpoints = [start - dt.timedelta(seconds=1)]

    def record(message_id: str, kind: str, **fields: Any) -> None:
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
        _pause()
        checkpoints.append(_now())
        _pause()

    record("r1", "receipt", qty=20, occurred_at=start - dt.timedelta(hours=3))
    record("r2", "receipt", qty=5, putaway_pending=True, occurred_at=start - dt.timedelta(hours=2))
    record("s1", "shipment", qty=4, occurred_at=start - dt.timedelta(hours=4))  # late
    reservation = client.reserve("web", [(SKU, LOCATION, 3)], order_ref="o-1")
    _pause()
    checkpoints.append(_now())
    _pause()
    client.commit(reservation.reservation_id)
    _pause()
    record("p1", "putaway", qty=5)
    record("a1", "adjustment", delta=-2, reason="broken")
    return checkpoints


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerProcess]:
    root = tmp_path_factory.mktemp("console")
    tokens = _tokens_file(root / "tokens.json")
    with LedgerProcess(
        f"sqlite:///{root / 'ledger.db'}", extra_args=["--token-file", str(tokens)]
    ) as process:
        yield process


@pytest.fixture(scope="module")
def checkpoints(ledger: LedgerProcess) -> list[dt.datetime]:
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        return write_history(client)


@pytest.fixture(scope="module")
def console(ledger: LedgerProcess) -> Iterator[ConsoleProcess]:
    with ConsoleProcess(ledger.address, extra_args=["--channel", "web"]) as process:
        yield process


def signed_in(console: ConsoleProcess, who: str) -> HttpSession:
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    answer = browser.post(
        "/sign-in", {"csrf_token": form.csrf_token(), "token": TOKENS[who], "next": ""}
    )
    assert answer.status == 303, answer.text
    return browser


def cookie_attributes(answer: HttpAnswer) -> list[str]:
    [cookie] = [c for c in answer.set_cookies() if c.startswith(SESSION_COOKIE + "=")]
    return [part.strip().lower() for part in cookie.split(";")]


def stamp(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


# ---- sign-in, cookies, CSRF, scopes ----------------------------------------------------------


def test_without_a_token_every_page_leads_to_sign_in(console, checkpoints):
    """Goal: no ledger figure before sign-in, even on loopback, when the ledger has a token
    file. Method: each page fresh (no cookie): a 303 to /sign-in carrying the page asked for."""
    for path in ("/positions", "/ledger", "/as-of", "/verify", "/ledger.csv"):
        answer = HttpSession(console.url).get(path, {"sku": SKU, "location_id": LOCATION})
        assert answer.status == 303, (path, answer.status)
        location = answer.header("location") or ""
        assert location.startswith("/sign-in?next=%2F"), location
        assert "data-bucket" not in answer.text


def test_sign_in_sets_a_strict_httponly_cookie_with_a_new_random_id(console, checkpoints):
    """Goal: the cookie flags of docs/console.md; the token never leaves the server; sign-in
    replaces the session id (no fixation) and returns to the page asked for."""
    browser = HttpSession(console.url)
    form = browser.get("/sign-in", {"next": f"/as-of?sku={SKU}&location_id={LOCATION}"})
    assert form.status == 200
    flags = cookie_attributes(form)
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags, flags
    assert "secure" not in flags, flags  # plain HTTP on loopback; HTTPS adds Secure
    before = browser.cookies[SESSION_COOKIE]

    answer = browser.post(
        "/sign-in",
        {
            "csrf_token": form.csrf_token(),
            "token": TOKENS["auditor"],
            "next": f"/as-of?sku={SKU}&location_id={LOCATION}",
        },
    )
    assert answer.status == 303, answer.text
    assert answer.header("location") == f"/as-of?sku={SKU}&location_id={LOCATION}"
    after_flags = cookie_attributes(answer)
    assert "httponly" in after_flags and "samesite=strict" in after_flags
    after = browser.cookies[SESSION_COOKIE]
    assert after != before and len(after) >= 40
    assert TOKENS["auditor"] not in "".join(answer.set_cookies())
    page = browser.get("/as-of", {"sku": SKU, "location_id": LOCATION})
    assert page.status == 200
    assert bucket_cells(page.text, data_position=f"{SKU}@{LOCATION}")
    # The id known before sign-in is dead.
    stale = HttpSession(console.url, cookies={SESSION_COOKIE: before})
    assert stale.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 303


def test_an_unknown_token_is_refused_and_signs_nobody_in(console):
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    answer = browser.post("/sign-in", {"csrf_token": form.csrf_token(), "token": "tok-nobody"})
    assert answer.status == 401
    assert "does not accept this token" in answer.text
    assert browser.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 303


def test_a_forged_or_missing_csrf_token_is_refused_and_changes_nothing(console, checkpoints):
    """Goal: every POST checks the session's CSRF token first. Method: sign-in and sign-out
    with a forged token, with another session's token and with none: 403, and the session's
    state is what it was."""
    browser = HttpSession(console.url)
    form = browser.get("/sign-in")
    forged = browser.post("/sign-in", {"csrf_token": "forged", "token": TOKENS["auditor"]})
    assert forged.status == 403 and 'id="csrf-refused"' in forged.text
    missing = browser.post("/sign-in", {"token": TOKENS["auditor"]})
    assert missing.status == 403
    assert browser.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 303

    auditor = signed_in(console, "auditor")
    other = HttpSession(console.url).get("/sign-in").csrf_token()
    for token in ("forged", other, ""):
        refused = auditor.post("/sign-out", {"csrf_token": token})
        assert refused.status == 403, token
    assert auditor.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 200
    own = auditor.get("/verify").csrf_token()
    assert auditor.post("/sign-out", {"csrf_token": own}).status == 303
    assert auditor.get("/as-of", {"sku": SKU, "location_id": LOCATION}).status == 303
    assert form.status == 200


def test_a_missing_scope_is_a_403_page_naming_it(console, checkpoints):
    """Goal: the console forwards the person's token, so the ledger's PERMISSION_DENIED
    (ErrorInfo MISSING_SCOPE) becomes a 403 naming the scope; figures are not shown."""
    reader = signed_in(console, "reader")
    page = reader.get("/as-of", {"sku": SKU, "location_id": LOCATION})
    assert page.status == 403
    [scope] = elements(page.text, id="missing-scope")
    assert scope["attrs"]["data-scope"] == "audit"
    assert not bucket_cells(page.text)
    assert reader.get("/positions", {"sku": SKU}).status == 200

    auditor = signed_in(console, "auditor")
    page = auditor.get("/positions", {"sku": SKU})
    assert page.status == 403
    [scope] = elements(page.text, id="missing-scope")
    assert scope["attrs"]["data-scope"] == "query"


def test_pages_carry_security_headers_and_packaged_assets(console):
    answer = HttpSession(console.url).get("/sign-in")
    policy = answer.header("content-security-policy") or ""
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert answer.header("x-content-type-options") == "nosniff"
    for asset in ("/static/console.css", "/static/verify.js"):
        assert HttpSession(console.url).get(asset).status == 200, asset
    assert "http://" not in answer.text.replace(console.url, "") and "https://" not in answer.text


# ---- figures --------------------------------------------------------------------------------


def test_as_of_cells_equal_get_position_as_of(ledger, console, checkpoints):
    """Goal (must show 1, over HTTP): the as-of page's data-bucket cells are GetPositionAsOf's
    answer, at five instants on both axes and with a known_at. Method: the auditor's page vs
    the admin's own gRPC call with the same arguments."""
    auditor = signed_in(console, "auditor")
    instants = checkpoints[1:6]
    assert len(instants) == 5
    cases = [(at, axis, None) for at in instants for axis in ("recorded", "effective")]
    late_recorded = checkpoints[3]  # the backdated shipment was recorded just before this
    cases += [
        (checkpoints[-1], "effective", checkpoints[2]),
        (checkpoints[-1], "effective", late_recorded),
    ]
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        seen = set()
        for at, axis, known_at in cases:
            params = {"sku": SKU, "location_id": LOCATION, "at": stamp(at), "axis": axis}
            if known_at is not None:
                params["known_at"] = stamp(known_at)
            page = auditor.get("/as-of", {**params, "points": "4"})
            assert page.status == 200, page.text
            cells = bucket_cells(page.text, data_axis=axis, data_position=f"{SKU}@{LOCATION}")
            answer = client.get_position_as_of(SKU, LOCATION, at, axis=axis, known_at=known_at)
            expected = {bucket: int(getattr(answer, bucket)) for bucket in cells}
            assert set(cells) >= set(BUCKETS)
            assert cells == expected, (at, axis, known_at)
            seen.add(tuple(sorted(cells.items())))
    assert len(seen) >= 4  # the instants really differ: the test is not comparing zeros


def test_as_of_chart_points_are_as_of_answers_on_both_axes(ledger, console, checkpoints):
    auditor = signed_in(console, "auditor")
    page = auditor.get(
        "/as-of",
        {
            "sku": SKU,
            "location_id": LOCATION,
            "at": stamp(checkpoints[-1]),
            "chart_from": stamp(checkpoints[0] - dt.timedelta(hours=5)),
            "chart_to": stamp(checkpoints[-1]),
            "points": "6",
        },
    )
    assert page.status == 200
    dots = [d for d in elements(page.text, data_chart_axis="*") if d["tag"] == "circle"]
    assert {(d["attrs"]["data-chart-axis"], d["attrs"]["data-chart-bucket"]) for d in dots} == {
        (axis, bucket) for axis in ("recorded", "effective") for bucket in ("on_hand", "available")
    }
    assert len(dots) == 4 * 6
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        for dot in dots:
            attrs = dot["attrs"]
            at = dt.datetime.fromisoformat(attrs["data-at"].replace("Z", "+00:00"))
            answer = client.get_position_as_of(SKU, LOCATION, at, axis=attrs["data-chart-axis"])
            assert int(attrs["data-value"]) == getattr(answer, attrs["data-chart-bucket"]), attrs
    # Late facts stand out: where the effective axis already counts the backdated facts the
    # recorded one, which learnt of them only now, still shows nothing.
    values: dict[tuple[str, str], str] = {
        (d["attrs"]["data-chart-axis"], d["attrs"]["data-at"]): d["attrs"]["data-value"]
        for d in dots
        if d["attrs"]["data-chart-bucket"] == "on_hand"
    }
    instants = {at for _, at in values}
    assert any(values[("effective", at)] != values[("recorded", at)] for at in instants)


def ledger_rows(html: str) -> list[dict[str, Any]]:
    rows = []
    for row in elements(html, data_entry_position="*"):
        position = row["attrs"]["data-entry-position"]
        cells = {
            cell["attrs"]["data-bucket"]: int(cell["text"].strip())
            for cell in elements(html, data_bucket="*")
            if cell["tag"] == "td"
            and any(p.get("data-entry-position") == position for p in cell["parents"])
        }
        rows.append(
            {"position": int(position), "late": row["attrs"]["data-late"] == "true", **cells}
        )
    return rows


@pytest.mark.parametrize("axis", ["recorded", "effective"])
def test_stock_ledger_balances_equal_the_ledger_and_the_csv_equals_the_rows(
    ledger, console, checkpoints, axis
):
    """Goal (must show 2): each row's running balance is the position after that entry, as
    the ledger itself answers (GetPositionAsOf at the entry's time, for the last entry of
    each instant); paging cuts the same rows; the CSV holds exactly the rows shown.
    Method: two pages of 4 rows, the CSV link of each, the admin's gRPC calls."""
    auditor = signed_in(console, "auditor")
    params = {"sku": SKU, "location_id": LOCATION, "axis": axis, "page_size": "4"}
    first = auditor.get("/ledger", params)
    assert first.status == 200, first.text
    [summary] = elements(first.text, id="ledger-summary")
    through = summary["attrs"]["data-through"]
    pages = [ledger_rows(first.text)]
    second = auditor.get("/ledger", {**params, "page": "2", "through": through})
    pages.append(ledger_rows(second.text))
    rows = pages[0] + pages[1]
    assert len(pages[0]) == 4
    assert len(rows) == int(summary["attrs"]["data-window-rows"]) == 8

    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        entries = []
        token = ""
        while True:
            page = client.list_movements(SKU, LOCATION, axis=axis, page_token=token)
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                break
        by_position = {int(e.position): e for e in entries}
        assert [row["position"] for row in rows] == [int(e.position) for e in entries][: len(rows)]
        checked = 0
        for index, row in enumerate(rows):
            entry = by_position[row["position"]]
            stamp_of = (
                (lambda e: e.recorded_at) if axis == "recorded" else (lambda e: e.occurred_at)
            )
            nxt = entries[index + 1] if index + 1 < len(entries) else None
            if nxt is not None and stamp_of(nxt) == stamp_of(entry):
                continue  # not the last entry at this instant: as-of would include the next
            at = stamp_of(entry).ToDatetime(tzinfo=dt.UTC)
            answer = client.get_position_as_of(SKU, LOCATION, at, axis=axis)
            assert {b: row[b] for b in BUCKETS} == {b: int(getattr(answer, b)) for b in BUCKETS}, (
                row,
                entry,
            )
            checked += 1
        assert checked >= 5
    assert any(row["late"] for row in rows), rows  # the backdated shipment is marked

    for number, shown in enumerate(pages, start=1):
        page_html = first.text if number == 1 else second.text
        [link] = elements(page_html, id="csv-link")
        href = link["attrs"]["href"].replace("&amp;", "&")
        download = auditor.get(href)
        assert download.status == 200
        assert download.header(
            "content-type",
        ).startswith("text/csv")
        records = list(csv.DictReader(io.StringIO(download.text)))
        assert [
            {
                "position": int(r["position"]),
                "late": r["late"] == "true",
                **{b: int(r[b]) for b in BUCKETS},
            }
            for r in records
        ] == shown


def test_open_mode_on_loopback_needs_no_sign_in(tmp_path):
    """Goal: against a ledger without a token file, a loopback console serves pages to a
    visitor who has not signed in."""
    with LedgerProcess(f"sqlite:///{tmp_path / 'open.db'}") as ledger:
        with LedgerClient(ledger.address) as client:
            client.record_movements(
                [
                    movement(
                        "receipt", source="wms", sku="O-1", location_id="L", message_id="m", qty=7
                    )
                ]
            )
        with ConsoleProcess(ledger.address) as console:
            page = HttpSession(console.url).get("/as-of", {"sku": "O-1", "location_id": "L"})
            assert page.status == 200, page.text
            assert bucket_cells(page.text)["on_hand"] == 7


# ---- reconcile and operations ------------------------------------------------------------------

COUNTED_SKU = "SKU-C3"


def _entries(ledger: LedgerProcess, sku: str, location_id: str) -> int:
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        return len(client.list_movements(sku, location_id, page_size=1000).entries)


def test_reconcile_reports_variances_and_posts_only_after_confirmation_with_admin(
    ledger, console, checkpoints
):
    """Goal (must show 3): the variance report with totals; posting needs a matching CSRF
    token, the confirmation and a token with every scope; a refused post writes nothing.
    Method: 9 units received, 7 counted; forged CSRF, missing confirmation and a
    `record`-but-not-admin token are refused with the ledger unchanged; the admin's
    confirmed post records one cycle count, after which the effective balance is the count."""
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        client.record_movements(
            [
                movement(
                    "receipt",
                    source="wms",
                    sku=COUNTED_SKU,
                    location_id=LOCATION,
                    message_id="c3-r1",
                    qty=9,
                ),
                movement(
                    "receipt",
                    source="wms",
                    sku="SKU-C4",
                    location_id=LOCATION,
                    message_id="c4-r1",
                    qty=2,
                ),
            ]
        )
    time.sleep(0.05)
    as_of = stamp(_now())
    counts = f"sku,location_id,on_hand\n{COUNTED_SKU},{LOCATION},7\n".encode()
    before = _entries(ledger, COUNTED_SKU, LOCATION)

    clerk = signed_in(console, "clerk")
    csrf = clerk.get("/reconcile").csrf_token()
    report = clerk.post_file(
        "/reconcile", {"csrf_token": csrf, "as_of": as_of}, "counts", "c.csv", counts
    )
    assert report.status == 200, report.text
    [row] = elements(report.text, data_status="SHORT")
    assert row["attrs"]["data-position"] == f"{COUNTED_SKU}@{LOCATION}"
    totals = {
        e["attrs"]["data-total"]: e["text"].strip() for e in elements(report.text, data_total="*")
    }
    assert totals["variances"] == "1" and totals["units_short"] == "2" and totals["net"] == "-2"
    not_counted = {
        e["attrs"]["data-position"] for e in elements(report.text, data_status="NOT_COUNTED")
    }
    assert f"SKU-C4@{LOCATION}" in not_counted and f"{SKU}@{LOCATION}" in not_counted
    assert elements(report.text, id="post-needs-admin") and not elements(
        report.text, id="reconcile-confirm"
    )
    [section] = elements(report.text, id="reconcile-report")
    report_id = section["attrs"]["data-report-id"]
    refused = clerk.post(
        "/reconcile/post", {"csrf_token": csrf, "report_id": report_id, "confirm": "yes"}
    )
    assert refused.status == 403
    [scope] = elements(refused.text, id="missing-scope")
    assert scope["attrs"]["data-scope"] == "admin"

    admin = signed_in(console, "admin")
    csrf = admin.get("/reconcile").csrf_token()
    report = admin.post_file(
        "/reconcile", {"csrf_token": csrf, "as_of": as_of}, "counts", "c.csv", counts
    )
    assert report.status == 200
    [confirm] = [e for e in elements(report.text, name="report_id") if e["tag"] == "input"]
    report_id = confirm["attrs"]["value"]
    for form, status in (
        ({"csrf_token": "forged", "report_id": report_id, "confirm": "yes"}, 403),
        ({"report_id": report_id, "confirm": "yes"}, 403),
        ({"csrf_token": csrf, "report_id": report_id}, 400),  # not confirmed
        ({"csrf_token": csrf, "report_id": "another", "confirm": "yes"}, 400),
    ):
        assert admin.post("/reconcile/post", form).status == status, form
    assert _entries(ledger, COUNTED_SKU, LOCATION) == before  # nothing was posted

    posted = admin.post(
        "/reconcile/post", {"csrf_token": csrf, "report_id": report_id, "confirm": "yes"}
    )
    assert posted.status == 200, posted.text
    [outcome] = elements(posted.text, id="reconcile-posted")
    assert outcome["attrs"]["data-recorded"] == "1"
    assert _entries(ledger, COUNTED_SKU, LOCATION) == before + 1
    again = admin.post(
        "/reconcile/post", {"csrf_token": csrf, "report_id": report_id, "confirm": "yes"}
    )
    assert again.status == 400  # the report was consumed: a second press posts nothing
    assert _entries(ledger, COUNTED_SKU, LOCATION) == before + 1
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        at = dt.datetime.fromisoformat(as_of.replace("Z", "+00:00"))
        assert client.get_position_as_of(COUNTED_SKU, LOCATION, at, axis="effective").on_hand == 7


def test_a_bad_count_file_is_refused_line_by_line(console, checkpoints):
    admin = signed_in(console, "admin")
    csrf = admin.get("/reconcile").csrf_token()
    bad = b"sku,location_id,on_hand\nA,L,-1\nA,L,2\nB,L\n"
    answer = admin.post_file(
        "/reconcile", {"csrf_token": csrf, "as_of": stamp(_now())}, "counts", "bad.csv", bad
    )
    assert answer.status == 400
    lines = {e["attrs"]["data-line"] for e in elements(answer.text, data_line="*")}
    assert lines == {"2", "3", "4"}, answer.text  # 3 repeats 2: ambiguous even though 2 is bad


def test_operations_shows_lag_and_exceptions_by_type(ledger, console, checkpoints):
    """Goal: projection status and exception counts are the ledger's. Method: a shipment
    from an empty position raises NEGATIVE_BUCKET; the page's counts equal ListExceptions."""
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        client.record_movements(
            [
                movement(
                    "shipment",
                    source="wms",
                    sku="SKU-C5",
                    location_id=LOCATION,
                    message_id="c5-s1",
                    qty=5,
                )
            ]
        )
        deadline = time.monotonic() + 10
        while client.get_projection_status().lag and time.monotonic() < deadline:
            time.sleep(0.05)
        expected = len(client.list_exceptions(type="negative_bucket", page_size=1000).exceptions)
        status = client.get_projection_status()
    assert expected >= 1
    reader = signed_in(console, "reader")
    page = reader.get("/operations")
    assert page.status == 200, page.text
    [head] = elements(page.text, data_field="head_position")
    assert int(head["text"]) >= status.head_position
    [count] = [
        e
        for e in elements(page.text, data_field="count")
        if any(p.get("data-exception-type") == "negative_bucket" for p in e["parents"])
    ]
    assert int(count["text"]) == expected
    listed = reader.get("/operations", {"type": "negative_bucket", "sku": "SKU-C5"})
    rows = elements(
        listed.text, data_exception_type="negative_bucket", data_position=f"SKU-C5@{LOCATION}"
    )
    assert [r for r in rows if r["tag"] == "tr"]


def test_verify_streams_progress_then_the_result(console, checkpoints):
    """Goal: the verify page's event stream ends with the result block (the script shows
    it as it comes); without script, /verify/run shows the same result."""
    auditor = signed_in(console, "auditor")
    stream = auditor.get("/verify/events", {"sku": SKU, "location_id": LOCATION})
    assert stream.status == 200
    assert (stream.header("content-type") or "").startswith("text/event-stream")
    events = [block for block in stream.text.split("\n\n") if block.strip()]
    names = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert names[-1] == "result" and set(names) <= {"progress", "result"}, names
    result = json.loads(events[-1].split("\n")[1].removeprefix("data: "))
    assert result["ok"] is True and result["done"] is True
    assert result["positions_checked"] == 1 and result["entries_checked"] >= 8
    [section] = elements(result["html"], id="verify-result")
    assert section["attrs"]["data-ok"] == "true"
    page = auditor.get("/verify/run", {})
    [section] = elements(page.text, id="verify-result")
    assert section["attrs"]["data-ok"] == "true"
    assert int(section["attrs"]["data-entries-checked"]) >= result["entries_checked"]


def test_over_https_the_cookie_is_secure(ledger, tmp_path):
    """Goal: a console serving HTTPS marks its session cookie Secure; plain HTTP on a
    non-loopback address is refused at start (exit 2) unless --insecure."""
    import ssl
    import subprocess
    import sys

    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "console.pem", tmp_path / "console.key"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    with ConsoleProcess(
        ledger.address, extra_args=["--https-cert", str(cert_file), "--https-key", str(key_file)]
    ) as console:
        assert console.url.startswith("https://")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        browser = HttpSession(console.url, tls=context)
        form = browser.get("/sign-in")
        assert form.status == 200
        flags = cookie_attributes(form)
        assert "secure" in flags and "httponly" in flags and "samesite=strict" in flags, flags
        answer = browser.post(
            "/sign-in", {"csrf_token": form.csrf_token(), "token": TOKENS["auditor"]}
        )
        assert answer.status == 303 and "secure" in cookie_attributes(answer)

    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "entrypoints.cli",
            "console",
            "--target",
            ledger.address,
            "--listen",
            "0.0.0.0:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2, refused.stderr
    assert "--https-cert" in refused.stderr and "--insecure" in refused.stderr


def test_positions_show_the_ledgers_buckets_channel_availability_and_holds(
    ledger, console, checkpoints
):
    """Goal: the positions page's cells are GetPosition's buckets, GetAvailability's
    available_to per channel, and the position's holds. Method: the reader's page vs the
    admin's own calls, once the read models have caught up."""
    with LedgerClient(ledger.address, token=TOKENS["admin"]) as client:
        deadline = time.monotonic() + 10
        while client.get_projection_status().lag and time.monotonic() < deadline:
            time.sleep(0.05)
        position = client.get_position(SKU, LOCATION, include_holds=True)
        availability = client.get_availability(SKU, "web")
    reader = signed_in(console, "reader")
    page = reader.get("/positions", {"sku": SKU, "channels": "web"})
    assert page.status == 200, page.text
    key = f"{SKU}@{LOCATION}"
    cells = bucket_cells(page.text, data_position=key)
    assert cells == {bucket: int(getattr(position, bucket)) for bucket in cells}
    assert set(cells) >= {*BUCKETS, "expired"} and cells["on_hand"] > 0
    [web] = [
        c for c in elements(page.text, data_channel="web", data_position=key) if c["tag"] == "td"
    ]
    [expected] = [a for a in availability.locations if a.location_id == LOCATION]
    assert int(web["text"].split()[0]) == expected.available_to
    holds = elements(page.text, data_reservation="*", data_position=key)
    assert {h["attrs"]["data-reservation"] for h in holds} == {
        h.reservation_id for h in position.holds
    }
    assert holds
