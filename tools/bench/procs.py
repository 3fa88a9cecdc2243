"""A subprocess whose output goes to a log file, started until a line says it is ready
(the echo server, ``ledger ingest``); stopped with SIGTERM, SIGKILL after a grace."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class LoggedProcess:
    def __init__(self, name: str, args: list[str], ready: str) -> None:
        self.name = name
        self.args = args
        self.ready = re.compile(ready)
        self.process: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix=f"ledger-bench-{name}-")
        self.log_path = Path(self._dir.name) / "output.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = 30.0) -> re.Match[str]:
        """Start and wait for the ready line; returns its match."""
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = time.monotonic() + timeout
        while True:
            match = self.ready.search(self.log_text())
            if match:
                return match
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log_text()[-3000:]}")
            time.sleep(0.02)

    def log_text(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def stop(self, timeout: float = 10.0) -> int | None:
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._dir.cleanup()
