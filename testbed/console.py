"""``ledger console`` as a real subprocess, for the browser tests and the screenshots.

``ConsoleProcess`` starts ``python -m entrypoints.cli console --target HOST:PORT --listen
127.0.0.1:0``, reads the chosen port from its ``console listening on`` log line and waits
until the port answers HTTP. stderr goes to a temporary file (``.log_text()``).

    with LedgerProcess(url, extra_args=["--token-file", tokens]) as ledger:
        with ConsoleProcess(ledger.address) as console:
            driver.get(console.url + "/")
"""

from __future__ import annotations

import os
import re
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from testbed.managed import ManagedProcess

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# "ledger console listening on http://127.0.0.1:8080 (target 127.0.0.1:50051)"; the scheme
# is optional so the line may also read "listening on 127.0.0.1:8080".
_LISTENING = re.compile(
    r"console listening on (?:https?://)?(?P<host>\[[^\]]+\]|[^\s:/]+):(?P<port>\d+)"
)


class ConsoleStartError(RuntimeError):
    """The console did not come up (the message carries its output)."""


class ConsoleProcess(ManagedProcess):
    def __init__(
        self,
        target: str,
        *,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
    ) -> None:
        super().__init__()
        self.target = target
        self.listen = listen
        self.env = dict(env or {})
        self.extra_args = list(extra_args or [])
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.scheme = "https" if "--https-cert" in self.extra_args else "http"
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-console-")
        self._log_path = Path(self._log_dir.name) / "stderr.log"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self.port is None:
            raise RuntimeError("console process is not running")
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("console process already running")
        deadline = time.monotonic() + self.start_timeout
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        # The flags say where to go; a developer's environment must not redirect the console.
        for name in ("LEDGER_TARGET", "LEDGER_TOKEN", "LEDGER_LISTEN"):
            env.pop(name, None)
        argv = [sys.executable, "-m", "entrypoints.cli", "console"]
        argv += ["--target", self.target, "--listen", self.listen, *self.extra_args]
        self._spawn(argv, env=env)
        try:
            self.port = self._wait_until(
                self._logged_port,
                deadline=deadline,
                interval=0.02,
                exited=lambda _code: self._fail("exited before listening"),
                late=lambda: self._fail(f"did not log its port within {self.start_timeout} s"),
            )
            self._wait_until(
                self._answers,
                deadline=deadline,
                interval=0.05,
                exited=lambda _code: self._fail("exited before answering HTTP"),
                late=lambda: self._fail(f"did not answer HTTP within {self.start_timeout} s"),
            )
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` s: the exit code (None if never started)."""
        self.port = None
        return self._terminate(timeout)

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log_dir.cleanup()

    def log_text(self) -> str:
        if not self._log_path.exists():
            return ""
        return self._log_path.read_bytes().decode("utf-8", "replace")

    def _logged_port(self) -> int | None:
        match = _LISTENING.search(self.log_text())
        return int(match["port"]) if match else None

    def _answers(self) -> bool | None:
        """True once any HTTP answer comes back (a redirect to sign-in or a 401 will do)."""
        request = urllib.request.Request(f"{self.url}/", method="GET")
        # A test's own certificate: only whether the port answers matters here.
        context = ssl._create_unverified_context() if self.scheme == "https" else None
        try:
            with urllib.request.urlopen(request, timeout=1.0, context=context):
                return True
        except urllib.error.HTTPError:
            return True
        except (urllib.error.URLError, OSError):
            return None

    def _fail(self, why: str) -> ConsoleStartError:
        code = self.process.poll() if self.process is not None else None
        return ConsoleStartError(
            f"ledger console {why} (exit code {code}); target {self.target}\n"
            f"--- output ---\n{self.log_text()}"
        )
