"""Run a command with its stderr on a pseudo-terminal, as an operator at a shell would see it.

stdout stays a pipe, so a test can check that a command's JSON output is the same whether
or not a terminal is attached. The terminal is 120 columns wide and ``TERM=xterm-256color``
(a test environment often has no TERM, which rich would treat as a dumb terminal).
"""

from __future__ import annotations

import fcntl
import os
import re
import struct
import subprocess
import termios
import threading
from collections.abc import Mapping, Sequence

COLUMNS = 120
ROWS = 40
# CSI sequences (cursor moves, colours, erase) that a live display writes between frames.
_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_with_terminal_stderr(
    argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion; ``.stderr`` is everything written to the terminal."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
    environment = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    environment.pop("NO_COLOR", None)
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            env=environment,
        )
    except BaseException:
        os.close(leader)
        raise
    finally:
        os.close(follower)  # the child holds the only copy: its exit ends the reads
    chunks: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(leader, chunks), daemon=True)
    reader.start()
    try:
        stdout, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise
    finally:
        reader.join(10)
        os.close(leader)
    terminal = b"".join(chunks).decode("utf-8", errors="replace")
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout.decode(), terminal)


def _drain(leader: int, chunks: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every copy of the follower side is closed
            return
        if not chunk:
            return
        chunks.append(chunk)


def visible_text(terminal: str) -> str:
    """What the terminal output says with its control sequences removed."""
    return _ESCAPES.sub("", terminal).replace("\r", "")


def has_redraws(text: str) -> bool:
    """A live display redraws in place: carriage returns or cursor/erase sequences."""
    return "\r" in text or _ESCAPES.search(text) is not None
