"""Keep the shop's published stock equal to the ledger's ``channel_available``.

Three loops, each on its own thread, around one piece of state (:class:`StockBook`):

* **watch** — ``WatchAvailability(channel, skus)``; every value goes into the book. When the
  stream ends (server restart: ``UNAVAILABLE``; overflow; network) the loop waits a jittered,
  growing back-off and watches again. A new watch starts with the *current* value of every SKU,
  so whatever changed while nobody watched is in its first messages: no update is lost.
* **reconcile** — every ``reconcile_seconds``, ``GetAvailability`` for every SKU into the book:
  a safety net for anything the watch could not say (a bug, a proxy that silently dropped the
  stream, a value the shop lost on its side).
* **publish** — pushes the book's newest value of each SKU whose published value differs to
  the shop, coalescing (only the newest value goes out, however many changes came in) and
  retrying with back-off while the shop is down. The watch never waits on the shop, so a slow
  shop can never make the ledger end the stream for falling behind.

Order of values: each value carries the ledger position it reflects. The book keeps a value
only if its position is not older than the one it holds, so a slow reconciliation read can
never overwrite a newer watched value. The first values of a new watch are taken as they
come (they are the current state by definition, even if the ledger was restored from a
backup with lower positions).
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from storefront_connector.ledger import (
    LedgerError,
    LedgerGateway,
    LedgerUnavailable,
    StockLevel,
    WatchStream,
)

log = logging.getLogger(__name__)

RECONCILE_SECONDS = 60.0
BACKOFF_INITIAL_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 5.0
PUBLISH_BACKOFF_MAX_SECONDS = 10.0
SKUS_PER_WATCH_MAX = 1000  # the ledger's limit per WatchAvailability


class ShopUnavailable(Exception):
    """Raised by a :class:`Storefront` when the shop cannot take the update now."""


class Storefront(Protocol):
    """What the sync needs of a shop: set the stock it shows for one SKU (idempotent)."""

    def publish_stock(self, sku: str, available: int) -> None: ...


@dataclass
class SkuState:
    wanted: int | None = None  # newest channel_available from the ledger
    position: int = -1  # ledger position of ``wanted``
    published: int | None = None  # what the shop last confirmed


class StockBook:
    """Newest ledger value and last published value per SKU (thread-safe)."""

    def __init__(self, skus: Sequence[str]) -> None:
        self._lock = threading.Condition()
        self._skus = {sku: SkuState() for sku in skus}

    def observe(self, level: StockLevel, *, fresh_watch: bool = False) -> bool:
        """Take ``level`` unless it is older than what the book holds; True if taken."""
        with self._lock:
            state = self._skus.get(level.sku)
            if state is None:
                return False
            if not fresh_watch and level.projection_position < state.position:
                return False
            state.position = level.projection_position
            if state.wanted != level.channel_available:
                state.wanted = level.channel_available
                self._lock.notify_all()
            return True

    def due(self) -> dict[str, int]:
        """SKUs whose shop value differs from the ledger's, with the value to publish."""
        with self._lock:
            return {
                sku: s.wanted
                for sku, s in self._skus.items()
                if s.wanted is not None and s.wanted != s.published
            }

    def published(self, sku: str, value: int) -> None:
        with self._lock:
            self._skus[sku].published = value
            self._lock.notify_all()

    def wait_for_work(self, timeout: float) -> None:
        """Block until some SKU is due for publishing (or ``timeout``, or :meth:`wake`)."""
        with self._lock:
            if not self.due():  # the condition's lock is re-entrant
                self._lock.wait(timeout)

    def wake(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def snapshot(self) -> dict[str, SkuState]:
        with self._lock:
            return {
                sku: SkuState(s.wanted, s.position, s.published) for sku, s in self._skus.items()
            }


def backoff_seconds(attempt: int, initial: float, ceiling: float) -> float:
    """Exponential back-off with "equal jitter" (half fixed, half random), so that many
    connectors cut off by one server restart do not come back in lock-step."""
    upper = min(ceiling, initial * 2**attempt)
    return upper / 2 + random.uniform(0, upper / 2)


class StockSync:
    """The three loops. :meth:`start` once, :meth:`stop` once."""

    def __init__(
        self,
        ledger: LedgerGateway,
        shop: Storefront,
        channel: str,
        skus: Sequence[str],
        *,
        reconcile_seconds: float = RECONCILE_SECONDS,
        backoff_initial_seconds: float = BACKOFF_INITIAL_SECONDS,
        backoff_max_seconds: float = BACKOFF_MAX_SECONDS,
    ) -> None:
        unique = list(dict.fromkeys(skus))
        if not 1 <= len(unique) <= SKUS_PER_WATCH_MAX:
            raise ValueError(f"watch 1 to {SKUS_PER_WATCH_MAX} SKUs, not {len(unique)}")
        self.channel = channel
        self.skus = tuple(unique)
        self.book = StockBook(self.skus)
        self._ledger = ledger
        self._shop = shop
        self._reconcile_seconds = reconcile_seconds
        self._backoff_initial_seconds = backoff_initial_seconds
        self._backoff_max_seconds = backoff_max_seconds
        self._stopping = threading.Event()
        self._stream_lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._threads: list[threading.Thread] = []
        # Observability (read by the shop's /health and by tests).
        self.watching = threading.Event()  # a watch delivered its initial values
        self.watches_started = 0
        self.reconciliations = 0

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        for name, target in (
            ("watch", self._watch_loop),
            ("reconcile", self._reconcile_loop),
            ("publish", self._publish_loop),
        ):
            thread = threading.Thread(target=target, name=f"storefront-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._stream_lock:
            if self._stream is not None:
                self._stream.cancel()
        self.book.wake()
        for thread in self._threads:
            thread.join(timeout)

    def in_sync(self) -> bool:
        """Every SKU has a ledger value and the shop shows it."""
        return all(
            s.wanted is not None and s.wanted == s.published for s in self.book.snapshot().values()
        )

    # ---- watch ------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                stream = self._ledger.watch(self.channel, self.skus)
                with self._stream_lock:
                    if self._stopping.is_set():
                        stream.cancel()
                    self._stream = stream
                self.watches_started += 1
                owed = set(self.skus)  # SKUs whose initial value has not come yet
                for level in stream:
                    self.book.observe(level, fresh_watch=level.initial)
                    if owed:
                        owed.discard(level.sku)
                        if not owed:
                            self.watching.set()
                            attempt = 0  # caught up: the next outage starts afresh
                            log.info(
                                "watching %d SKU(s) of channel %s", len(self.skus), self.channel
                            )
            except LedgerUnavailable as error:
                log.warning("watch ended: %s; watching again", error)
            except LedgerError as error:
                # Refused (credentials, permissions, bad SKU): retrying at the longest back-off
                # keeps the connector alive for when the token file or config is fixed.
                log.error("watch refused: %s", error)
                attempt = max(attempt, 32)
            except Exception:  # a bug must not end the watch for good
                log.exception("watch failed")
                attempt = max(attempt, 32)
            finally:
                self.watching.clear()
                with self._stream_lock:
                    self._stream = None
            if self._stopping.is_set():
                return
            delay = backoff_seconds(
                attempt, self._backoff_initial_seconds, self._backoff_max_seconds
            )
            attempt += 1
            self._stopping.wait(delay)

    # ---- reconcile --------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Read every SKU with ``GetAvailability`` into the book; returns how many changed."""
        changed = 0
        for sku in self.skus:
            before = self.book.snapshot()[sku].wanted
            if self.book.observe(self._ledger.availability(self.channel, sku)):
                changed += self.book.snapshot()[sku].wanted != before
        self.reconciliations += 1
        if changed:
            log.warning("reconciliation changed %d SKU(s) the watch had not reported", changed)
        return changed

    def _reconcile_loop(self) -> None:
        while not self._stopping.wait(self._reconcile_seconds):
            try:
                self.reconcile()
            except LedgerError as error:
                log.warning(
                    "reconciliation failed: %s; next round in %.0f s",
                    error,
                    self._reconcile_seconds,
                )

    # ---- publish ----------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            due = self.book.due()
            if not due:
                self.book.wait_for_work(timeout=1.0)
                continue
            try:
                for sku, value in due.items():
                    self._shop.publish_stock(sku, value)
                    self.book.published(sku, value)
                attempt = 0
            except ShopUnavailable as error:
                delay = backoff_seconds(
                    attempt, self._backoff_initial_seconds, PUBLISH_BACKOFF_MAX_SECONDS
                )
                attempt += 1
                log.warning("shop unavailable (%s); publishing again in %.2f s", error, delay)
                self._stopping.wait(delay)
            except Exception:  # a shop adapter bug must not stop publishing for good
                log.exception("publishing to the shop failed")
                self._stopping.wait(self._backoff_max_seconds)
