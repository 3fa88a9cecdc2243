"""What an eventual GetAvailability needs, held in memory and kept at one read-model position.

The cache holds, per SKU, the projected states of its positions (parsed once) and, per
channel, the policy terms — never a computed figure: holds and lots expire with time alone,
so every answer is computed at call time (``compute_availability`` with ``now``) from the
cached states, exactly as the database path computes it from the rows.

Invariant: every entry equals the read model at ``(generation, position)``, the cache's one
position. It holds because

* an entry is only stored from a read that saw exactly that generation and position (a read
  at another position is answered and dropped), or, while the cache is empty, from a read at
  least as new as anything the feed announced (the cache then *adopts* the read's position);
* the position only moves with a :class:`BatchChange` that starts where the cache stands:
  the SKUs it names are dropped (``skus=None``: everything is), then the position moves to
  the batch's end;
* anything it cannot vouch for (a batch starting past its position: a lost notification; a
  new generation; the poll finding the read model moved without a change arriving) empties
  it and forgets its position until a read or the feed gives it a new one.

Feeds: the in-process runner's change listener (SQLite, ``--projections in-process``), or
the projection process's NOTIFY per batch carrying the change (PostgreSQL), with a poll of
the tracking row as the safety net for notifications lost on a reconnect. Without any feed
(SQLite with an external runner) the poll alone drops everything whenever the read model
moves. A cache never attached to a feed serves nothing.

Bound: at most ``max_skus`` SKUs (least recently used evicted) and ``MAX_CHANNELS`` channels.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from projections.availability import PolicyTerms
from projections.position_state import ProjectedPosition

log = logging.getLogger(__name__)

MAX_CHANNELS = 1024
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more; a batch naming more SKUs than fit
# is announced as "anything changed".
NOTIFY_PAYLOAD_MAX = 7900
POLL_WITH_FEED_SECONDS = 1.0  # safety net: notifications lost on a reconnect
POLL_WITHOUT_FEED_SECONDS = 0.05  # the only way to learn the read model moved


@dataclass(frozen=True)
class BatchChange:
    """A committed projection batch: ``generation`` moved ``from_position → to_position``;
    ``skus`` are the SKUs whose positions it changed, ``None`` when anything may have changed
    (a channel policy, a rebuilt generation, a stretch another runner applied)."""

    generation: int
    from_position: int
    to_position: int
    skus: frozenset[str] | None

    def payload(self, scope: str) -> str:
        """The NOTIFY payload; ``scope`` names the read models (see :func:`scope_of`)."""
        text = json.dumps(
            {
                "n": scope,
                "g": self.generation,
                "f": self.from_position,
                "t": self.to_position,
                "s": sorted(self.skus) if self.skus is not None else None,
            },
            separators=(",", ":"),
        )
        if len(text.encode()) < NOTIFY_PAYLOAD_MAX:
            return text
        everything = BatchChange(self.generation, self.from_position, self.to_position, None)
        return everything.payload(scope)

    @classmethod
    def from_payload(cls, text: str, scope: str) -> BatchChange:
        """The change of a payload naming ``scope``; raises ValueError for a payload that is
        no change (e.g. from an older projection process) and :class:`ForeignChange` for a
        change of other read models sharing the channel."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError(f"not a change: {text[:80]!r}")
            if data["n"] != scope:
                raise ForeignChange(data["n"])
            skus = data["s"]
            return cls(
                int(data["g"]),
                int(data["f"]),
                int(data["t"]),
                frozenset(str(s) for s in skus) if skus is not None else None,
            )
        except (TypeError, KeyError) as error:
            raise ValueError(f"not a change: {text[:80]!r}") from error


class ForeignChange(Exception):
    """A NOTIFY payload of other read models (another schema or prefix)."""


def scope_of(schema: str, prefix: str) -> str:
    """Read models of several schemas may share a database and so the NOTIFY channel."""
    return f"{schema}/{prefix}"


@dataclass(frozen=True)
class CachedInputs:
    position: int
    states: list[ProjectedPosition]
    terms: PolicyTerms


class AvailabilityCache:
    """Thread-safe: fed from the runner's or a listener's thread, read on the event loop."""

    def __init__(self, max_skus: int) -> None:
        self.max_skus = max_skus
        self._lock = threading.Lock()
        self._skus: OrderedDict[str, list[ProjectedPosition]] = OrderedDict()
        self._terms: OrderedDict[str, PolicyTerms] = OrderedDict()
        self._generation = 0
        self._position: int | None = None  # None: empty, no position vouched for
        self._seen: tuple[int, int] | None = None  # newest (generation, position) announced
        self._pending: int | None = None  # poll: a position the feed must reach by next tick
        self._fed = False  # a change feed is attached: the cache may serve
        self._feed_names_skus = True  # False: the poll alone (any move empties the cache)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hits = 0
        self.misses = 0
        self.resets = 0

    @property
    def enabled(self) -> bool:
        return self.max_skus > 0

    @property
    def position(self) -> int | None:
        return self._position

    def __len__(self) -> int:
        return len(self._skus)

    # ---- feeds --------------------------------------------------------------------------------

    def follow(self, generation: int, position: int) -> None:
        """A feed naming every batch from ``(generation, position)`` on is attached (the
        in-process runner: call after registering :meth:`apply` as its change listener)."""
        with self._lock:
            self._note_seen(generation, position)
            self._fed = self.enabled

    def poll(
        self,
        tracking: Callable[[], tuple[int, int]],
        *,
        feed: bool,
    ) -> None:
        """Start the poll of the read model's ``tracking()`` → (generation, applied position).
        ``feed``: NOTIFY payloads are passed to :meth:`apply_payload` (else the poll is all)."""
        if not self.enabled:
            return
        with self._lock:
            self._fed = True
            self._feed_names_skus = feed
        seconds = POLL_WITH_FEED_SECONDS if feed else POLL_WITHOUT_FEED_SECONDS
        self._thread = threading.Thread(
            target=self._poll_loop, args=(tracking, seconds), name="availability-cache", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _poll_loop(self, tracking: Callable[[], tuple[int, int]], seconds: float) -> None:
        while not self._stop.wait(seconds):
            try:
                generation, applied = tracking()
            except Exception as error:  # the database is away: serve what we vouch for
                log.warning("availability cache: cannot read the tracking position: %s", error)
                continue
            self.check(generation, applied)

    def apply_payload(self, text: str, scope: str) -> None:
        """A NOTIFY of the read models' channel (the listener's thread)."""
        try:
            change = BatchChange.from_payload(text, scope)
        except ForeignChange:
            return
        except ValueError:
            self.clear()  # some batch committed; which SKUs it changed is unknown
            return
        self.apply(change)

    def apply(self, change: BatchChange) -> None:
        with self._lock:
            if self._position is None:
                self._note_seen(change.generation, change.to_position)
                return
            if change.generation != self._generation:
                self._reset(change.generation, change.to_position)
                return
            if change.to_position <= self._position:
                return  # already in what the cache holds (it adopted a newer read)
            if change.from_position != self._position:
                self._reset(change.generation, change.to_position)  # a batch went unseen
                return
            if change.skus is None:
                self._skus.clear()
                self._terms.clear()
            else:
                for sku in change.skus:
                    self._skus.pop(sku, None)
            self._position = change.to_position

    def check(self, generation: int, applied: int) -> None:
        """The poll read the tracking row: empty the cache if it cannot vouch any more."""
        with self._lock:
            position = self._position
            if position is None:
                self._note_seen(generation, applied)
                return
            if generation != self._generation or applied < position:
                self._reset(generation, applied)
            elif not self._feed_names_skus:
                if applied > position:
                    self._reset(generation, applied)
            elif self._pending is not None and position < self._pending:
                # The last tick saw a batch the feed has still not announced: it was lost.
                self._reset(generation, applied)
            else:
                self._pending = applied if applied > position else None

    def clear(self) -> None:
        with self._lock:
            self._reset(None, None)

    def _reset(self, generation: int | None, position: int | None) -> None:
        self._skus.clear()
        self._terms.clear()
        self._position = None
        self._pending = None
        self.resets += 1
        if generation is not None and position is not None:
            self._note_seen(generation, position)

    def _note_seen(self, generation: int, position: int) -> None:
        if self._seen is None or (generation, position) > self._seen:
            self._seen = (generation, position)

    # ---- reads --------------------------------------------------------------------------------

    def lookup(self, sku: str, channel: str, min_position: int) -> CachedInputs | None:
        """The cached inputs of ``sku`` in ``channel`` if they satisfy ``min_position``."""
        with self._lock:
            position = self._position
            if position is None or min_position > position:
                self.misses += 1
                return None
            states = self._skus.get(sku)
            terms = self._terms.get(channel)
            if states is None or terms is None:
                self.misses += 1
                return None
            self._skus.move_to_end(sku)
            self._terms.move_to_end(channel)
            self.hits += 1
            return CachedInputs(position, states, terms)

    def fill(
        self,
        generation: int,
        position: int,
        sku: str,
        states: list[ProjectedPosition],
        channel: str,
        terms: PolicyTerms,
    ) -> bool:
        """Store what a read of the read model at ``(generation, position)`` found. The states
        must not be changed afterwards. False when the read cannot be vouched for."""
        with self._lock:
            if not self._fed:
                return False
            if self._position is None:
                if self._seen is not None and (generation, position) < self._seen:
                    return False  # older than a batch the feed already announced
                self._generation, self._position = generation, position
            elif (generation, position) != (self._generation, self._position):
                return False
            self._skus[sku] = states
            self._skus.move_to_end(sku)
            while len(self._skus) > self.max_skus:
                self._skus.popitem(last=False)
            self._terms[channel] = terms
            self._terms.move_to_end(channel)
            while len(self._terms) > MAX_CHANNELS:
                self._terms.popitem(last=False)
            return True
