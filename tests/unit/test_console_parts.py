"""The console's pure parts (issue 21): the session store's limits, where sign-in may return
to, the CSV cells, the count file's rules, the chart's geometry and the idempotency key of a
posted count. Each test states the rule it pins."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from entrypoints.console import reconcile
from entrypoints.console.app import safe_next
from entrypoints.console.chart import Series, chart_geometry
from entrypoints.console.cli import is_loopback, split_listen, trusted_hosts
from entrypoints.console.pages import ledger_csv_text
from entrypoints.console.sessions import CsrfSigner, SessionStore, well_formed_id
from ledger.config import ConfigError

T0 = dt.datetime(2026, 3, 31, 23, 59, tzinfo=dt.UTC)


def test_sessions_are_random_bounded_and_expire():
    store = SessionStore(sessions_max=2, idle_seconds_max=0.05, age_seconds_max=60)
    first, second = store.create(token="a"), store.create(token="b")
    assert first.session_id != second.session_id and first.csrf_token != second.csrf_token
    assert len(first.session_id) >= 40 and store.get(first.session_id) is first
    store.create(token="c")  # a third: the least recently used (second) goes
    assert store.get(second.session_id) is None and len(store) == 2
    time.sleep(0.08)
    assert store.get(first.session_id) is None  # idle too long
    assert store.get(None) is None and store.get("") is None
    with pytest.raises(ValueError):
        store.create(token="")  # only signed-in sessions are stored


def test_one_principal_keeps_a_bounded_number_of_sessions_and_evicts_only_its_own():
    store = SessionStore(per_principal_max=3)
    other = store.create(token="tok-b", principal="bob")
    alice = [store.create(token="tok-a", principal="alice") for _ in range(5)]
    assert [store.get(s.session_id) is not None for s in alice] == [False, False, True, True, True]
    assert store.get(other.session_id) is other and len(store) == 4
    # Unnamed (the ledger did not say who): counted by token.
    unnamed = [store.create(token="tok-x") for _ in range(4)]
    assert store.get(unnamed[0].session_id) is None and store.get(other.session_id) is other


def test_visitor_csrf_tokens_are_stateless_hmacs_of_the_cookie():
    signer, another = CsrfSigner(), CsrfSigner()
    visitor = signer.visitor("v" * 43)
    assert visitor.csrf_matches(signer.token_for("v" * 43)) and not visitor.signed_in
    assert not visitor.csrf_matches(signer.token_for("w" * 43))
    assert not visitor.csrf_matches(another.token_for("v" * 43))  # another process's secret
    assert well_formed_id("A-_" * 11) and not well_formed_id("short")
    assert not well_formed_id("x" * 43 + ";") and not well_formed_id(None)


def test_csrf_tokens_match_only_exactly():
    session = SessionStore().create(token="t")
    assert session.csrf_matches(session.csrf_token)
    for presented in (None, "", session.csrf_token[:-1], session.csrf_token + "x", "forged"):
        assert not session.csrf_matches(presented)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/as-of?sku=A", "/as-of?sku=A"),
        ("//evil.example/", ""),
        ("https://evil.example/", ""),
        ("/\\evil.example", ""),
        ("/sign-in?next=/x", ""),
        ("", ""),
    ],
)
def test_sign_in_returns_to_local_pages_only(value, expected):
    assert safe_next(value) == expected


def test_listen_addresses_and_loopback():
    assert split_listen("127.0.0.1:0") == ("127.0.0.1", 0)
    assert split_listen("[::1]:8080") == ("::1", 8080)
    for bad in ("8080", "host:", "host:99999", ":80"):
        with pytest.raises(ConfigError):
            split_listen(bad)
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")


def test_the_console_answers_its_own_names_only():
    loopback = {"localhost", "127.0.0.1", "[::1]"}
    assert set(trusted_hosts("127.0.0.1", [])) == loopback
    assert set(trusted_hosts("::1", [])) == loopback
    assert set(trusted_hosts("10.0.0.5", ["Console.Example"])) == {
        "10.0.0.5",
        "console.example",
        *loopback,
    }
    assert set(trusted_hosts("0.0.0.0", ["console.example"])) == {"console.example", *loopback}
    # A wildcard address without names: any name (sign-in is required there; cookies never
    # follow a foreign name).
    assert trusted_hosts("0.0.0.0", []) == () and trusted_hosts("::", []) == ()


def test_csv_cells_are_one_rule_for_the_cli_and_the_console():
    from entrypoints.ledger_csv import csv_cell

    assert [csv_cell(v, text=True) for v in ("=1+1", "+1", "-1", "@A", "\tx", "ok")] == [
        "'=1+1",
        "'+1",
        "'-1",
        "'@A",
        "'\tx",
        "ok",
    ]
    assert csv_cell(-2, text=False) == "-2" and csv_cell(True, text=False) == "true"
    assert csv_cell(False, text=True) == "false"


def test_csv_quotes_text_that_spreadsheets_would_run_but_keeps_numbers():
    row = {
        "position": 3,
        "ledger_position": 17,
        "version": 2,
        "type": "adjustment",
        "qty": 0,
        "delta": -2,
        "counted": 0,
        "occurred_at": "2026-03-31T23:59:00Z",
        "recorded_at": "2026-03-31T23:59:00Z",
        "source": "=HYPERLINK(1)",
        "message_id": "@m",
        "request_id": "",
        "correlation_id": "c",
        "actor": "x",
        "reservation_id": "",
        "transfer_id": "",
        "lot_id": "",
        "reason": "-broken",
        "late": True,
        "stale_count": False,
        "balance": dict.fromkeys(
            (
                "on_hand",
                "receiving",
                "quarantine",
                "damaged",
                "in_transit_inbound",
                "reserved",
                "allocated",
                "safety_stock",
                "available",
            ),
            -1,
        ),
    }
    header, line, _ = ledger_csv_text([row]).split("\r\n")
    cells = dict(zip(header.split(","), line.split(","), strict=True))
    assert cells["source"] == "'=HYPERLINK(1)" and cells["message_id"] == "'@m"
    assert cells["reason"] == "'-broken" and cells["delta"] == "-2" and cells["on_hand"] == "-1"
    assert cells["late"] == "true" and cells["stale_count"] == "false"


def test_count_files_follow_ledger_reconcile_rules():
    rows, problems = reconcile.read_counts(
        b"\xef\xbb\xbfSKU,location_id,on_hand,lot_id\nA,L,3,\nA,L,4,L1\nB,L,x,\nA,L,5,\n"
    )
    assert [(r.sku, r.counted, r.lot_id) for r in rows] == [("A", 3, None), ("A", 4, "L1")]
    assert [line for line, _ in problems] == [4, 5]
    assert reconcile.read_counts(b"sku,on_hand\n")[1][0][0] == 1
    assert "UTF-8" in reconcile.read_counts(b"sku,location_id,on_hand\n\xff,L,1\n")[1][0][1]


def test_a_posted_count_has_the_cli_id():
    """Posting from the console and from ``ledger reconcile --post`` is one count."""
    from ledger.audit.reconcile import count_message_id

    at = T0.replace(microsecond=123)
    for lot in (None, "L1"):
        assert reconcile.count_message_id(at, "A", "L", 7, lot) == count_message_id(
            at, "A", "L", 7, lot
        )


def test_chart_steps_after_each_value_and_marks_the_instant():
    start, end = T0, T0 + dt.timedelta(hours=2)
    values = [(start, 0), (start + dt.timedelta(hours=1), 10), (end, -5)]
    geometry = chart_geometry(
        [Series("recorded", "on_hand", values)], start, end, marker=start + dt.timedelta(hours=1)
    )
    points = [tuple(map(float, p.split(","))) for p in geometry["lines"][0]["points"].split()]
    assert len(points) == 5  # each new value starts with a horizontal step from the last
    assert points[1][1] == points[0][1] and points[1][0] == points[2][0]
    assert [d["value"] for d in geometry["dots"]] == [0, 10, -5]
    xs = [d["x"] for d in geometry["dots"]]
    assert xs == sorted(xs) and geometry["marker_x"] == xs[1]
    ys = {d["value"]: d["y"] for d in geometry["dots"]}
    assert ys[10] < ys[0] < ys[-5]  # higher values are drawn higher
    with pytest.raises(ValueError):
        chart_geometry([], end, start, marker=None)


@pytest.mark.parametrize(("low", "high"), [(-3, 10), (0, 0), (5, 5), (-4, 25), (0, 1234)])
def test_chart_ticks_are_whole_steps_covering_the_values_and_zero(low, high):
    from entrypoints.console.chart import Y_TICKS, _nice_scale

    bottom, top, step = _nice_scale(low, high)
    assert bottom <= min(low, 0) and top >= max(high, 0) and top > bottom
    assert bottom % step == 0 and top % step == 0 and str(step).strip("0") in ("1", "2", "5")
    assert (top - bottom) // step <= Y_TICKS + 2


def test_a_broken_chain_shows_each_positions_first_broken_link_and_reason():
    """The verify result block (rendered the same for the page and the event stream)."""
    import jinja2

    from entrypoints.console.app import TEMPLATES_DIR
    from tests.integration.test_console import elements

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)), autoescape=True
    )
    link = {
        "key": "A@<b>",
        "sku": "A",
        "location_id": "<b>",
        "version": 3,
        "position": 17,
        "reason": "HASH_MISMATCH",
        "detail": "stored hash differs",
        "expected_hash": "ab" * 32,
        "stored_hash": "cd" * 32,
    }
    html = environment.get_template("verify_result.html").render(
        result={
            "ok": False,
            "positions_checked": 2,
            "entries_checked": 8,
            "broken_links": [link],
        }
    )
    [section] = elements(html, id="verify-result")
    assert section["attrs"]["data-ok"] == "false"
    [row] = elements(html, data_position="A@<b>")
    fields = {
        cell["attrs"]["data-field"]: cell["text"].strip() for cell in elements(html, data_field="*")
    }
    assert fields["version"] == "3" and fields["position"] == "17"
    assert fields["reason"] == "HASH_MISMATCH" and "ab" * 32 in fields["detail"]
    assert "<b>" not in html and "&lt;b&gt;" in html  # ledger text is escaped, never markup
    assert row["tag"] == "tr"
