"""Long-running processes stop when told (issue 17): SIGTERM/SIGINT end them within 5 s in
every state, including while NATS is unreachable at start-up or gone mid-run; reconnect
attempts are one log line each, never a traceback; `ledger dev` on Ctrl-C stops ingest, the
service and then its nats-server, and exits 0 with "stopped"."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.nats import EmbeddedNats
from testbed.postgres import EmbeddedPostgres
from testbed.processes import free_tcp_port

STOP_SECONDS = 5.0


class Cli:
    """``python -m entrypoints.cli ARGS`` in its own process group, output in a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env | {"PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # os.killpg(): what a terminal's Ctrl-C does
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text()):
            assert self.process.poll() is None, f"exited {self.process.returncode}:\n{self.text()}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.text()}"
            time.sleep(0.05)

    def stop(self, signum: int, group: bool = False) -> tuple[int, float]:
        """Send ``signum``; (exit code, seconds until exit). Killed if it outlives 15 s."""
        sent = time.monotonic()
        if group:
            os.killpg(self.process.pid, signum)
        else:
            self.process.send_signal(signum)
        try:
            code = self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"still running 15 s after {signum}:\n{self.text()}") from None
        return code, time.monotonic() - sent

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def clis() -> Iterator[list[Cli]]:
    started: list[Cli] = []
    yield started
    for cli in started:
        cli.close()


def _continued(text: str) -> list[str]:
    """Lines that are not log records of their own: tracebacks, multi-line messages."""
    return [line for line in text.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]


def _attempt_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "(attempt " in line]


def _stopped_cleanly(cli: Cli, signum: int, group: bool = False) -> str:
    """Send ``signum``: exit 0 within STOP_SECONDS, no traceback, every line a log record of
    its own, 'stopped' last. The output, for the test's own checks."""
    code, seconds = cli.stop(signum, group)
    text = cli.text()
    assert code == 0, text
    assert seconds < STOP_SECONDS, (seconds, text)
    assert "Traceback" not in text, text
    assert _continued(text) == [], text
    assert text.rstrip().endswith("stopped"), text
    return text


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ingest_waiting_for_an_absent_nats_stops_when_told(
    signum: int, tmp_path: Path, clis: list[Cli]
) -> None:
    nats = f"nats://127.0.0.1:{free_tcp_port()}"
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    cli = Cli(["ingest", "--nats", nats, "--database", database], tmp_path / "ingest.log")
    clis.append(cli)
    time.sleep(3)
    assert cli.process.poll() is None, cli.text()  # it waits for NATS, it does not give up
    cli.wait_for(r"\(attempt 2\)")  # a slow start-up (loaded machine) may not be there yet
    text = _stopped_cleanly(cli, signum)
    attempts = _attempt_lines(text)
    assert len(attempts) >= 2, text  # one line per attempt ...
    assert all(nats in line and "unreachable" in line for line in attempts), text
    delays = [float(m[1]) for m in re.finditer(r"retrying in ([\d.]+) s", text)]
    assert delays == sorted(delays) and delays[-1] > delays[0], delays  # ... with back-off


def test_ingest_stops_when_told_while_nats_is_gone_and_rides_out_the_outage(
    own_nats: EmbeddedNats, tmp_path: Path, clis: list[Cli]
) -> None:
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    args = ["ingest", "--nats", own_nats.url, "--database", database, "--prefix", "sig"]
    cli = Cli(args, tmp_path / "ingest.log")
    clis.append(cli)
    cli.wait_for(r"ingest from ")

    # An outage it survives: it reconnects by itself, one line per attempt.
    own_nats.stop()
    cli.wait_for(r"connection lost")
    time.sleep(2)
    own_nats.start()
    cli.wait_for(r"NATS at \S+: reconnected")
    assert "Traceback" not in cli.text()

    # Told to stop while the server is gone again.
    own_nats.stop()
    cli.wait_for(r"(?s)connection lost.*connection lost")  # the second outage's line
    time.sleep(3)
    text = _stopped_cleanly(cli, signal.SIGTERM)
    assert "ingest stopped: 0 recorded" in text, text
    assert text.count("connection lost") == 2, text


def test_dev_on_ctrl_c_stops_its_children_in_order_and_exits_0(
    tmp_path: Path, clis: list[Cli]
) -> None:
    nats_port = free_tcp_port()
    args = ["dev", "--listen", "127.0.0.1:0", "--database", f"sqlite:///{tmp_path / 'l.db'}"]
    args += ["--nats-listen", f"127.0.0.1:{nats_port}", "--nats-dir", str(tmp_path / "nats")]
    cli = Cli(args, tmp_path / "dev.log")
    clis.append(cli)
    cli.wait_for(r"ingest from ")
    text = _stopped_cleanly(cli, signal.SIGINT, group=True)  # the terminal's Ctrl-C
    # ingest first, then the service, then nats-server: ingest never lost its broker.
    order = [text.index("ingest stopped:"), text.index("shutting down"), text.rindex("stopped")]
    assert order == sorted(order), text
    assert "connection lost" not in text, text
    with socket.socket() as probe:  # and nats-server is gone with it
        assert probe.connect_ex(("127.0.0.1", nats_port)) != 0


@pytest.mark.postgres
@pytest.mark.parametrize("command", ["ingest", "projections"])
def test_stops_when_told_while_postgresql_is_gone(
    command: str,
    own_postgres: EmbeddedPostgres,
    nats_url: str,
    tmp_path: Path,
    clis: list[Cli],
) -> None:
    database = own_postgres.create_database("signals")
    args = [command, "--database", database]
    if command == "ingest":
        args += ["--nats", nats_url, "--prefix", f"pg{os.getpid()}"]
    cli = Cli(args, tmp_path / f"{command}.log")
    clis.append(cli)
    cli.wait_for(r"ingest from |projections following ")
    own_postgres.stop()
    time.sleep(3)
    _stopped_cleanly(cli, signal.SIGTERM)
