"""``ledger projections`` as a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from testbed.managed import ManagedProcess

START_TIMEOUT_SECONDS = 30.0
_FOLLOWING = "projections following"


class ProjectionsProcess(ManagedProcess):
    """``python -m entrypoints.cli projections --database URL`` as a subprocess.

    ``start()`` returns once it logged that it follows the ledger; ``stop()`` sends SIGTERM
    (SIGKILL after 10 s). stderr goes to a temporary file (``log_text()``).
    """

    def __init__(self, database_url: str, *, env: dict[str, str] | None = None) -> None:
        super().__init__()
        self.database_url = database_url
        self.env = dict(env or {})
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-projections-")
        self._log_path = Path(self._log_dir.name) / "stderr.log"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("LEDGER_DATABASE_URL", None)
        argv = [sys.executable, "-m", "entrypoints.cli", "projections"]
        self._spawn([*argv, "--database", self.database_url], env=env)
        try:
            self._wait_until(
                lambda: True if _FOLLOWING in self.log_text() else None,
                deadline=time.monotonic() + timeout,
                interval=0.02,
                exited=lambda _code: self._not_started(),
                late=self._not_started,
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _not_started(self) -> RuntimeError:
        return RuntimeError(f"ledger projections did not start:\n{self.log_text()}")

    def stop(self, timeout: float = 10.0) -> int | None:
        return self._terminate(timeout)

    def log_text(self) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log_dir.cleanup()
