"""The README runs as written (issue 17, must-show 4).

Fenced blocks whose info string is ``sh runnable`` or ``python runnable`` are executed in README
order against a live ``ledger serve``; ``sh runnable dev`` blocks against ``ledger dev`` (the same
service plus nats-server and the ingest bridge), which replaces the server on the same database,
as a reader does who follows the README. A ``text output`` block right after a runnable block is
its expected stdout (``…`` stands for any text within a line).

Blocks run as a reader runs them from the repository root: in a scratch directory holding
``examples/`` and ``tools/`` of the checkout (so files they write, ``ledger.jsonl``, stay out
of the tree) with the server's database at the default ``./ledger.db``; ``127.0.0.1:50051``
is rewritten to the live server's address and ``LEDGER_NATS_URL`` names the dev nats-server.
The two fresh-machine commands are not re-run (the suite runs on that install): they must
appear verbatim, and ``.ci/run`` must run exactly the second one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed.server import LedgerProcess, dev_process

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SERVE_COMMAND = "python3 -m pip install -e '.[dev]' && ledger serve"
TEST_COMMAND = "python3 -m pip install -e '.[test]' && python3 -m pytest"
README_TARGET = "127.0.0.1:50051"
FENCE = re.compile(r"^```(?P<info>[^`\n]*)\n(?P<body>.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
RUNNABLE_LANGUAGES = {"sh": ["bash", "-c"], "python": [sys.executable, "-c"]}
BLOCK_TIMEOUT_SECONDS = 120


@dataclass
class Block:
    line: int
    language: str
    flags: tuple[str, ...]
    body: str
    expected: str | None = None

    @property
    def runnable(self) -> bool:
        return "runnable" in self.flags

    @property
    def needs_dev(self) -> bool:
        return "dev" in self.flags


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block; a ``text output`` block is attached to the runnable block before it."""
    blocks: list[Block] = []
    for match in FENCE.finditer(text):
        language, *flags = match["info"].split()
        block = Block(text.count("\n", 0, match.start()) + 1, language, tuple(flags), match["body"])
        if (language, block.flags) == ("text", ("output",)):
            assert blocks and blocks[-1].runnable, f"README.md:{block.line}: output of nothing"
            blocks[-1].expected = block.body
        else:
            blocks.append(block)
    return blocks


def output_matches(expected: str, actual: str) -> bool:
    """Line by line, trailing blanks ignored; ``…`` matches any text within a line."""
    want, got = expected.rstrip().splitlines(), actual.rstrip().splitlines()
    patterns = [".*".join(map(re.escape, line.rstrip().split("…"))) for line in want]
    return len(want) == len(got) and all(
        re.fullmatch(pattern, line.rstrip()) for pattern, line in zip(patterns, got, strict=True)
    )


def test_output_matching_rules() -> None:
    assert output_matches("a=1\nid: … at X\n", "a=1\nid: 9b0c-77 at X\n\n")
    assert not output_matches("id: … at X", "id: 9b0c at Y")
    assert not output_matches("a=1\nb=2", "a=1")  # a missing line fails
    assert not output_matches("a=1", "a=1\nTraceback")  # so does an extra one


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A reader's repository root, minus what the blocks must not write into."""
    for name in ("examples", "tools"):
        (tmp_path / name).symlink_to(ROOT / name)
    return tmp_path


class Servers:
    """The server the next block needs: ``ledger serve``, or ``ledger dev`` in its place."""

    def __init__(self, database_url: str, workdir: Path) -> None:
        self.database_url = database_url
        self.workdir = workdir
        self.process: LedgerProcess | None = None
        self.nats_url: str | None = None
        self.logs: list[str] = []

    def for_block(self, block: Block) -> LedgerProcess:
        if self.process is None or (self.process.command == "dev") != block.needs_dev:
            self.stop()
            if block.needs_dev:
                self.process, self.nats_url = dev_process(
                    self.database_url, self.workdir / ".ledger-nats"
                )
            else:
                self.process, self.nats_url = LedgerProcess(self.database_url), None
            self.process.start()
        return self.process

    def stop(self) -> None:
        if self.process is not None:
            code = self.process.stop()
            self.logs.append(self.process.log_text())
            self.process.close()
            self.process = None
            assert code == 0, self.logs[-1]


@pytest.fixture
def servers(workdir: Path) -> Iterator[Servers]:
    running = Servers(f"sqlite:///{workdir / 'ledger.db'}", workdir)
    try:
        yield running
    finally:
        running.stop()
    for log in running.logs:
        assert "Traceback" not in log and " ERROR " not in log, log


def _environment(nats_url: str | None) -> dict[str, str]:
    """A reader's shell: this install's `python` and `ledger` first, no LEDGER_* settings."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEDGER_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if nats_url is not None:
        env["LEDGER_NATS_URL"] = nats_url
    return env


def _run(block: Block, server: LedgerProcess, nats_url: str | None, cwd: Path) -> str:
    body = block.body.replace(README_TARGET, server.address)
    if block.language == "sh":
        body = "set -eo pipefail\n" + body
    done = subprocess.run(
        [*RUNNABLE_LANGUAGES[block.language], body],
        cwd=cwd,
        env=_environment(nats_url),
        capture_output=True,
        text=True,
        timeout=BLOCK_TIMEOUT_SECONDS,
    )
    where = f"README.md:{block.line} ({block.language})"
    assert done.returncode == 0, f"{where} exited {done.returncode}\n{done.stdout}{done.stderr}"
    if block.expected is not None:
        assert output_matches(block.expected, done.stdout), (
            f"{where} printed\n{done.stdout}\ninstead of\n{block.expected}\n{done.stderr}"
        )
    return done.stdout


def test_fresh_machine_commands_are_in_the_readme_and_ci_runs_the_test_one() -> None:
    shell = [b.body.strip() for b in parse_blocks(README.read_text()) if b.language == "sh"]
    assert shell[:2] == [SERVE_COMMAND, TEST_COMMAND]
    commands = [
        line
        for line in (ROOT / ".ci" / "run").read_text().splitlines()
        if line.strip() and not line.startswith(("#", "set ", "cd "))
    ]
    assert commands == [TEST_COMMAND]


def test_every_runnable_block_runs_as_written(workdir: Path, servers: Servers) -> None:
    blocks = [b for b in parse_blocks(README.read_text()) if b.runnable]
    assert {b.language for b in blocks} == set(RUNNABLE_LANGUAGES)
    assert len(blocks) >= 5 and sum(b.expected is not None for b in blocks) >= 4
    for block in blocks:
        server = servers.for_block(block)
        _run(block, server, servers.nats_url, workdir)
    assert (workdir / "ledger.jsonl").stat().st_size > 0  # the audit block's export
