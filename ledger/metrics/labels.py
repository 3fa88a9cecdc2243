"""The bounded values of the two labels that name what operators configure.

Labels are bounded by the code, never by the data: no SKU, location, principal or message id
ever becomes a label value. Two labels are the exception, bounded by :class:`BoundedValues`:
``channel`` (sales channels, :data:`CHANNELS`) and ``source`` (publishing systems,
:data:`SOURCES`). Either takes the values listed in ``LEDGER_METRICS_CHANNELS`` /
``LEDGER_METRICS_SOURCES`` (``--metrics-channels`` / ``--metrics-sources``) or, unset, the
first :data:`UNLISTED_VALUES_MAX` distinct values the process sees; every other value is
counted as :data:`OTHER`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable

from ledger.config import ConfigError

# The subsystem's name, not the module's: docs/operations.md quotes it in log lines.
log = logging.getLogger("ledger.metrics")

# The label value of every channel or source beyond the bounded set. Parentheses are not
# allowed in channel names or sources, so it never collides with a real one.
OTHER = "(other)"
# Of a dead letter whose source neither its payload nor its subject tells (its DLQ subject
# is inventory.dlq._invalid).
UNKNOWN_SOURCE = "(invalid)"
# Unlisted: how many distinct values a process gives their own label value before OTHER.
UNLISTED_VALUES_MAX = 20
_LISTABLE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class BoundedValues:
    """The label values a data-named label (``channel``, ``source``) may take: the operator's
    list (:meth:`configure`) or, without one, the first ``limit`` distinct values seen; any
    other value becomes :data:`OTHER`. Thread-safe (the writer thread and the event loop both
    count). ``on_admit`` is called once per admitted value (to export its series at 0)."""

    def __init__(self, what: str, limit: int = UNLISTED_VALUES_MAX) -> None:
        self.what = what
        self.limit = limit
        self._listed: frozenset[str] | None = None
        self._seen: set[str] = set()
        self._warned = False
        self._lock = threading.Lock()
        self._on_admit: list[Callable[[str], None]] = []

    def on_admit(self, callback: Callable[[str], None]) -> None:
        with self._lock:
            self._on_admit.append(callback)
            admitted = sorted(self._seen)
        for value in admitted:
            callback(value)

    def configure(self, values: Iterable[str] | None) -> None:
        """Only ``values`` (and OTHER) from now on; ``None``: the first ``limit`` seen."""
        listed = None if values is None else frozenset(values)
        with self._lock:
            self._listed = listed
            self._seen = set(listed or ())
            self._warned = False
            callbacks = list(self._on_admit)
        for value in sorted(listed or ()):
            for callback in callbacks:
                callback(value)

    def __call__(self, value: str) -> str:
        if value in self._seen:  # the hot path: a set lookup, no lock
            return value
        with self._lock:
            if value in self._seen:
                return value
            if self._listed is not None or len(self._seen) >= self.limit:
                if not self._warned and self._listed is None:
                    self._warned = True
                    log.warning(
                        "more than %d %ss seen: further ones are counted as %s in the metrics"
                        " (list them in LEDGER_METRICS_%sS)",
                        self.limit,
                        self.what,
                        OTHER,
                        self.what.upper(),
                    )
                return OTHER
            self._seen.add(value)
            callbacks = list(self._on_admit)
        for callback in callbacks:
            callback(value)
        return value


def parse_label_list(text: str, what: str) -> tuple[str, ...] | None:
    """``LEDGER_METRICS_CHANNELS`` / ``LEDGER_METRICS_SOURCES``: comma-separated values;
    empty or unset is ``None`` (the first :data:`UNLISTED_VALUES_MAX` seen)."""
    values = tuple(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    for value in values:
        if not _LISTABLE.fullmatch(value):
            raise ConfigError(f"metrics {what} {value!r} is not a valid {what} name")
    return values or None


CHANNELS = BoundedValues("channel")
SOURCES = BoundedValues("source")


def configure_labels(channels: str = "", sources: str = "") -> None:
    """Apply ``LEDGER_METRICS_CHANNELS`` / ``LEDGER_METRICS_SOURCES`` (ConfigError if bad)."""
    CHANNELS.configure(parse_label_list(channels, "channel"))
    SOURCES.configure(parse_label_list(sources, "source"))
