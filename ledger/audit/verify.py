"""Recompute hash chains and name the first broken link (contract §3 tamper evidence).

Reads what is stored — the event rows and the entry index — and trusts neither: every
entry's hash is recomputed from its decoded content and the previous hash of its position,
versions must run 1, 2, 3, … per position, the index must agree with the event (version,
recorded_at) and, for the whole ledger, ``position`` must run 1, 2, 3, … with recorded_at
never decreasing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from uuid import UUID

from ledger.application import InventoryLedger
from ledger.audit.entries import decode_event, ledger_rows, position_rows
from ledger.domain import chain
from ledger.domain.position import position_id
from ledger.store.index_ops import EntryRow, to_micros

HASH_MISMATCH = "HASH_MISMATCH"
VERSION_GAP = "VERSION_GAP"
INDEX_MISMATCH = "INDEX_MISMATCH"
UNINDEXED_EVENTS = "UNINDEXED_EVENTS"
POSITION_GAP = "POSITION_GAP"
RECORDED_AT_DECREASES = "RECORDED_AT_DECREASES"
UNREADABLE = "UNREADABLE"

PROGRESS_EVERY = 5_000


@dataclass(frozen=True)
class BrokenLink:
    sku: str
    location_id: str
    version: int  # the first entry whose link does not hold
    position: int  # its global entry position (0 when unknown)
    reason: str
    detail: str
    expected_hash: str = ""
    stored_hash: str = ""


@dataclass
class VerifyProgress:
    positions_checked: int = 0
    entries_checked: int = 0
    broken: list[BrokenLink] = field(default_factory=list)
    done: bool = False

    @property
    def ok(self) -> bool:
        return not self.broken


@dataclass
class _Chain:
    sku: str
    location_id: str
    version: int = 0
    hash: str = chain.GENESIS
    broken: bool = False


class _Checker:
    def __init__(self, app: InventoryLedger) -> None:
        self.app = app
        self.chains: dict[UUID, _Chain] = {}
        self.progress = VerifyProgress()

    def feed(self, row: EntryRow) -> None:
        self.progress.entries_checked += 1
        link = self.chains.get(row.position_id)
        if link is None:
            link = self.chains[row.position_id] = _Chain(row.sku, row.location_id)
            self.progress.positions_checked += 1
        if link.broken:
            return
        problem = self._check(link, row)
        if problem is not None:
            link.broken = True
            self.progress.broken.append(problem)

    def _check(self, link: _Chain, row: EntryRow) -> BrokenLink | None:
        def broken(reason: str, detail: str, expected: str = "", stored: str = "") -> BrokenLink:
            return BrokenLink(
                row.sku,
                row.location_id,
                link.version + 1,
                row.seq,
                reason,
                detail,
                expected,
                stored,
            )

        if row.event_version != link.version + 1:
            return broken(
                VERSION_GAP, f"expected version {link.version + 1}, found {row.event_version}"
            )
        if row.version != row.event_version:
            return broken(INDEX_MISMATCH, f"index says version {row.version}")
        try:
            event = decode_event(self.app, row)
            fields = vars(event)
            body = chain.entry_body(
                chain.entry_type_of(type(event)),
                row.sku,
                row.location_id,
                row.event_version,
                fields,
            )
            stored = str(fields["hash"])
        except Exception as error:  # a row edited into something undecodable
            return broken(UNREADABLE, f"{type(error).__name__}: {error}")
        expected = chain.link(link.hash, body)
        if expected != stored:
            return broken(
                HASH_MISMATCH, "content or order differs from what was hashed", expected, stored
            )
        if to_micros(fields["recorded_at"]) != row.recorded_at_us:
            return broken(INDEX_MISMATCH, "index recorded_at differs from the event's")
        link.version = row.event_version
        link.hash = stored
        return None


def verify_position(app: InventoryLedger, sku: str, location_id: str) -> VerifyProgress:
    pid = position_id(sku, location_id)
    checker = _Checker(app)
    for row in position_rows(app, pid):
        checker.feed(row)
    # Events the index does not know about (deleted index rows, inserted event rows).
    link = checker.chains.get(pid)
    verified = link.version if link else 0
    newest = app.recorder.select_events(pid, desc=True, limit=1)
    if newest and newest[0].originator_version > verified and not (link and link.broken):
        checker.progress.broken.append(
            BrokenLink(
                sku,
                location_id,
                verified + 1,
                0,
                UNINDEXED_EVENTS,
                f"events up to version {newest[0].originator_version}, index ends at {verified}",
            )
        )
        if link is None:
            checker.progress.positions_checked += 1
    checker.progress.done = True
    return checker.progress


def verify_ledger(app: InventoryLedger) -> Iterator[VerifyProgress]:
    """The whole ledger in one pass over ``position`` order; yields progress every
    PROGRESS_EVERY entries and a final report (``done``)."""
    checker = _Checker(app)
    after, last_recorded_us = 0, -1
    reported = 0
    for row in ledger_rows(app):
        if row.seq != after + 1:
            checker.progress.broken.append(
                BrokenLink(
                    row.sku,
                    row.location_id,
                    row.version,
                    row.seq,
                    POSITION_GAP,
                    f"expected position {after + 1}, found {row.seq}",
                )
            )
        if row.recorded_at_us < last_recorded_us:
            checker.progress.broken.append(
                BrokenLink(
                    row.sku,
                    row.location_id,
                    row.version,
                    row.seq,
                    RECORDED_AT_DECREASES,
                    "recorded_at earlier than the entry before",
                )
            )
        after, last_recorded_us = row.seq, row.recorded_at_us
        checker.feed(row)
        if checker.progress.entries_checked - reported >= PROGRESS_EVERY:
            reported = checker.progress.entries_checked
            yield _snapshot(checker.progress)
    checker.progress.done = True
    yield _snapshot(checker.progress)


def _snapshot(progress: VerifyProgress) -> VerifyProgress:
    return VerifyProgress(
        progress.positions_checked, progress.entries_checked, list(progress.broken), progress.done
    )


__all__ = ["BrokenLink", "VerifyProgress", "verify_ledger", "verify_position"]
