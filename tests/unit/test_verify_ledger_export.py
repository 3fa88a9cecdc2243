"""tools/verify_ledger_export.py: the standalone verifier of ledger exports (docs/audit.md).

Export lines are built here with hashlib and json directly, not with the verifier's helpers,
so a bug in its encoding cannot hide behind the same bug in the fixtures.
"""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tools.verify_ledger_export import Problem, Report, canonical, chain_hash, verify_lines

TOOL = Path(__file__).resolve().parents[2] / "tools" / "verify_ledger_export.py"

A = ("SKU-A", "DC-1")
B = ("SKU-B", "DC-2")


def _entry(
    sku: str, location_id: str, version: int, second: int, data: dict[str, Any] | None = None
) -> dict[str, Any]:
    stamp = f"2026-11-22T10:15:{second:02d}.000000Z"
    return {
        "actor": "auditor@example.com",
        "correlation_id": None,
        "data": {} if data is None else data,
        "location_id": location_id,
        "message_id": f"m-{sku}-{version}",
        "occurred_at": stamp,
        "recorded_at": stamp,
        "request_id": None,
        "sku": sku,
        "source": "wms-east",
        "type": "opened" if version == 1 else "receipt",
        "version": version,
    }


def _export(entries: list[dict[str, Any]], first_position: int = 1) -> list[dict[str, Any]]:
    """Export records for ``entries`` in file order, hashes chained per position."""
    last: dict[tuple[str, str], bytes] = {}
    records = []
    for offset, entry in enumerate(entries):
        key = (entry["sku"], entry["location_id"])
        encoded = json.dumps(
            entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")
        digest = hashlib.sha256(last.get(key, b"\x00" * 32) + encoded).digest()
        last[key] = digest
        position = first_position + offset
        records.append(
            {
                "position": position,
                "ledger_position": 10 * position,  # gaps allowed here
                "entry": entry,
                "hash": digest.hex(),
            }
        )
    return records


def _lines(records: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) + "\n" for r in records]


def _interleaved() -> list[dict[str, Any]]:
    """A1 B1 A2 B2 A3: two positions, interleaved as a whole-ledger export."""
    return _export(
        [
            _entry(*A, 1, 0),
            _entry(*B, 1, 1),
            _entry(*A, 2, 2, {"qty": 5, "putaway_pending": False}),
            _entry(*B, 2, 3, {"qty": 7, "putaway_pending": True}),
            _entry(*A, 3, 4, {"qty": 2, "putaway_pending": False}),
        ]
    )


def _reasons(report: Report) -> list[str]:
    return [p.reason for p in report.problems]


def _run(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Run from a foreign directory: the tool must not need the repo on sys.path.
    return subprocess.run(
        [sys.executable, str(TOOL), str(path), *args],
        cwd=path.parent,
        capture_output=True,
        text=True,
        encoding="utf-8",
        check=False,
        timeout=60,
    )


def _write(tmp_path: Path, records: list[dict[str, Any]]) -> Path:
    path = tmp_path / "export.jsonl"
    path.write_text("".join(_lines(records)), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- encoding


def test_canonical_matches_the_documented_encoding_byte_for_byte() -> None:
    entry = {"version": 1, "sku": 'é"\\\n\x01', "data": {"qty": 3, "ok": True, "x": None}}
    assert canonical(entry) == (
        b'{"data":{"ok":true,"qty":3,"x":null},"sku":"\xc3\xa9\\"\\\\\\n\\u0001","version":1}'
    )


def test_chain_hash_starts_from_32_zero_bytes_and_links_raw_digests() -> None:
    first, second = _entry(*A, 1, 0), _entry(*A, 2, 1, {"qty": 1, "putaway_pending": False})
    records = _export([first, second])
    assert chain_hash(None, first) == records[0]["hash"]
    assert chain_hash(records[0]["hash"], second) == records[1]["hash"]


def test_the_tool_imports_only_the_standard_library() -> None:
    tree = ast.parse(TOOL.read_text(encoding="utf-8"))
    imported = {
        name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
    }
    assert imported, "found no imports at all: the check is broken"
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


# --------------------------------------------------------------------------- valid files


def test_valid_interleaved_export_is_ok() -> None:
    report = verify_lines(_lines(_interleaved()), whole_ledger=True)
    assert report.problems == []
    assert report.ok
    assert (report.entries, report.positions) == (5, 2)


def test_valid_export_via_cli_exits_0(tmp_path: Path) -> None:
    result = _run(_write(tmp_path, _interleaved()), "--whole-ledger")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().splitlines()[-1] == "checked 5 entries in 2 positions: OK"


@pytest.mark.parametrize(
    "sku",
    [
        "Ünïcødé-日本-✓",
        "emoji-\U0001f4e6",  # outside the BMP
        'quote"double',
        "quote'single",
        "'; DROP TABLE events; --",
        "back\\slash",
        "tab\tnew\nline",
        "rtl-\u202eoverride",
    ],
)
def test_unusual_sku_values_verify(sku: str) -> None:
    records = _export(
        [
            _entry(sku, "DC-ø", 1, 0),
            _entry(sku, "DC-ø", 2, 1, {"qty": 1, "putaway_pending": False}),
            _entry(*A, 1, 2),
        ]
    )
    report = verify_lines(_lines(records), whole_ledger=True)
    assert report.problems == []
    assert (report.entries, report.positions) == (3, 2)


def test_unicode_export_via_cli_and_escaped_in_the_human_report(tmp_path: Path) -> None:
    sku = "日本\n'; DROP TABLE events; --"
    good = _export([_entry(sku, "DC-1", 1, 0), _entry(sku, "DC-1", 2, 1, {"qty": 1})])
    assert _run(_write(tmp_path, good)).returncode == 0

    tampered = copy.deepcopy(good)
    tampered[1]["entry"]["data"]["qty"] = 2
    result = _run(_write(tmp_path, tampered))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    # The newline in the sku must not split the report line (no forged report lines).
    assert len(lines) == 2, result.stdout
    assert lines[0].startswith("line 2: HASH_MISMATCH")
    assert '"日本\\n\'; DROP TABLE events; --"' in lines[0]
    assert lines[1] == "checked 2 entries in 1 positions: 1 problem(s)"


# --------------------------------------------------------------------------- tampering


def test_altered_quantity_is_a_hash_mismatch_of_that_position_and_version() -> None:
    records = _interleaved()
    records[2]["entry"]["data"]["qty"] = 500  # A version 2
    report = verify_lines(_lines(records), whole_ledger=True)
    # A version 3 (line 5) still fails to chain, but only the first broken link is reported.
    assert report.problems == [
        Problem(
            reason="HASH_MISMATCH",
            line=3,
            detail=report.problems[0].detail,
            sku="SKU-A",
            location_id="DC-1",
            version=2,
            position=3,
        )
    ]
    assert records[2]["hash"] in report.problems[0].detail
    assert not report.ok
    assert (report.entries, report.positions) == (5, 2)


def test_altered_hash_field_is_a_hash_mismatch() -> None:
    records = _interleaved()
    records[3]["hash"] = "0" * 64  # B version 2
    report = verify_lines(_lines(records))
    assert [(p.reason, p.sku, p.version) for p in report.problems] == [
        ("HASH_MISMATCH", "SKU-B", 2)
    ]


def test_swapped_versions_within_a_position_are_reported() -> None:
    records = _interleaved()
    # A version 2 (line 3) and version 3 (line 5) trade version numbers, hashes untouched.
    records[2]["entry"]["version"], records[4]["entry"]["version"] = 3, 2
    report = verify_lines(_lines(records), whole_ledger=True)
    assert [(p.reason, p.line, p.sku, p.version) for p in report.problems] == [
        ("VERSION_GAP", 3, "SKU-A", 3)
    ]
    assert "expected version 2 got 3" in report.problems[0].detail


def test_swapped_versions_with_recomputed_hashes_still_break_the_chain() -> None:
    # Even with every hash recomputed to match, versions out of sequence are caught.
    entries = [
        _entry(*A, 1, 0),
        _entry(*A, 2, 1, {"qty": 1, "putaway_pending": False}),
        _entry(*A, 3, 2, {"qty": 2, "putaway_pending": False}),
    ]
    entries[1]["version"], entries[2]["version"] = 3, 2
    report = verify_lines(_lines(_export(entries)))
    assert _reasons(report) == ["VERSION_GAP"]


def test_deleted_middle_line_is_a_version_gap() -> None:
    records = _interleaved()
    del records[2]  # A version 2
    report = verify_lines(_lines(records))
    assert [(p.reason, p.line, p.sku, p.version) for p in report.problems] == [
        ("VERSION_GAP", 4, "SKU-A", 3)
    ]
    assert "expected version 2 got 3" in report.problems[0].detail
    # The gap in `position` is only a problem for a whole-ledger export.
    assert _reasons(verify_lines(_lines(records), whole_ledger=True)) == [
        "POSITION_GAP",
        "VERSION_GAP",
    ]


def test_missing_genesis_is_reported() -> None:
    records = _interleaved()
    del records[0]  # A version 1
    report = verify_lines(_lines(records))
    assert [(p.reason, p.line, p.sku, p.version) for p in report.problems] == [
        ("MISSING_GENESIS", 2, "SKU-A", 2)
    ]


def test_position_gap_fails_only_with_whole_ledger() -> None:
    records = _interleaved()
    for record in records[3:]:
        record["position"] += 1  # 1 2 3 5 6: chains intact, one position number missing
    assert verify_lines(_lines(records)).ok
    report = verify_lines(_lines(records), whole_ledger=True)
    assert [(p.reason, p.line) for p in report.problems] == [("POSITION_GAP", 4)]
    assert "expected position 4 got 5" in report.problems[0].detail


def test_whole_ledger_must_start_at_position_1() -> None:
    records = _export([_entry(*A, 1, 0), _entry(*B, 1, 1)], first_position=2)
    assert verify_lines(_lines(records)).ok
    report = verify_lines(_lines(records), whole_ledger=True)
    assert [(p.reason, p.line) for p in report.problems] == [("POSITION_GAP", 1)]


def test_positions_out_of_order_are_reported() -> None:
    records = _interleaved()
    records[1]["position"], records[2]["position"] = 3, 2  # 1 3 2 4 5, chains untouched
    report = verify_lines(_lines(records))
    assert [(p.reason, p.line, p.position) for p in report.problems] == [("ORDER", 3, 2)]
    # Each line is compared with the one before it, so the whole-ledger check also sees
    # the jumps around the swap (3 where 2 was due, 4 right after 2).
    report = verify_lines(_lines(records), whole_ledger=True)
    assert [(p.reason, p.line) for p in report.problems] == [
        ("POSITION_GAP", 2),
        ("ORDER", 3),
        ("POSITION_GAP", 4),
    ]


def test_swapped_lines_of_different_positions_are_reported() -> None:
    records = _interleaved()
    records[1], records[2] = records[2], records[1]  # B1 and A2 trade places
    report = verify_lines(_lines(records))
    # Each position's own chain is still intact; the global order is not.
    assert [(p.reason, p.line) for p in report.problems] == [
        ("ORDER", 3),
        ("RECORDED_AT_DECREASES", 3),
    ]


def test_repeated_position_is_an_order_problem() -> None:
    records = _interleaved()
    records[2]["position"] = 2
    assert [(p.reason, p.line) for p in verify_lines(_lines(records)).problems] == [("ORDER", 3)]


def test_recorded_at_going_backwards_is_reported() -> None:
    entries = [record["entry"] for record in _interleaved()]
    entries[3]["recorded_at"] = "2026-11-22T10:14:59.999999Z"  # before line 3's 10:15:02
    report = verify_lines(_lines(_export(entries)), whole_ledger=True)  # hashes re-chained
    assert [(p.reason, p.line, p.sku) for p in report.problems] == [
        ("RECORDED_AT_DECREASES", 4, "SKU-B")
    ]


def test_equal_recorded_at_is_fine() -> None:
    entries = [_entry(*A, 1, 5), _entry(*B, 1, 5), _entry(*A, 2, 5, {"qty": 1})]
    assert verify_lines(_lines(_export(entries))).ok


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(
    ("bad", "hint"),
    [
        ("this is not json", "not JSON"),
        ("", "empty line"),
        ("[1, 2]", "not a JSON object"),
        ('{"position": 9}', "missing"),
        ('{"position": NaN, "ledger_position": 1, "entry": {}, "hash": ""}', "NaN"),
        ('{"position": 1, "position": 2}', "duplicate key"),
    ],
)
def test_malformed_line_is_reported_and_the_run_continues(bad: str, hint: str) -> None:
    lines = _lines(_interleaved())
    lines.insert(2, bad + "\n")
    report = verify_lines(lines, whole_ledger=True)
    assert [(p.reason, p.line) for p in report.problems] == [("MALFORMED", 3)]
    assert hint in report.problems[0].detail
    assert (report.entries, report.positions) == (5, 2)  # every other line was checked


@pytest.mark.parametrize(
    ("mutate", "hint"),
    [
        (lambda r: r["entry"].update(version="2"), "entry.version"),
        (lambda r: r["entry"].update(version=True), "entry.version"),
        (lambda r: r.update(position="3"), "position"),
        (lambda r: r.update(hash=r["hash"].upper()), "hash"),
        (lambda r: r["entry"].pop("request_id"), "missing request_id"),
        (lambda r: r["entry"].update(extra=1), "unexpected 'extra'"),
        (lambda r: r["entry"].update(recorded_at="2026-11-22T10:15:02Z"), "recorded_at"),
        (lambda r: r["entry"].update(sku=7), "entry.sku"),
        (lambda r: r["entry"].update(data=[]), "entry.data"),
    ],
)
def test_wrong_keys_or_types_are_malformed(mutate: Any, hint: str) -> None:
    records = _interleaved()
    mutate(records[2])  # A version 2
    report = verify_lines(_lines(records))
    # The skipped line leaves a hole in A's chain, which its next line shows.
    assert [(p.reason, p.line) for p in report.problems] == [("MALFORMED", 3), ("VERSION_GAP", 5)]
    assert hint in report.problems[0].detail


def test_lone_surrogate_is_malformed() -> None:
    (record,) = _export([_entry("SKU-\u00ff", "DC-1", 1, 9)])
    line = json.dumps(record).replace("\\u00ff", "\\ud800")  # JSON allows it, UTF-8 not
    report = verify_lines([*_lines(_interleaved()), line])
    assert [(p.reason, p.line) for p in report.problems] == [("MALFORMED", 6)]
    assert "not valid Unicode" in report.problems[0].detail


def test_undecodable_bytes_are_malformed_not_fatal(tmp_path: Path) -> None:
    (record,) = _export([_entry("SKU-\u00ff", "DC-1", 1, 9)], first_position=6)
    line = json.dumps(record, ensure_ascii=False).encode("utf-8").replace(b"\xc3\xbf", b"\xff")
    path = _write(tmp_path, _interleaved())
    with path.open("ab") as handle:
        handle.write(line + b"\n")
    result = _run(path, "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [(p["reason"], p["line"]) for p in report["problems"]] == [("MALFORMED", 6)]
    assert report["entries"] == 5  # the lines before it were all checked


# --------------------------------------------------------------------------- CLI


def test_cli_json_on_tampered_file(tmp_path: Path) -> None:
    records = _interleaved()
    records[2]["entry"]["data"]["qty"] = 500
    result = _run(_write(tmp_path, records), "--json", "--whole-ledger")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert (report["entries"], report["positions"]) == (5, 2)
    assert len(report["problems"]) == 1
    problem = report["problems"][0]
    assert {k: problem[k] for k in ("reason", "line", "sku", "location_id", "version")} == {
        "reason": "HASH_MISMATCH",
        "line": 3,
        "sku": "SKU-A",
        "location_id": "DC-1",
        "version": 2,
    }


def test_cli_json_on_valid_file(tmp_path: Path) -> None:
    result = _run(_write(tmp_path, _interleaved()), "--json")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"ok": True, "entries": 5, "positions": 2, "problems": []}


def test_cli_human_report_lists_problems_then_summary(tmp_path: Path) -> None:
    records = _interleaved()
    del records[2]
    result = _run(_write(tmp_path, records), "--whole-ledger")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert [line.split(":")[1].split()[0] for line in lines[:-1]] == [
        "POSITION_GAP",
        "VERSION_GAP",
    ]
    assert lines[-1] == "checked 4 entries in 2 positions: 2 problem(s)"


def test_cli_unreadable_file_exits_2(tmp_path: Path) -> None:
    result = _run(tmp_path / "missing.jsonl")
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert result.stdout == ""


def test_cli_usage_error_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--no-such-flag"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "usage" in result.stderr
