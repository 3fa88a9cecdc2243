"""``ledger writer`` as a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from testbed.managed import ManagedProcess

START_TIMEOUT_SECONDS = 30.0
HOLDS_SEAT = "writer holds the seat"
STANDBY = "standby: another writer holds the seat"


class WriterProcess(ManagedProcess):
    """``python -m entrypoints.cli writer --database URL --metrics-listen 127.0.0.1:0``.

    ``start()`` returns once it holds the ledger's writer seat, or (``standby=True``) once it
    logged that it waits for it. stderr goes to a temporary file (``log_text()``).
    """

    def __init__(self, database_url: str, *, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.database_url = database_url
        self.env = dict(env or {})
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-writer-")
        self._log_path = Path(self._log_dir.name) / "stderr.log"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def start(self, timeout: float = START_TIMEOUT_SECONDS, *, standby: bool = False) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("LEDGER_DATABASE_URL", None)
        argv = [sys.executable, "-m", "entrypoints.cli", "writer", "--database", self.database_url]
        self._spawn([*argv, "--metrics-listen", "127.0.0.1:0"], env=env)
        try:
            self.wait_for(STANDBY if standby else HOLDS_SEAT, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_for(self, text: str, timeout: float = START_TIMEOUT_SECONDS) -> None:
        self._wait_until(
            lambda: True if text in self.log_text() else None,
            deadline=time.monotonic() + timeout,
            interval=0.02,
            exited=lambda _code: self._failed(text),
            late=lambda: self._failed(text),
        )

    def _failed(self, text: str) -> RuntimeError:
        return RuntimeError(f"ledger writer never logged {text!r}:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        return self._terminate(timeout)

    def kill(self) -> int | None:
        return self._kill()

    def log_text(self) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log_dir.cleanup()
