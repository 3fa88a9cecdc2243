"""Retry policy: which failures are retried, and how long to wait between attempts.

Only ``UNAVAILABLE`` and ``ABORTED`` are retried (:data:`RETRYABLE_CODES`); that set is not
configurable. Every other status is a real answer: retrying ``INVALID_ARGUMENT`` or
``INSUFFICIENT_AVAILABILITY`` changes nothing, ``DEADLINE_EXCEEDED`` means the caller's time is
up, and ``RESOURCE_EXHAUSTED`` (rate limit) is the server asking the caller to slow down.

Retrying a write is safe because each logical call carries one ``request_id`` (or, for
``RecordMovements``, the movements' ``(source, message_id)``) that every attempt repeats: the
ledger applies it once and answers every repeat with the first result.

Back-off is exponential with *full jitter*: before attempt ``n + 1`` the client sleeps a
uniformly random time in ``[0, min(max_backoff, initial_backoff * multiplier ** (n - 1))]``.
When the server says how long to wait (``google.rpc.RetryInfo``, e.g. 1 s when its database is
down) the client waits at least that long. Attempts never outlive the call's deadline: a
back-off that would end past the deadline is not taken and the last error is raised.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

RETRYABLE_CODES: frozenset[grpc.StatusCode] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED}
)


@dataclass(frozen=True)
class RetryPolicy:
    """How a logical call is retried.

    Attributes:
        max_attempts: attempts in all, the first one included (1 disables retries);
            ``None`` retries until the deadline (used for reconnecting streams).
        initial_backoff: cap of the first back-off, in seconds.
        max_backoff: cap of any back-off, in seconds (the server's ``RetryInfo`` may exceed it).
        multiplier: growth of the cap per attempt.
        honour_retry_info: wait at least the server's ``RetryInfo.retry_delay``.
        random: the jitter source, ``() -> float in [0, 1)`` (injectable for tests).
    """

    max_attempts: int | None = 5
    initial_backoff: float = 0.05
    max_backoff: float = 2.0
    multiplier: float = 2.0
    honour_retry_info: bool = True
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1 (or None)")
        if self.initial_backoff < 0 or self.max_backoff < 0 or self.multiplier < 1:
            raise ValueError("back-offs must be >= 0 and multiplier >= 1")

    @classmethod
    def no_retries(cls) -> RetryPolicy:
        return cls(max_attempts=1)

    @classmethod
    def reconnecting(cls) -> RetryPolicy:
        """For long-lived streams: retry without limit, 0.1 s growing to 5 s."""
        return cls(max_attempts=None, initial_backoff=0.1, max_backoff=5.0)

    @staticmethod
    def retryable(code: grpc.StatusCode) -> bool:
        return code in RETRYABLE_CODES

    def allows_another(self, attempts_made: int) -> bool:
        return self.max_attempts is None or attempts_made < self.max_attempts

    def backoff(self, attempts_made: int, retry_after: float | None = None) -> float:
        """Seconds to sleep after ``attempts_made`` failed attempts (``>= 1``)."""
        exponent = max(attempts_made - 1, 0)
        try:
            cap = min(self.max_backoff, self.initial_backoff * self.multiplier**exponent)
        except OverflowError:
            cap = self.max_backoff
        delay = self.random() * cap
        if self.honour_retry_info and retry_after is not None:
            delay = max(delay, retry_after)
        return delay


DEFAULT_RETRY = RetryPolicy()

__all__ = ["DEFAULT_RETRY", "RETRYABLE_CODES", "RetryPolicy"]
