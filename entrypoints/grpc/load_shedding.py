"""Load shedding for unary calls: refuse at once what could not be answered in time.

At twice its capacity a server that admits every call builds a backlog that every call, old
and new, waits through: in the bench nearly every call then timed out (DEADLINE_EXCEEDED
after the server had done its work) instead of half of them succeeding. The backlog is not
where the server can count it: with the interpreter busy, calls wait in gRPC's own queues
and arrive at the handler with most of their deadline spent. So a call is judged on
arrival by the time it has left:

- less than twice the recent in-process latency (admission to answer), it could not be
  answered in time: refused;
- less than twice the time the calls already in flight need to drain (``in flight /
  capacity``, capacity being the best completion rate seen recently, decaying slowly so a
  quiet spell does not make the server look slow): refused.

While nothing is in flight and nothing was answered for longer than the latency estimate,
one call is let through whatever the estimate says: only a completed call refreshes it.

A refusal costs a fraction of a served call, so refusing the late ones drains the backlog
and the server settles where the calls it admits finish in time (in the bench's saturation
run: about half the offered calls answered, the rest refused, none timed out). A refused
call gets RESOURCE_EXHAUSTED / SERVER_OVERLOADED with a RetryInfo, before any work: a retry,
here or on another replica, can succeed, and nothing was half done. A hard cap on calls in
flight bounds the work admitted for callers without a deadline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import grpc
from grpc_status import rpc_status

from entrypoints.grpc.errors import ServerOverloaded, status_for
from ledger.metrics.definitions import RPC_ERRORS

# The logger name its lines had before the edge left ledger/ (ledger/api/), kept for
# log filters and alerts (docs/decisions.md, issue 18).
log = logging.getLogger("ledger.api.load_shedding")

WINDOW_SECONDS = 0.25
# Per window, a remembered capacity keeps this much of itself (half-life about 17 s).
CAPACITY_DECAY = 0.99
# The wait may use this share of the time left: the call's own work needs the rest.
WAIT_SHARE = 0.5
# Refusals are summed up in one log line at most this often.
SUMMARY_SECONDS = 10.0
# Weight of the newest call in the latency average.
LATENCY_SMOOTHING = 0.05


class LoadShedder:
    """Event-loop thread only (no locks)."""

    def __init__(self, max_in_flight: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._clock = clock
        self._capacity = 0.0  # completions per second; 0 = not measured yet
        self._latency = 0.0  # seconds from admission to answer, recent average
        self._refused = 0
        self._summarised = clock()
        self._window_start = clock()
        self._window_done = 0
        self._window_idle = True
        self._last_done = clock()
        self._probe_started: float | None = None

    def admit(self, time_remaining: float | None) -> float:
        """Count the call in and return its start time (for ``done``), or raise
        ServerOverloaded."""
        if self.in_flight >= self.max_in_flight:
            raise self._refusal(
                f"the server is at its limit of {self.max_in_flight} calls in flight",
                self.expected_wait() or 0.05,
            )
        if time_remaining is not None:
            needed = max(self._latency, self.expected_wait())
            if needed > time_remaining * WAIT_SHARE:
                if not self._probe_due():
                    raise self._refusal(
                        "calls arrive with too little of their deadline left", needed
                    )
                self.in_flight += 1
                self._probe_started = self._clock()
                return self._probe_started
        self.in_flight += 1
        return self._clock()

    def _probe_due(self) -> bool:
        """Nothing in flight and nothing answered for longer than the latency estimate: the
        estimate can only be refreshed by a call that completes, so one is let through.
        Without this a server whose latency once rose past half its callers' deadlines
        refused every call from then on (a bench saturation figure: 25,541 calls, none
        answered, the server idle)."""
        if self.in_flight:
            return False
        return self._clock() - self._last_done >= max(self._latency, WINDOW_SECONDS)

    def _refusal(self, why: str, retry_after_seconds: float) -> ServerOverloaded:
        self._refused += 1
        now = self._clock()
        if now - self._summarised >= SUMMARY_SECONDS:
            log.warning(
                "overloaded: refused %d calls in the last %.0f s (%s)",
                self._refused,
                now - self._summarised,
                why,
            )
            self._refused, self._summarised = 0, now
        return ServerOverloaded(why, retry_after_seconds)

    def done(self, started: float) -> None:
        self.in_flight -= 1
        self._window_done += 1
        now = self._clock()
        self._last_done = now
        if started == self._probe_started:
            # A probe's answer replaces the stale estimate (averaging it in would take
            # dozens of probes, one at a time, to undo a spike).
            self._latency, self._probe_started = now - started, None
        else:
            self._latency += LATENCY_SMOOTHING * ((now - started) - self._latency)
        if self.in_flight == 0:
            self._window_idle = True
        elapsed = now - self._window_start
        if elapsed >= WINDOW_SECONDS:
            # Only a window the server was busy throughout measures what it can do; in a
            # quiet one the rate is the demand (one call in five seconds is not capacity).
            if not self._window_idle:
                rate = self._window_done / elapsed
                self._capacity = max(rate, self._capacity * CAPACITY_DECAY)
            self._window_start, self._window_done = now, 0
            self._window_idle = self.in_flight == 0

    def expected_wait(self) -> float:
        """Seconds until the calls in flight have drained at the recent capacity."""
        if self._capacity <= 0:
            return 0.0
        return self.in_flight / self._capacity


# Refusal statuses by retry delay (ms), built once: composing and serialising the
# google.rpc.Status of every refused call cost as much as serving one.
_SHED_STATUS: dict[int, tuple[grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]] = {}


async def shed(refusal: ServerOverloaded, context: grpc.aio.ServicerContext) -> None:
    """Abort a refused call with its (cached) RESOURCE_EXHAUSTED status."""
    delay_ms = _bucket_ms(refusal.retry_after_seconds)
    cached = _SHED_STATUS.get(delay_ms)
    if cached is None:
        generic = ServerOverloaded("the server is overloaded", delay_ms / 1000)
        status = rpc_status.to_status(status_for(generic, ""))
        cached = (status.code, status.details, tuple(status.trailing_metadata))
        _SHED_STATUS[delay_ms] = cached
    RPC_ERRORS.labels(refusal.reason).inc()
    code, details, trailing = cached
    await context.abort(code, details, trailing)


def _bucket_ms(seconds: float) -> int:
    """The retry delay rounded up to a power of two milliseconds (16 ms to about 4 s)."""
    milliseconds = 16
    while milliseconds < seconds * 1000 and milliseconds < 4096:
        milliseconds *= 2
    return milliseconds
