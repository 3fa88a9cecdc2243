"""The load-generator worker: ``python -m tools.bench.loadgen`` (started by ``driver``).

It runs in a process of its own so the clients never share a GIL with the orchestrator or a
server. Protocol on stdin/stdout, one JSON object per line:

    parent -> {"job": {...}}     worker -> {"ready": true}     (channels up, requests built)
    parent -> {"go": true}       worker -> {"result": {...}}
    parent -> {"exit": true}     (or EOF)

The ready/go handshake lets several workers start a job at the same instant. Many
coroutines share a few channels (each its own TCP connection); requests are serialised
before ``go``; a latency is one float appended to a list.

Job fields: ``kind`` (see ``payloads``), ``params``, ``targets`` (HOST:PORT, calls spread
over them), ``channels`` (per target), ``mode`` ``closed`` (``concurrency`` calls in flight)
or ``open`` (``rate`` arrivals/s, at most ``max_in_flight``), ``warmup`` and ``seconds``
(only calls completing inside the measured window count; see ``closed_loop`` for when it
opens), ``timeout`` (per-call deadline), ``prebuild`` (requests serialised up front),
``tag`` (unique ids), ``cancel_tail`` (closed loop: cancel the calls still in flight when
the window closes), ``settle_max`` (closed loop: longest wait past the warmup for every
client's first answer).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import grpc

from tools.bench.payloads import Payloads, payloads

# Outcomes after which the write may or may not have happened: the oversell check allows
# for their quantity instead of assuming either way.
AMBIGUOUS = frozenset({"DEADLINE_EXCEEDED", "UNAVAILABLE", "CANCELLED", "UNKNOWN", "INTERNAL"})
SETTLE_MAX_SECONDS = 30.0  # closed loop: open the window by then even if a client is stuck
CHANNEL_OPTIONS = [
    # Without this, channels to one target share one subchannel (one TCP connection).
    ("grpc.use_local_subchannel_pool", 1),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class Requests:
    """Pre-serialised requests; past the prebuilt ones (a faster run than expected) the rest
    are built on demand, and reads cycle over their few distinct requests."""

    def __init__(self, source: Payloads, prebuild: int) -> None:
        self.source = source
        count = source.distinct if source.reusable else prebuild
        self._built = [source.build(i) for i in range(count)]

    def __getitem__(self, i: int) -> bytes:
        if self.source.reusable:
            return self._built[i % len(self._built)]
        return self._built[i] if i < len(self._built) else self.source.build(i)


class Tally:
    """What one job saw. Window counts cover calls completed inside the measured window;
    quantities cover every call (the oversell check needs all of them)."""

    def __init__(self, measure_from: float, measure_to: float) -> None:
        self.measure_from = measure_from
        self.measure_to = measure_to
        self.codes: Counter[str] = Counter()
        self.latencies_ms: list[float] = []
        self.ok_qty = 0
        self.ambiguous_qty = 0
        self.calls = 0

    def add(self, started: float, finished: float, code: str, qty: int, counted_at: float) -> None:
        self.calls += 1
        if code == "OK":
            self.ok_qty += qty
        elif code in AMBIGUOUS:
            self.ambiguous_qty += qty
        if self.measure_from <= counted_at <= self.measure_to:
            self.codes[code] += 1
            if code == "OK":
                self.latencies_ms.append(round((finished - started) * 1e3, 3))


async def _call(invoke: Callable[..., Any], request: bytes, timeout: float) -> str:
    try:
        await invoke(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        return error.code().name
    return "OK"


async def closed_loop(job: dict[str, Any], invokers: list[Any], requests: Requests) -> Tally:
    """``concurrency`` clients, each calling again as soon as it is answered. The window
    opens after the warmup AND once every client has had an answer (steady state: with a
    slow service, the first answers can take longer than a short warmup), at the latest
    ``settle_max`` seconds after the warmup."""
    begin = time.perf_counter()
    seconds = float(job["seconds"])
    earliest = begin + float(job["warmup"])
    tally = Tally(math.inf, math.inf)
    numbers = itertools.count()
    timeout = float(job["timeout"])
    qty_of = requests.source.qty_of
    concurrency = int(job["concurrency"])
    in_flight: dict[int, int] = {}  # client -> units its current call asks for
    answered: set[int] = set()
    window_open = asyncio.Event()

    def open_window() -> None:
        if not window_open.is_set():
            tally.measure_from = max(earliest, time.perf_counter())
            tally.measure_to = tally.measure_from + seconds
            window_open.set()

    async def client(k: int) -> None:
        invoke = invokers[k % len(invokers)]
        while True:
            i = next(numbers)
            request = requests[i]
            started = time.perf_counter()
            if started >= tally.measure_to:
                return
            in_flight[k] = qty_of(i)
            code = await _call(invoke, request, timeout)
            del in_flight[k]
            finished = time.perf_counter()
            # Throughput counts completions inside the window.
            tally.add(started, finished, code, qty_of(i), finished)
            if len(answered) < concurrency:
                answered.add(k)
                if len(answered) == concurrency:
                    loop.call_at(loop.time() + max(0.0, earliest - finished), open_window)

    loop = asyncio.get_running_loop()
    settle_max = float(job.get("settle_max", SETTLE_MAX_SECONDS))
    loop.call_at(loop.time() + float(job["warmup"]) + settle_max, open_window)
    clients = [asyncio.create_task(client(k)) for k in range(concurrency)]
    if job.get("cancel_tail"):
        # Quick runs: the calls still in flight when the window closes count for nothing,
        # so do not wait for them; what they asked for may or may not have been reserved.
        await window_open.wait()
        remaining = tally.measure_to - time.perf_counter()
        await asyncio.wait(clients, timeout=max(0.0, remaining) + 0.05)
        for task in clients:
            task.cancel()
        await asyncio.gather(*clients, return_exceptions=True)
        tally.ambiguous_qty += sum(in_flight.values())
    else:
        await asyncio.gather(*clients)
    return tally


async def open_loop(
    job: dict[str, Any], invokers: list[Any], requests: Requests
) -> tuple[Tally, dict[str, Any]]:
    """Fixed arrival rate, whatever the answers do (no coordinated omission): latency runs
    from the scheduled arrival, and arrivals are counted in the window they were due."""
    rate = float(job["rate"])
    cap = int(job.get("max_in_flight", 4096))
    timeout = float(job["timeout"])
    begin = time.perf_counter()
    measure_from = begin + job["warmup"]
    measure_to = measure_from + job["seconds"]
    tally = Tally(measure_from, measure_to)
    qty_of = requests.source.qty_of
    tasks: set[asyncio.Task[None]] = set()
    lags: list[float] = []
    dropped = 0

    async def one(i: int, due: float) -> None:
        code = await _call(invokers[i % len(invokers)], requests[i], timeout)
        tally.add(due, time.perf_counter(), code, qty_of(i), due)

    n = 0
    while True:
        now = time.perf_counter()
        if now >= measure_to:
            break
        while n < int((now - begin) * rate) + 1:
            due = begin + n / rate
            if len(tasks) >= cap:
                if measure_from <= due <= measure_to:
                    dropped += 1  # the client could not keep up: reported, never hidden
            else:
                lags.append(now - due)
                task = asyncio.create_task(one(n, due))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            n += 1
        await asyncio.sleep(max(0.0005, begin + n / rate - time.perf_counter()))
    if tasks:
        await asyncio.gather(*tasks)
    lags.sort()
    extra = {
        "dropped": dropped,
        "schedule_lag_p99_ms": round(lags[int(0.99 * (len(lags) - 1))] * 1e3, 3) if lags else 0,
    }
    return tally, extra


async def run_job(job: dict[str, Any], ready: Callable[[], Any]) -> dict[str, Any]:
    source = payloads(job["kind"], job["params"], job["tag"])
    requests = Requests(source, int(job.get("prebuild", 20_000)))
    channels = [
        grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        for target in job["targets"]
        for _ in range(int(job.get("channels", 2)))
    ]
    try:
        await asyncio.gather(*(channel.channel_ready() for channel in channels))
        # No serializers: bytes go out as they are and answers stay undecoded.
        invokers = [channel.unary_unary(source.method) for channel in channels]
        await ready()
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        extra: dict[str, Any] = {}
        if job["mode"] == "open":
            tally, extra = await open_loop(job, invokers, requests)
        else:
            tally = await closed_loop(job, invokers, requests)
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return {
        "codes": dict(tally.codes),
        "latencies_ms": tally.latencies_ms,
        "window_s": job["seconds"],
        "ok_qty": tally.ok_qty,
        "ambiguous_qty": tally.ambiguous_qty,
        "calls": tally.calls,
        "cpu_s": round(cpu, 3),
        "wall_s": round(wall, 3),
        **extra,
    }


def _send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def _serve() -> None:
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            return
        message = json.loads(line)
        if "exit" in message:
            return

        async def ready() -> None:
            _send({"ready": True})
            go = await asyncio.to_thread(sys.stdin.readline)
            if not go or "go" not in json.loads(go):
                raise SystemExit(0)

        try:
            result = await run_job(message["job"], ready)
        except Exception as error:  # reported to the parent, which fails the figure
            _send({"error": f"{type(error).__name__}: {error}"})
            continue
        _send({"result": result})


def main() -> None:
    asyncio.run(_serve())


if __name__ == "__main__":
    main()
