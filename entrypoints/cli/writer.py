"""``ledger writer``: the ledger's writes in a process of their own (PostgreSQL).

Takes the ledger's writer seat (``ledger.writer.election``) or waits for it as a standby,
then applies the writes API processes send (``ledger.writer.server``) until SIGTERM/SIGINT:
new calls are then refused UNAVAILABLE (their callers retry on the next holder), queued ones
are applied and answered, and the seat is given up. A holder that loses its database session
gives the seat up too (a standby may already hold it) and exits with status 1.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading

from entrypoints import bootstrap
from entrypoints.cli.failures import StopNow
from ledger.config import ConfigError, Settings
from ledger.logs import redacted
from ledger.preflight import parse_listen

log = logging.getLogger("ledger")

# How often the holder checks its seat's session (and, as a child, its parent).
CHECK_SECONDS = 0.5


def run_writer(
    settings: Settings, listen: str, advertise_host: str | None, exit_with_parent: bool
) -> int:
    from ledger.writer.election import WriterSeat
    from ledger.writer.server import WriterServer

    host, port = parse_listen("--listen", listen)
    advertised = advertise_host or host
    if advertised in ("0.0.0.0", "::"):
        raise ConfigError(f"--listen {listen} listens everywhere: give --advertise-host")
    parent = os.getppid()
    stop = threading.Event()
    seat = WriterSeat(settings.database_url)
    metrics = bootstrap.start_metrics(settings)
    try:
        watcher = threading.Thread(
            target=_watch_parent, args=(parent, stop, exit_with_parent), daemon=True
        )
        watcher.start()
        if not seat.take(stop):
            return 0
        app, writer = bootstrap.open_writer(settings)
        authkey = secrets.token_bytes(32)
        server = WriterServer(writer, host, port, authkey)
        seat.advertise(advertised, server.port, authkey, os.getpid())
        log.info(
            "writer holds the seat of %s, listening on %s:%d",
            redacted(settings.database_url),
            advertised,
            server.port,
        )
        lost = False
        try:
            while not stop.wait(CHECK_SECONDS):
                if not seat.still_held():
                    log.error("writer lost its database session: giving the seat up")
                    lost = True
                    break
        except (KeyboardInterrupt, StopNow):
            pass
        server.drain()
        writer.close()  # applies and answers what was queued
        server.close()
        app.close()
        log.info("stopped")
        return 1 if lost else 0
    finally:
        stop.set()
        seat.release()
        if metrics is not None:
            metrics.close()


def _watch_parent(parent: int, stop: threading.Event, exit_with_parent: bool) -> None:
    """A child of ``ledger serve --writer process`` stops when its parent is gone, even one
    killed without a chance to stop it."""
    if not exit_with_parent:
        return
    while not stop.wait(CHECK_SECONDS):
        if os.getppid() != parent:
            log.warning("the serving process is gone: the writer stops")
            os.kill(os.getpid(), 15)
            return
