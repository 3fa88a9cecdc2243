"""``ledger projections`` as a subprocess, for tests and benchmarks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from testbed.processes import terminate

START_TIMEOUT_SECONDS = 30.0
_FOLLOWING = "projections following"


class ProjectionsProcess:
    """``python -m entrypoints.cli projections --database URL`` as a subprocess.

    ``start()`` returns once it logged that it follows the ledger; ``stop()`` sends SIGTERM
    (SIGKILL after 10 s). stderr goes to a temporary file (``log_text()``).
    """

    def __init__(self, database_url: str, *, env: dict[str, str] | None = None) -> None:
        self.database_url = database_url
        self.env = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-projections-")
        self._log_path = Path(self._log_dir.name) / "stderr.log"

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> Self:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        env.pop("LEDGER_DATABASE_URL", None)
        with open(self._log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "entrypoints.cli",
                    "projections",
                    "--database",
                    self.database_url,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while _FOLLOWING not in self.log_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ledger projections did not start:\n{self.log_text()}")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        process = self.process
        if process is None:
            return None
        terminate(process, timeout)
        return process.returncode

    def log_text(self) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", "replace")

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log_dir.cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
