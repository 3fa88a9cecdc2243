"""``ledger writer``: the ledger's writes in a process of their own (PostgreSQL).

Takes the ledger's writer seat (``ledger.writer.election``) or waits for it as a standby,
then applies the writes API processes send (``ledger.writer.server``) until SIGTERM/SIGINT:
new calls are then refused UNAVAILABLE (their callers retry on the next holder), queued ones
are applied and answered, and the seat is given up. A holder that loses its database session
gives the seat up too (a standby may already hold it) and waits for it again as a standby.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
from typing import TYPE_CHECKING

import psycopg

from entrypoints import bootstrap
from entrypoints.cli.failures import StopNow
from ledger.config import ConfigError, Settings
from ledger.logs import redacted
from ledger.preflight import parse_listen

if TYPE_CHECKING:
    from ledger.writer.election import WriterSeat

log = logging.getLogger("ledger")

# How often the holder checks its seat's session (and, as a child, its parent).
CHECK_SECONDS = 0.5


def run_writer(
    settings: Settings, listen: str, advertise_host: str | None, exit_with_parent: int
) -> int:
    from ledger.writer.election import WriterSeat

    host, port = parse_listen("--listen", listen)
    advertised = advertise_host or host
    if advertised in ("0.0.0.0", "::"):
        raise ConfigError(f"--listen {listen} listens everywhere: give --advertise-host")
    stop = threading.Event()
    _raise_priority()
    seat = WriterSeat(settings.database_url)
    metrics = bootstrap.start_metrics(settings)
    try:
        watcher = threading.Thread(target=_watch_parent, args=(exit_with_parent, stop), daemon=True)
        watcher.start()
        # A tenure ends with a signal (stop) or with the seat's session lost (a database
        # outage, a network cut): then this process is a standby again, not gone, so a
        # `serve --writer process` still has its writer when the database is back.
        while seat.take(stop):
            if not _hold_seat(settings, seat, stop, host, port, advertised):
                break
            seat.release()
        log.info("stopped")
        return 0
    finally:
        stop.set()
        seat.release()
        if metrics is not None:
            metrics.close()


# How much more CPU priority the writer asks for than the processes that feed it.
WRITER_PRIORITY_BOOST = 5


def _raise_priority() -> None:
    """Ask the scheduler to run this process ahead of the API processes on the same host.

    Every write waits for the one writer; API processes are many and interchangeable. At
    saturation, with the API processes and the load on every core, the writer's thread
    woke late for each of its round trips: 28-77 ms commit transactions with PostgreSQL
    nearly idle, and goodput fell to a tenth of capacity (bench, issue 20). Needs
    CAP_SYS_NICE (root has it); without it the writer runs at the default priority.
    """
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, current - WRITER_PRIORITY_BOOST)
    except OSError as error:
        log.info("writer: runs at the default CPU priority (%s)", error.strerror or error)


def _hold_seat(
    settings: Settings,
    seat: WriterSeat,
    stop: threading.Event,
    host: str,
    port: int,
    advertised: str,
) -> bool:
    """Write for the ledger while the seat is ours. True: the seat was lost (wait for it
    again); False: asked to stop."""
    from entrypoints.cli.processes import tune_process
    from ledger.writer.server import WriterServer

    app, writer = bootstrap.open_writer(settings)
    # The pipeline thread shares the interpreter with the socket threads: the short switch
    # interval gets it back soon after each database round trip (ledger.gil_tuning).
    tune_process(settings.tuning)
    authkey = secrets.token_bytes(32)
    server = WriterServer(writer, host, port, authkey)
    lost = False
    try:
        seat.advertise(advertised, server.port, authkey, os.getpid())
        log.info(
            "writer holds the seat of %s, listening on %s:%d",
            redacted(settings.database_url),
            advertised,
            server.port,
        )
        while not stop.wait(CHECK_SECONDS):
            if not seat.still_held():
                log.warning("writer lost its database session: giving the seat up")
                lost = True
                break
    except (KeyboardInterrupt, StopNow):
        pass
    except psycopg.Error as error:  # the database went away while advertising
        log.warning("writer could not advertise its seat: %s", error)
        lost = True
    finally:
        server.drain()
        writer.close()  # applies and answers what was queued
        server.close()
        app.close()
    return lost and not stop.is_set()


def _watch_parent(parent: int, stop: threading.Event) -> None:
    """A child of ``ledger serve --writer process`` (``parent``: serve's pid, given on the
    command line, so a parent that died while this one started is noticed too) stops when
    its parent is gone, even one killed without a chance to stop it."""
    if not parent:
        return
    while not stop.wait(CHECK_SECONDS):
        if os.getppid() != parent:
            log.warning("the serving process is gone: the writer stops")
            os.kill(os.getpid(), 15)
            return
