"""``ledger audit as-of|history|verify`` against a real ``ledger serve`` (SQLite).

Goal: the CLI answers what the gRPC API answers, its running balances are the ledger's own
as-of balances, and refusals are one line with exit 2. Method: script a history with late
(backdated) facts, holds, a transfer and a stale count through the Python client, then run
the CLI as a subprocess and compare with ``GetPositionAsOf`` / ``GetPosition`` /
``ListMovements`` for the same arguments.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from inventory_ledger_client import LedgerClient, movement

from entrypoints.grpc.tokens import principal_entry
from entrypoints.ledger_fold import BUCKETS, format_instant
from testbed.server import LedgerProcess

pytestmark = pytest.mark.slow

SKU = "SKU-AUD"
DC1 = "DC-1"
DC2 = "DC-2"
SOURCE = "wms-audit"
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
BASE = NOW - dt.timedelta(days=10)


def day(n: float) -> dt.datetime:
    return BASE + dt.timedelta(days=n)


def ledger_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", "audit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        check=False,
    )


def record(client: LedgerClient, kind: str, occurred_at: dt.datetime, **fields: Any) -> None:
    location = fields.pop("location_id", DC1)
    answer = client.record_movements(
        [
            movement(
                kind,
                source=SOURCE,
                sku=SKU,
                location_id=location,
                occurred_at=occurred_at,
                **fields,
            )
        ]
    )
    assert len(answer.results) == 1


def script_history(client: LedgerClient) -> None:
    """Facts in recording order; those marked late occurred before earlier-recorded ones."""
    record(client, "receipt", day(0), qty=100)
    record(client, "receipt", day(0), qty=40, location_id=DC2)
    record(
        client,
        "transfer_dispatch",
        day(1),
        qty=20,
        transfer_id="T1",
        to_location_id=DC1,
        location_id=DC2,
    )
    record(client, "shipment", day(2), qty=10)
    record(client, "quarantine", day(2), qty=5)
    client.set_safety_stock(SKU, DC1, 3)
    committed = client.reserve("web", [(SKU, DC1, 7)], ttl=3600)
    client.commit(committed.reservation_id)
    record(client, "shipment", day(2.5), qty=4, reservation_id=committed.reservation_id)
    client.reserve("web", [(SKU, DC1, 2)], ttl=3600)  # stays ACTIVE
    record(client, "adjustment", day(1), delta=-3, reason="found short")  # late
    record(client, "cycle_count", day(3), counted=80)
    record(client, "cycle_count", day(1.5), counted=50)  # late: stale on the recorded axis
    record(client, "transfer_receipt", day(4), qty=15, transfer_id="T1")
    record(client, "damage", day(4), qty=2, from_bucket="quarantine")
    record(client, "write_off", day(4.5), qty=1)
    record(client, "return_receipt", day(0.5), qty=3, disposition="damaged")  # late
    record(client, "receipt", day(5), qty=6, putaway_pending=True)
    record(client, "putaway", day(5), qty=4)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LedgerProcess, Any]]:
    path = tmp_path_factory.mktemp("audit-cli") / "ledger.db"
    with LedgerProcess(f"sqlite:///{path}") as ledger:
        client = LedgerClient(ledger.address)
        script_history(client)
        yield ledger, client
        client.close()


def all_entries(client: LedgerClient, axis: str) -> list[Any]:
    entries: list[Any] = []
    token = ""
    while True:
        page = client.list_movements(SKU, DC1, axis=axis, page_size=4, page_token=token)
        entries.extend(page.entries)
        token = page.next_page_token
        if not token:
            return entries


def figures(position: Any) -> dict[str, Any]:
    return {
        **{bucket: int(getattr(position, bucket)) for bucket in BUCKETS},
        "expired": int(position.expired),
        "fences": dict(position.fences),
        "version": int(position.version),
    }


def entry_time(entry: Any, axis: str) -> dt.datetime:
    stamp = entry.recorded_at if axis == "recorded" else entry.occurred_at
    return stamp.ToDatetime(tzinfo=dt.UTC)


def test_as_of_json_equals_get_position_as_of(served: tuple[LedgerProcess, Any]) -> None:
    ledger, client = served
    recorded = [entry_time(e, "recorded") for e in all_entries(client, "recorded")]
    cases: list[tuple[str, dt.datetime, dt.datetime | None]] = [
        ("recorded", recorded[3], None),
        ("recorded", recorded[9], None),
        ("recorded", recorded[-1], None),
        ("recorded", BASE, None),  # before anything was recorded: zeros
        ("effective", day(0.7), None),
        ("effective", day(1.2), None),
        ("effective", day(2.7), None),
        ("effective", day(4.2), None),
        ("effective", NOW + dt.timedelta(minutes=1), None),
        ("effective", day(2.7), recorded[9]),  # what we believed then about day 2.7
        ("effective", day(1.7), recorded[12]),
    ]
    seen = set()
    for axis, at, known_at in cases:
        argv = ["as-of", "--sku", SKU, "--location-id", DC1, "--at", format_instant(at)]
        argv += ["--axis", axis, "--json", "--target", ledger.address]
        if known_at is not None:
            argv += ["--known-at", format_instant(known_at)]
        done = ledger_cli(*argv)
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        expected = client.get_position_as_of(SKU, DC1, at, axis=axis, known_at=known_at)
        got = {name: answer[name] for name in figures(expected)}
        assert got == figures(expected), (axis, at, known_at)
        assert (answer["sku"], answer["location_id"], answer["axis"]) == (SKU, DC1, axis)
        seen.add(json.dumps(got, sort_keys=True))
    # The instants tell different stories (late facts, the stale count, holds).
    assert len(seen) >= 6


def run_history(ledger: LedgerProcess, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = ["history", "--sku", SKU, "--location-id", DC1, "--target", ledger.address]
    done = ledger_cli(*argv, *extra)
    assert done.returncode == 0, done.stderr
    return done


def csv_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("axis", ["recorded", "effective"])
def test_history_running_balance_is_the_ledger_balance(
    served: tuple[LedgerProcess, Any], axis: str
) -> None:
    ledger, client = served
    entries = all_entries(client, axis)
    rows = csv_rows(run_history(ledger, "--axis", axis, "--csv", "--page-size", "3").stdout)
    # Every entry of ListMovements, once, in its order.
    assert [int(r["position"]) for r in rows] == [int(e.position) for e in entries]
    # After the last entry of each instant, the running balance is the server's own as-of
    # balance at that instant on that axis (its fold, not ours).
    compared = 0
    for index, (row, entry) in enumerate(zip(rows, entries, strict=True)):
        at = entry_time(entry, axis)
        if index + 1 < len(entries) and entry_time(entries[index + 1], axis) == at:
            continue
        expected = client.get_position_as_of(SKU, DC1, at, axis=axis)
        assert {b: int(row[b]) for b in BUCKETS} == {
            b: int(getattr(expected, b)) for b in BUCKETS
        }, (axis, row["position"], row["type"])
        compared += 1
    assert compared >= 10
    # Late facts are marked (the backdated adjustment, count and return).
    late = {r["type"] for r in rows if r["late"] == "true"}
    assert {"adjustment", "cycle_count", "return_receipt"} <= late
    if axis == "recorded":
        # The last row is the current position.
        current = client.get_position(SKU, DC1)
        assert {b: int(rows[-1][b]) for b in BUCKETS} == {
            b: int(getattr(current, b)) for b in BUCKETS
        }
        assert any(r["stale_count"] == "true" for r in rows)


def test_history_table_and_window_show_the_same_rows(served: tuple[LedgerProcess, Any]) -> None:
    ledger, _client = served
    full = csv_rows(run_history(ledger, "--axis", "effective", "--csv").stdout)
    table = run_history(ledger, "--axis", "effective").stdout.splitlines()
    assert table[0].split()[:5] == ["position", "version", "recorded_at", "occurred_at", "type"]
    assert [int(line.split()[0]) for line in table[1:]] == [int(r["position"]) for r in full]
    # A window keeps the rows in [from, to) with the balances they had in the full history.
    start, end = format_instant(day(1)), format_instant(day(4))
    window = csv_rows(
        run_history(ledger, "--axis", "effective", "--csv", "--from", start, "--to", end).stdout
    )
    inside = [r for r in full if start <= r["occurred_at"] < end]
    assert window == inside and 0 < len(window) < len(full)


def test_verify_and_bad_input(served: tuple[LedgerProcess, Any]) -> None:
    ledger, _client = served
    whole = ledger_cli("verify", "--target", ledger.address)
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout.startswith("ok: ") and "every chain intact" in whole.stdout
    one = ledger_cli(
        "verify", "--sku", SKU, "--location-id", DC1, "--json", "--target", ledger.address
    )
    assert one.returncode == 0, one.stderr
    result = json.loads(one.stdout)
    assert result["ok"] is True and result["positions_checked"] == 1
    assert result["entries_checked"] >= 18 and result["broken_links"] == []

    bad_at = ledger_cli(
        "as-of", "--sku", SKU, "--location-id", DC1, "--at", "yesterday", "--target", ledger.address
    )
    assert bad_at.returncode == 2 and bad_at.stdout == ""
    assert len(bad_at.stderr.strip().splitlines()) == 1 and "--at" in bad_at.stderr
    # known_at on the recorded axis: the server's INVALID_ARGUMENT, one line.
    refused = ledger_cli(
        "as-of",
        "--sku",
        SKU,
        "--location-id",
        DC1,
        "--at",
        format_instant(NOW),
        "--known-at",
        format_instant(NOW),
        "--target",
        ledger.address,
    )
    assert refused.returncode == 2 and "INVALID_ARGUMENT" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    half = ledger_cli("verify", "--sku", SKU, "--target", ledger.address)
    assert half.returncode == 2 and "--location-id" in half.stderr


def test_tokens_scopes_and_an_unreachable_server(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(
        json.dumps(
            {
                "principals": [
                    principal_entry("auditor", "tok-auditor", ["audit"]),
                    principal_entry("reader", "tok-reader", ["query"]),
                ]
            }
        )
    )
    (tmp_path / "auditor.token").write_text("tok-auditor\n")
    (tmp_path / "reader.token").write_text("tok-reader\n")
    as_of = ["as-of", "--sku", SKU, "--location-id", DC1, "--at", format_instant(NOW), "--json"]
    with LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}", extra_args=["--token-file", str(tokens)]
    ) as ledger:
        target = ["--target", ledger.address]
        missing = ledger_cli(*as_of, *target)
        assert missing.returncode == 2 and missing.stdout == ""
        assert "UNAUTHENTICATED" in missing.stderr
        assert len(missing.stderr.strip().splitlines()) == 1
        reader = ledger_cli(*as_of, *target, "--token-file", str(tmp_path / "reader.token"))
        assert reader.returncode == 2 and "PERMISSION_DENIED" in reader.stderr
        assert "'audit'" in reader.stderr and len(reader.stderr.strip().splitlines()) == 1
        auditor = ledger_cli(*as_of, *target, "--token-file", str(tmp_path / "auditor.token"))
        assert auditor.returncode == 0, auditor.stderr
        assert json.loads(auditor.stdout)["version"] == 0
        # LEDGER_TOKEN and LEDGER_TARGET instead of the flags.
        by_env = ledger_cli(
            "verify", env={"LEDGER_TOKEN": "tok-auditor", "LEDGER_TARGET": ledger.address}
        )
        assert by_env.returncode == 0 and by_env.stdout.startswith("ok: "), by_env.stderr
        address = ledger.address
    gone = ledger_cli(*as_of, "--target", address)
    assert gone.returncode == 2 and "unavailable" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1


def test_mutual_tls_with_the_target_flags(tmp_path: Path) -> None:
    """The TLS flags of entrypoints.remote reach an mTLS server (certificates from trustme)."""
    import trustme

    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("ledger.internal", "127.0.0.1")  # the second for the health check
    client = client_ca.issue_cert("auditor.example")
    files = {
        "cert": b"".join(blob.bytes() for blob in server.cert_chain_pems),
        "key": server.private_key_pem.bytes(),
        "clients": client_ca.cert_pem.bytes(),
        "ca": server_ca.cert_pem.bytes(),
        "client-cert": b"".join(blob.bytes() for blob in client.cert_chain_pems),
        "client-key": client.private_key_pem.bytes(),
    }
    for name, data in files.items():
        (tmp_path / f"{name}.pem").write_bytes(data)
    pem = {name: str(tmp_path / f"{name}.pem") for name in files}
    tls = ["--tls-ca", pem["ca"], "--tls-server-name", "ledger.internal"]
    mtls = [*tls, "--tls-client-cert", pem["client-cert"], "--tls-client-key", pem["client-key"]]
    with LedgerProcess(
        f"sqlite:///{tmp_path / 'ledger.db'}",
        extra_args=["--tls-cert", pem["cert"], "--tls-key", pem["key"]],
        env={"LEDGER_TLS_CLIENT_CA": pem["clients"]},
        credentials=grpc.ssl_channel_credentials(
            root_certificates=files["ca"],
            private_key=files["client-key"],
            certificate_chain=files["client-cert"],
        ),
    ) as ledger:
        target = ["--target", ledger.address]
        done = ledger_cli("verify", *target, *mtls)
        assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stderr
        # Without the client certificate, a name the certificate lacks, or in plaintext: the
        # handshake fails, exit 2.
        wrong_name = [flag if flag != "ledger.internal" else "other.example" for flag in mtls]
        for flags in (tls, wrong_name, []):
            refused = ledger_cli("verify", *target, *flags)
            assert refused.returncode == 2 and "unavailable" in refused.stderr, flags
            assert len(refused.stderr.strip().splitlines()) == 1
    missing = ledger_cli("verify", "--target", "127.0.0.1:1", "--tls-ca", str(tmp_path / "no"))
    assert missing.returncode == 2 and "--tls-ca" in missing.stderr
    half = ledger_cli("verify", *tls, "--tls-client-cert", pem["client-cert"])
    assert half.returncode == 2 and "--tls-client-key" in half.stderr
