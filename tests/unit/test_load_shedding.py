"""Load shedding (entrypoints.grpc.load_shedding): a call is refused on arrival when the time it
has left could not cover the server's recent latency or the drain of the calls in flight."""

from __future__ import annotations

import pytest

from entrypoints.grpc.errors import ServerOverloaded
from entrypoints.grpc.load_shedding import LoadShedder, _bucket_ms


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _served(shedder: LoadShedder, clock: FakeClock, calls: int, each: float) -> None:
    """``calls`` calls admitted and answered one after another, ``each`` seconds apiece."""
    for _ in range(calls):
        started = shedder.admit(None)
        clock.now += each
        shedder.done(started)


def test_a_fresh_server_admits_whatever_the_deadline() -> None:
    shedder = LoadShedder(10, FakeClock())
    shedder.admit(0.001)
    shedder.admit(None)
    assert shedder.in_flight == 2


def test_a_call_left_less_than_twice_the_recent_latency_is_refused() -> None:
    clock = FakeClock()
    shedder = LoadShedder(1000, clock)
    _served(shedder, clock, 200, 0.2)  # the latency average converges on 0.2 s
    with pytest.raises(ServerOverloaded) as refused:
        shedder.admit(0.3)
    assert refused.value.reason == "SERVER_OVERLOADED"
    assert 0.1 < refused.value.retry_after_seconds <= 0.2
    shedder.admit(0.5)  # enough time: admitted
    assert shedder.in_flight == 1


def test_a_stale_latency_lets_one_call_through_to_refresh_it() -> None:
    """Only completed calls update the latency: a server that refuses everything on an old,
    high estimate must still let one call through once it has been quiet that long."""
    clock = FakeClock()
    shedder = LoadShedder(1000, clock)
    _served(shedder, clock, 200, 0.8)  # latency about 0.8 s: above half a 1 s deadline
    with pytest.raises(ServerOverloaded):
        shedder.admit(1.0)
    clock.now += 0.5  # quiet, but not yet for as long as the estimate
    with pytest.raises(ServerOverloaded):
        shedder.admit(1.0)
    clock.now += 0.4
    probe = shedder.admit(1.0)  # nothing in flight, nothing answered for 0.9 s: a probe
    with pytest.raises(ServerOverloaded):
        shedder.admit(1.0)  # one at a time
    clock.now += 0.01
    shedder.done(probe)
    assert shedder.in_flight == 0
    shedder.admit(1.0)  # the probe's 10 ms replaced the stale estimate: admitted at once
    assert shedder.in_flight == 1


def test_a_crowd_in_flight_that_needs_longer_than_the_deadline_allows_refuses_it() -> None:
    clock = FakeClock()
    shedder = LoadShedder(10_000, clock)
    # Capacity measured at 1,000 answers a second (each quick: latency ~1 ms), while the
    # server was never idle (one long call stays in flight throughout).
    shedder.admit(None)
    _served(shedder, clock, 1000, 0.001)
    for _ in range(400):
        shedder.admit(None)  # 400 in flight: about 0.4 s to drain
    with pytest.raises(ServerOverloaded):
        shedder.admit(0.6)
    shedder.admit(1.0)
    assert shedder.in_flight == 402


def test_the_hard_cap_applies_to_callers_without_a_deadline() -> None:
    shedder = LoadShedder(3, FakeClock())
    for _ in range(3):
        shedder.admit(None)
    with pytest.raises(ServerOverloaded, match="limit of 3 calls in flight"):
        shedder.admit(None)


def test_retry_delays_are_bucketed_for_the_cached_statuses() -> None:
    assert _bucket_ms(0.0) == 16
    assert _bucket_ms(0.1) == 128
    assert _bucket_ms(0.128) == 128
    assert _bucket_ms(60.0) == 4096


def test_a_quiet_spell_is_not_taken_for_the_servers_capacity() -> None:
    """One call in five seconds is the demand, not what the server can do: a crowd after
    it is not refused on that account (a regression: a 64-call burst with 30 s deadlines
    was refused after a quiet start)."""
    clock = FakeClock()
    shedder = LoadShedder(10_000, clock)
    _served(shedder, clock, 3, 5.0)  # idle windows between single calls
    clock.now += 0.001
    shedder._latency = 0.0  # the crowd's own latency is not what this test is about
    for _ in range(64):
        shedder.admit(30.0)
    assert shedder.in_flight == 64
