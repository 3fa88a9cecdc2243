"""Connecting the CLI to NATS: one attempt for the one-shot tools, patient retries for the
long-running processes, and one log line per failed attempt (never nats-py's traceback).

nats-py retries a lone server forever when ``max_reconnect_attempts`` is 0 or negative, and its
default error callback logs a traceback per attempt; both are replaced here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

from ledger.logs import RETRY_FIRST_SECONDS, retry_delay

log = logging.getLogger("ledger.nats")

T = TypeVar("T")

# A one-shot tool gives up after two attempts of this long each: within 10 s in all.
ONE_SHOT_CONNECT_SECONDS = 4.0
# Long-running processes: 0.5, 1, 2, 4, 8, 8 ... seconds between attempts (retry_delay).
CLOSE_SECONDS = 3.0


class NatsUnreachable(Exception):
    """No NATS server answered at ``url``; the message says what to do about it."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(
            f"cannot reach NATS at {url}: {reason}; start one with `ledger dev` or give the"
            " server's URL with --nats (env LEDGER_NATS_URL)"
        )
        self.url = url
        self.reason = reason


def describe(error: BaseException) -> str:
    """A short reason without the stack: ``ConnectionRefusedError: [Errno 111] ...``."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    name = type(error).__name__
    return f"{name}: {text}" if text else name


async def connect_once(url: str, name: str, timeout: float = ONE_SHOT_CONNECT_SECONDS) -> Any:
    """One connection that does not reconnect; NatsUnreachable if the server does not answer."""
    import nats

    errors: list[BaseException] = []

    async def remember(error: Exception) -> None:
        errors.append(error)

    try:
        # max_reconnect_attempts=1 is the smallest value that lets nats-py give up at all.
        return await nats.connect(
            url,
            name=name,
            connect_timeout=timeout,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=remember,
        )
    except (OSError, TimeoutError, nats.errors.Error) as error:
        raise NatsUnreachable(url, describe(errors[0] if errors else error)) from error


async def connect_patiently(url: str, name: str, stop: asyncio.Event) -> Any | None:
    """A reconnecting connection for a long-running process, or None if ``stop`` is set first.

    Until a server answers, one probe per back-off step logs one warning line each; once
    connected, lost connections are re-established with the same back-off, also one line
    per attempt."""
    from nats.aio.client import Client

    attempt = 0
    while not stop.is_set():
        try:
            probe = await unless_stopped(stop, connect_once(url, name))
        except NatsUnreachable as error:
            attempt += 1
            delay = retry_delay(attempt)
            log.warning(
                "NATS at %s unreachable: %s (attempt %d); retrying in %.1f s",
                url,
                error.reason,
                attempt,
                delay,
            )
            await sleep_unless_stopped(stop, delay)
            continue
        if probe is None:
            return None
        await close(probe)
        break
    else:
        return None
    nc = Client()
    await unless_stopped(stop, nc.connect(url, name=name, **reconnecting_options(nc, url)))
    return nc if nc.is_connected else None


def reconnecting_options(nc: Any, url: str) -> dict[str, Any]:
    """nats-py options for ``nc``: reconnect forever with back-off, one log line per event."""
    attempts = [0]

    async def on_error(error: Exception) -> None:
        if not isinstance(error, (OSError, TimeoutError)):  # not a failed attempt to connect
            log.warning("NATS at %s: %s", url, describe(error))
            return
        attempts[0] += 1
        log.warning(
            "NATS at %s: %s (attempt %d); retrying in %.1f s",
            url,
            describe(error),
            attempts[0],
            retry_delay(attempts[0]),
        )

    async def on_disconnected() -> None:
        if not nc.is_closed:  # our own close says nothing
            log.warning("NATS at %s: connection lost; reconnecting", url)

    async def on_reconnected() -> None:
        attempts[0] = 0
        log.info("NATS at %s: reconnected", url)

    def next_server(servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        # The only way to make nats-py's reconnect loop wait longer after each failure.
        return servers[0], retry_delay(attempts[0]) if attempts[0] else 0.0

    return {
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": RETRY_FIRST_SECONDS,
        "error_cb": on_error,
        "disconnected_cb": on_disconnected,
        "reconnected_cb": on_reconnected,
        "reconnect_to_server_handler": next_server,
    }


async def close(nc: Any) -> None:
    """Drain if the server is there, else just close: never hangs on a missing server."""
    try:
        await asyncio.wait_for(nc.drain(), CLOSE_SECONDS)
    except Exception:  # reconnecting, closed or timed out: drop what is pending
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.close(), CLOSE_SECONDS)


async def unless_stopped(stop: asyncio.Event, awaitable: Awaitable[T]) -> T | None:
    """``await awaitable``, or cancel it and return None as soon as ``stop`` is set."""
    task = asyncio.ensure_future(awaitable)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        stopped.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


async def sleep_unless_stopped(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
