"""Bad starts of the CLI (issue 17): each is refused with exit 2 within 10 s and exactly one
line on stderr that names the problem, before anything is opened, created or logged (the
open-mode warning included). Tracebacks appear only with --debug / LEDGER_DEBUG=1."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from entrypoints.cli.parser import build_parser, subcommands
from testbed.processes import free_tcp_port

DEADLINE_SECONDS = 10.0


@dataclass(frozen=True)
class BadStart:
    name: str
    args: list[str]  # {db} = the test's SQLite URL, {port} = a closed port, {busy} = a held one
    names: tuple[str, ...]  # what the one line must say
    never: tuple[str, ...] = field(default=())  # what it must not say


SERVE = ["serve", "--database", "{db}"]
NATS = "nats://127.0.0.1:{port}"
PG = "postgresql://clerk:s3cret-pw@127.0.0.1:{port}/stock_db"
CASES = [
    BadStart("listen port 99999", [*SERVE, "--listen", "127.0.0.1:99999"], ("--listen", "99999")),
    BadStart("listen host unparseable", [*SERVE, "--listen", "no such host!:50051"], ("--listen",)),
    BadStart(
        "listen port in use",
        [*SERVE, "--listen", "127.0.0.1:{busy}"],
        ("--listen", "{busy}", "in use"),
    ),
    BadStart(
        "metrics port in use",
        [*SERVE, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:{busy}"],
        ("--metrics-listen", "{busy}"),
    ),
    BadStart(
        "PostgreSQL unreachable",
        ["serve", "--listen", "127.0.0.1:0", "--database", PG],
        ("PostgreSQL", "127.0.0.1", "stock_db"),
        never=("s3cret-pw",),
    ),
    BadStart(
        "SQLite directory takes no files",
        ["serve", "--listen", "127.0.0.1:0", "--database", "sqlite:////proc/ledger.db"],
        ("/proc",),
    ),
    BadStart(
        "SQLite path is a directory",
        ["serve", "--listen", "127.0.0.1:0", "--database", "sqlite:///{tmp}"],
        ("SQLite", "{tmp}"),
    ),
    BadStart(
        "ingest: PostgreSQL unreachable",
        ["ingest", "--nats", NATS, "--database", PG],
        ("PostgreSQL", "stock_db"),
        never=("s3cret-pw",),
    ),
    BadStart(
        "reconcile: PostgreSQL unreachable (2, not variances' 1)",
        ["reconcile", "{file}", "--as-of", "2026-01-01T00:00:00Z", "--database", PG],
        ("PostgreSQL", "stock_db"),
        never=("s3cret-pw",),
    ),
    BadStart(
        "export: PostgreSQL unreachable",
        ["export", "out.jsonl", "--database", PG],
        ("PostgreSQL", "stock_db"),
        never=("s3cret-pw",),
    ),
    BadStart("publish: NATS unreachable", ["publish", "{file}", "--nats", NATS], (NATS, "--nats")),
    BadStart(
        "import-snapshot: NATS unreachable",
        ["import-snapshot", "{file}", "--source", "threepl-a", "--nats", NATS],
        (NATS, "ledger dev"),
    ),
    BadStart("dlq list: NATS unreachable", ["dlq", "list", "--nats", NATS], (NATS, "--nats")),
]


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield int(holder.getsockname()[1])


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str, float]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}
    environment |= env or {}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "entrypoints.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environment,
        timeout=60,
    )
    return result.returncode, result.stderr, time.monotonic() - started


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_a_bad_start_is_one_line_and_exit_2(case: BadStart, tmp_path: Path, busy_port: int) -> None:
    work = tmp_path / "work"
    work.mkdir()
    feed = tmp_path / "feed.csv"
    feed.write_text("warehouse,item,on_hand_qty\nDC-1,SKU-1,3\n")
    values = {
        "db": f"sqlite:///{work / 'ledger.db'}",
        "port": str(free_tcp_port()),
        "busy": str(busy_port),
        "file": str(feed),
        "tmp": str(work),
    }
    args = [arg.format(**values) for arg in case.args]
    code, stderr, seconds = _run(args, cwd=work)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert seconds < DEADLINE_SECONDS, (seconds, stderr)
    assert len(lines) == 1, stderr
    for text in case.names:
        assert text.format(**values) in lines[0], stderr
    for text in case.never:
        assert text not in stderr
    assert list(work.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize(
    "variable, value",
    [
        ("LEDGER_EXPIRY_SWEEP_SECONDS", "soon"),
        ("LEDGER_TOKEN_RELOAD_SECONDS", "-1"),
        ("LEDGER_GROUP_COMMIT_MAX", "lots"),
    ],
)
def test_a_malformed_seconds_setting_is_one_line_and_exit_2(
    variable: str, value: str, tmp_path: Path
) -> None:
    args = ["serve", "--listen", "127.0.0.1:0", "--database", f"sqlite:///{tmp_path / 'l.db'}"]
    code, stderr, _ = _run(args, cwd=tmp_path, env={variable: value})
    assert code == 2, stderr
    assert stderr.strip().splitlines() == [
        next(line for line in stderr.splitlines() if variable in line and repr(value) in line)
    ]
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize("command", ["ingest", "dev"])
@pytest.mark.parametrize("value", ["soon", "0"])
def test_a_malformed_ack_wait_is_one_line_and_exit_2(
    command: str, value: str, tmp_path: Path
) -> None:
    """Read before NATS is asked: `ingest` once retried the topology step forever on it."""
    args = [command, "--database", f"sqlite:///{tmp_path / 'l.db'}"]
    if command == "ingest":
        args += ["--nats", NATS.format(port=free_tcp_port())]
    else:
        args += ["--listen", "127.0.0.1:0", "--nats-dir", str(tmp_path / "nats")]
    code, stderr, seconds = _run(args, cwd=tmp_path, env={"LEDGER_INGEST_ACK_WAIT_SECONDS": value})
    assert code == 2, stderr
    assert seconds < DEADLINE_SECONDS, (seconds, stderr)
    assert stderr.strip().splitlines() == [
        next(line for line in stderr.splitlines() if "LEDGER_INGEST_ACK_WAIT_SECONDS" in line)
    ]
    assert repr(value) in stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be created"


@pytest.mark.parametrize("how", ["--debug", "LEDGER_DEBUG=1"])
def test_debug_adds_the_traceback(how: str, tmp_path: Path) -> None:
    nats = f"nats://127.0.0.1:{free_tcp_port()}"
    args, env = ["dlq", "list", "--nats", nats], {}
    if how == "--debug":
        args.append("--debug")
    else:
        env["LEDGER_DEBUG"] = "1"
    code, stderr, _ = _run(args, cwd=tmp_path, env=env)
    assert code == 2, stderr
    assert "Traceback" in stderr and f"cannot reach NATS at {nats}" in stderr


def test_port_zero_still_asks_for_a_free_port(tmp_path: Path) -> None:
    """:0 is the documented way to get a random port; the check must not refuse it."""
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "entrypoints.cli", "serve", "--listen", "127.0.0.1:0"),
            *("--database", f"sqlite:///{tmp_path / 'ledger.db'}"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        deadline = time.monotonic() + 30
        line = ""
        while "ledger listening on" not in line and time.monotonic() < deadline:
            line = process.stderr.readline()
        chosen = re.search(r"ledger listening on 127\.0\.0\.1:(\d+) ", line)
        assert chosen is not None and int(chosen[1]) > 0, line
    finally:
        process.terminate()
        process.communicate(timeout=15)
    assert process.returncode == 0


def test_every_subcommand_documents_its_exit_statuses() -> None:
    commands = subcommands(build_parser())
    assert {name for name, _ in commands} >= {"serve", "ingest", "dlq list", "reconcile"}
    for name, command in commands:
        text = command.format_help()
        assert "exit status: 0" in text and " 2 " in text, name
        assert "--debug" in text, name
    reconcile = dict(commands)["reconcile"].format_help()
    assert "1 variances found" in reconcile and "2 bad input" in reconcile
