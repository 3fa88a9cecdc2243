"""Verify a ledger export file (``ledger export OUT.jsonl``) against docs/audit.md.

Usage: ``python tools/verify_ledger_export.py FILE [--whole-ledger] [--json]``

This verifier is deliberately independent of the service: it uses the Python standard
library only and imports nothing from ``ledger``, ``projections`` or ``ingest``, so an
auditor can read this one file, compare it with docs/audit.md and trust the result
without trusting the code that wrote the ledger.

Checks, streaming line by line (memory grows with the number of positions, not lines):

- per position ``(sku, location_id)``: the chain starts at version 1, versions are
  consecutive, and every ``hash`` equals the recomputed chain hash; the first broken link
  of a position is reported and that position's later lines are ignored;
- ``position`` strictly increasing along the file (``--whole-ledger``: exactly 1, 2, 3, ...);
- ``recorded_at`` non-decreasing along the file;
- every line is a well-formed export record (else ``MALFORMED``; the run continues).

Exit status: 0 when everything checks out, 1 when any problem was found, 2 for usage
errors or an unreadable file.

When stderr is a terminal, a progress line (lines checked, share of the file, rate, time
left) is redrawn there; otherwise nothing is written to stderr but errors.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import time
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

GENESIS = bytes(32)  # the "previous hash" of every position's version 1

ENTRY_KEYS = frozenset(
    {
        "actor",
        "correlation_id",
        "data",
        "location_id",
        "message_id",
        "occurred_at",
        "recorded_at",
        "request_id",
        "sku",
        "source",
        "type",
        "version",
    }
)
RECORD_KEYS = frozenset({"position", "ledger_position", "entry", "hash"})
# Metadata strings: today's writers store "" when they have none, older entries may hold
# null (docs/audit.md, the per-field table); both are hashed as stored.
OPTIONAL_STRING_KEYS = ("actor", "correlation_id", "message_id", "request_id", "source")

# [0-9] rather than \d: \d also matches non-ASCII digits. Fixed width is what makes the
# string comparison of recorded_at a time comparison.
TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
HASH_HEX = re.compile(r"[0-9a-f]{64}")

MALFORMED = "MALFORMED"
HASH_MISMATCH = "HASH_MISMATCH"
VERSION_GAP = "VERSION_GAP"
MISSING_GENESIS = "MISSING_GENESIS"
ORDER = "ORDER"
POSITION_GAP = "POSITION_GAP"
RECORDED_AT_DECREASES = "RECORDED_AT_DECREASES"


# --------------------------------------------------------------------------- encoding


def canonical(entry: dict[str, Any]) -> bytes:
    """The hashed bytes of an entry (docs/audit.md, "Canonical encoding")."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def chain_hash(previous_hex: str | None, entry: dict[str, Any]) -> str:
    """hash_n = SHA-256(raw 32 bytes of hash_{n-1} ‖ canonical_n); None for version 1."""
    previous = GENESIS if previous_hex is None else bytes.fromhex(previous_hex)
    return hashlib.sha256(previous + canonical(entry)).hexdigest()


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class Problem:
    reason: str
    line: int
    detail: str
    sku: str | None = None
    location_id: str | None = None
    version: int | None = None
    position: int | None = None  # the line's export ``position`` number

    def describe(self) -> str:
        where = f"line {self.line}: {self.reason}"
        if self.sku is not None and self.location_id is not None:
            where += f" sku={_quote(self.sku)} location_id={_quote(self.location_id)}"
        if self.version is not None:
            where += f" version {self.version}"
        if self.position is not None:
            where += f" (position {self.position})"
        return f"{where}: {self.detail}"


@dataclass
class Report:
    entries: int = 0  # well-formed entries read
    positions: int = 0  # distinct (sku, location_id) among them
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "entries": self.entries,
            "positions": self.positions,
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        return f"checked {self.entries} entries in {self.positions} positions: {verdict}"


def _quote(text: str) -> str:
    """JSON-quote a value for the human report, escaping anything invisible or
    line-breaking too, so a crafted sku cannot forge or hide report lines."""
    return "".join(_visible(c) for c in json.dumps(text, ensure_ascii=False))


def _visible(char: str) -> str:
    # Categories C* (controls, format such as bidi overrides, unassigned) and Z* other than
    # the plain space (line/paragraph separators, odd spaces) are shown as escapes.
    if char == " " or unicodedata.category(char)[0] not in "CZ":
        return char
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


# --------------------------------------------------------------------------- parsing


class _Malformed(Exception):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last duplicate key; a verifier must not guess.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _Malformed(f"duplicate key {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise _Malformed(f"non-standard JSON constant {name}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # bool is an int subclass


@dataclass(frozen=True)
class _Record:
    position: int
    entry: dict[str, Any]
    hash_hex: str
    canonical: bytes


def _parse(text: str) -> _Record:
    """One export line → record, or _Malformed saying what is wrong."""
    try:
        record = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, huge ints, deep nesting
        raise _Malformed(f"not JSON: {error}") from None
    if not isinstance(record, dict):
        raise _Malformed("not a JSON object")
    if set(record) != RECORD_KEYS:
        raise _Malformed(_key_difference("record", set(record), RECORD_KEYS))
    for key in ("position", "ledger_position"):
        if not _is_int(record[key]) or record[key] < 1:
            raise _Malformed(f"{key} is not a positive integer")
    if not isinstance(record["hash"], str) or not HASH_HEX.fullmatch(record["hash"]):
        raise _Malformed("hash is not 64 lowercase hex digits")
    entry = record["entry"]
    if not isinstance(entry, dict):
        raise _Malformed("entry is not an object")
    if set(entry) != ENTRY_KEYS:
        raise _Malformed(_key_difference("entry", set(entry), ENTRY_KEYS))
    if not _is_int(entry["version"]):
        raise _Malformed("entry.version is not an integer")
    for key in ("sku", "location_id", "type"):
        if not isinstance(entry[key], str):
            raise _Malformed(f"entry.{key} is not a string")
    for key in ("occurred_at", "recorded_at"):
        if not isinstance(entry[key], str) or not TIMESTAMP.fullmatch(entry[key]):
            raise _Malformed(f"entry.{key} is not YYYY-MM-DDTHH:MM:SS.ffffffZ")
    for key in OPTIONAL_STRING_KEYS:
        if entry[key] is not None and not isinstance(entry[key], str):
            raise _Malformed(f"entry.{key} is neither a string nor null")
    if not isinstance(entry["data"], dict):
        raise _Malformed("entry.data is not an object")
    try:
        encoded = canonical(entry)
    except UnicodeEncodeError:  # lone surrogates: from \ud800 escapes or undecodable bytes
        raise _Malformed("entry contains text that is not valid Unicode") from None
    return _Record(record["position"], entry, record["hash"], encoded)


def _key_difference(what: str, keys: set[str], expected: frozenset[str]) -> str:
    parts = []
    if missing := sorted(expected - keys):
        parts.append(f"missing {', '.join(missing)}")
    if extra := sorted(keys - expected):
        parts.append(f"unexpected {', '.join(map(repr, extra))}")
    return f"{what} keys: {'; '.join(parts)}"


# --------------------------------------------------------------------------- verification


def verify_lines(lines: Iterable[str], *, whole_ledger: bool = False) -> Report:
    """Check export lines (with or without their newline) and report every problem."""
    report = Report()
    # Per position: (last version, its raw hash), or None once broken (later lines ignored).
    chains: dict[tuple[str, str], tuple[int, bytes] | None] = {}
    previous_position: int | None = None
    previous_recorded_at: str | None = None

    for number, raw in enumerate(lines, start=1):
        text = raw.rstrip("\r\n")
        if not text.strip():
            report.problems.append(Problem(MALFORMED, number, "empty line"))
            continue
        try:
            record = _parse(text)
        except _Malformed as error:
            # Skipped entirely: what it claims cannot be trusted, so its position's next
            # line will show the gap it leaves.
            report.problems.append(Problem(MALFORMED, number, str(error)))
            continue

        entry = record.entry
        sku, location_id, version = entry["sku"], entry["location_id"], entry["version"]
        where = {
            "sku": sku,
            "location_id": location_id,
            "version": version,
            "position": record.position,
        }
        report.entries += 1

        _check_order(report, number, record.position, previous_position, whole_ledger, where)
        previous_position = record.position

        recorded_at = entry["recorded_at"]
        if previous_recorded_at is not None and recorded_at < previous_recorded_at:
            detail = f"recorded_at {recorded_at} after {previous_recorded_at}"
            report.problems.append(Problem(RECORDED_AT_DECREASES, number, detail, **where))
        previous_recorded_at = recorded_at

        _check_chain(report, chains, number, record, where)

    return report


def _check_order(
    report: Report,
    number: int,
    position: int,
    previous_position: int | None,
    whole_ledger: bool,
    where: dict[str, Any],
) -> None:
    """Global order. Compared with the previous line, so one misplaced line is one problem."""
    if previous_position is not None and position <= previous_position:
        detail = f"position {position} after {previous_position}"
        report.problems.append(Problem(ORDER, number, detail, **where))
    elif whole_ledger:
        expected = 1 if previous_position is None else previous_position + 1
        if position != expected:
            detail = f"expected position {expected} got {position}"
            report.problems.append(Problem(POSITION_GAP, number, detail, **where))


def _check_chain(
    report: Report,
    chains: dict[tuple[str, str], tuple[int, bytes] | None],
    number: int,
    record: _Record,
    where: dict[str, Any],
) -> None:
    """The position's chain: the next version, and the hash linking it to the one before."""
    entry = record.entry
    key = (entry["sku"], entry["location_id"])
    version = entry["version"]
    if key in chains:
        state = chains[key]
        if state is None:
            return  # already broken: only its first broken link is reported
        last_version, previous_hash = state
        if version != last_version + 1:
            chains[key] = None
            detail = f"expected version {last_version + 1} got {version}"
            report.problems.append(Problem(VERSION_GAP, number, detail, **where))
            return
    else:
        report.positions += 1
        previous_hash = GENESIS
        if version != 1:
            chains[key] = None
            detail = f"first entry of the position has version {version}, not 1"
            report.problems.append(Problem(MISSING_GENESIS, number, detail, **where))
            return

    digest = hashlib.sha256(previous_hash + record.canonical).digest()
    if digest.hex() != record.hash_hex:
        chains[key] = None
        detail = f"hash {record.hash_hex} but the chain gives {digest.hex()}"
        report.problems.append(Problem(HASH_MISMATCH, number, detail, **where))
        return
    chains[key] = (version, digest)


def _read_lines(binary: Iterable[bytes]) -> Iterator[str]:
    # Decoding per line with surrogateescape keeps one bad byte from aborting the run:
    # it survives as a lone surrogate and that line alone is reported MALFORMED. Iterating
    # bytes splits on b"\n" only: a raw U+2028 inside a string is not a line break.
    for raw in binary:
        yield raw.decode("utf-8", errors="surrogateescape")


PROGRESS_SECONDS = 0.2  # redraw interval of the progress line


class _ProgressLine:
    """Lines checked, share of the file's bytes, rate and time left, redrawn in place."""

    def __init__(self, stream: IO[str], total_bytes: int) -> None:
        self.stream = stream
        self.total_bytes = total_bytes
        self.lines = self.bytes = 0
        self.started = self.drawn = time.monotonic()

    def wrap(self, binary: Iterable[bytes]) -> Iterator[bytes]:
        try:
            for raw in binary:
                yield raw
                self.lines += 1
                self.bytes += len(raw)
                if time.monotonic() - self.drawn >= PROGRESS_SECONDS:
                    self.draw()
        finally:  # ends the line, so a read error is reported on a line of its own
            self.draw(final=True)

    def draw(self, final: bool = False) -> None:
        self.drawn = time.monotonic()
        seconds = self.drawn - self.started
        rate = self.lines / seconds if seconds > 0 else 0.0
        share = self.bytes / self.total_bytes if self.total_bytes else 1.0
        text = f"verifying: {self.lines:,} lines ({share:.0%}), {rate:,.0f} lines/s"
        if final:
            text += f", {seconds:.1f} s\n"
        elif share > 0:
            text += f", about {seconds * (1 - share) / share:,.0f} s left"
        self.stream.write("\r\x1b[K" + text)  # back to the line's start, erase, redraw
        self.stream.flush()


def _with_progress(handle: IO[bytes]) -> Iterable[bytes]:
    """The file's lines, with a progress line on stderr only when that is a terminal."""
    if not sys.stderr.isatty():
        return handle
    return _ProgressLine(sys.stderr, os.fstat(handle.fileno()).st_size).wrap(handle)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Verify a ledger export (JSON lines) against docs/audit.md."
    )
    parser.add_argument("file", help="the export file (ledger export OUT.jsonl)")
    parser.add_argument(
        "--whole-ledger",
        action="store_true",
        help="the file is a whole-ledger export: positions must be exactly 1, 2, 3, ...",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)  # exits 2 on usage errors

    try:
        with open(args.file, "rb") as handle:
            lines = _read_lines(_with_progress(handle))
            report = verify_lines(lines, whole_ledger=args.whole_ledger)
    except OSError as error:
        print(f"verify_ledger_export: cannot read {args.file}: {error}", file=sys.stderr)
        return 2

    if args.json:
        print(json.dumps(report.to_json()))  # ASCII-only: safe on any terminal or pipe
    else:
        out = sys.stdout
        if hasattr(out, "reconfigure"):
            out.reconfigure(errors="backslashreplace")  # non-UTF-8 consoles must not crash
        for problem in report.problems:
            print(problem.describe(), file=out)
        print(report.summary(), file=out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
