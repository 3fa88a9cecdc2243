"""Prometheus and promtool for tests: Debian's ``prometheus`` package, and throwaway servers.

``prometheus_binaries()`` returns the two executables, installing the package first when
``promtool`` is missing (``apt-get update && apt-get install --no-install-recommends
prometheus``, as root), under a file lock so parallel test runs install it once. The
package's maintainer scripts would start a system Prometheus on port 9090: the install runs
with a ``policy-rc.d`` that forbids starting services (the one Docker images already have is
kept), and a ``prometheus`` of the package's service account that appears anyway is stopped.

``PrometheusServer`` runs ``prometheus`` on 127.0.0.1 and a free port with a given
configuration and a temporary TSDB directory, waits for ``/-/ready``, answers HTTP API
queries and stops with SIGTERM. On Linux it gets ``PR_SET_PDEATHSIG=SIGKILL``, so it does
not outlive a killed test process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

from testbed.managed import ManagedProcess
from testbed.processes import free_tcp_port

INSTALL_TIMEOUT_SECONDS = 600.0
START_TIMEOUT_SECONDS = 30.0
_LOCK_FILE = Path(tempfile.gettempdir()) / "ledger-test-prometheus-install.lock"
_POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
# Exit status 101 tells invoke-rc.d (and deb-systemd-invoke) that starting is forbidden.
_POLICY_FORBID = "#!/bin/sh\n# ledger tests: no services start during an install\nexit 101\n"


class PrometheusUnavailable(RuntimeError):
    """The prometheus package is not installed and could not be."""


@dataclasses.dataclass(frozen=True)
class PrometheusBinaries:
    prometheus: Path
    promtool: Path


def _found() -> PrometheusBinaries | None:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus and promtool:
        return PrometheusBinaries(Path(prometheus), Path(promtool))
    return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    with open(_LOCK_FILE, "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def _services_may_not_start() -> Iterator[None]:
    """A forbidding policy-rc.d for the install; an existing one is left as it is."""
    if _POLICY_RC_D.exists():
        yield
        return
    _POLICY_RC_D.write_text(_POLICY_FORBID, encoding="utf-8")
    _POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        _POLICY_RC_D.unlink(missing_ok=True)


def _service_pids() -> set[int]:
    """Prometheus processes of the package's service account (what its scripts would start;
    a test's own servers run as the test's user)."""
    try:
        service_uid = pwd.getpwnam("prometheus").pw_uid
    except KeyError:
        return set()
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0]
                if os.path.basename(argv0) == b"prometheus" and entry.stat().st_uid == service_uid:
                    pids.add(int(entry.name))
    return pids


def _apt_get(*args: str) -> None:
    command = ["apt-get", "-q", *args]
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        result = subprocess.run(
            command,
            env=environment,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PrometheusUnavailable(f"`{' '.join(command)}` failed: {error}") from error
    if result.returncode != 0:
        raise PrometheusUnavailable(
            f"`{' '.join(command)}` exited {result.returncode}:\n{result.stderr[-3000:]}"
        )


def _install() -> None:
    if os.geteuid() != 0:
        raise PrometheusUnavailable(
            "promtool is not on PATH and installing Debian's prometheus package needs root:"
            " run `apt-get install --no-install-recommends prometheus`"
        )
    before = _service_pids()
    with _services_may_not_start():
        _apt_get("update")
        _apt_get("install", "-y", "--no-install-recommends", "prometheus")
    # Started by the package's scripts despite the policy: this install's doing, so stop it.
    for pid in _service_pids() - before:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


def prometheus_binaries() -> PrometheusBinaries:
    """``prometheus`` and ``promtool``, installed from Debian's package when missing."""
    found = _found()
    if found is not None:
        return found
    with _locked():
        found = _found()  # another run may have installed it while this one waited
        if found is None:
            _install()
            found = _found()
    if found is None:
        raise PrometheusUnavailable("prometheus installed, but promtool is not on PATH")
    return found


class PrometheusServer(ManagedProcess):
    """A private Prometheus on 127.0.0.1 with the configuration text ``config``."""

    missing_log = "<no prometheus log>"

    def __init__(self, binary: Path, config: str, *, die_with_parent: bool = True) -> None:
        super().__init__()
        self.binary = binary
        self.config = config
        self.die_with_parent = die_with_parent
        self.port = free_tcp_port()
        self._dir = tempfile.TemporaryDirectory(prefix="ledger-test-prometheus-")
        self.base_dir = Path(self._dir.name)
        self._log_path = self.base_dir / "prometheus.log"

    @property
    def log_path(self) -> Path:
        return self._log_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Self:
        config_path = self.base_dir / "prometheus.yml"
        config_path.write_text(self.config, encoding="utf-8")
        self.log_path.unlink(missing_ok=True)  # each start writes a fresh log
        argv = [
            str(self.binary),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={self.base_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self._spawn(
            argv,
            death_signal=int(signal.SIGKILL),
            die_with_parent=self.die_with_parent,
            cwd=self.base_dir,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool | None:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response,
        ):
            if response.status == 200:
                return True
        return None

    def _wait_ready(self) -> None:
        self._wait_until(
            self._ready,
            deadline=time.monotonic() + START_TIMEOUT_SECONDS,
            interval=0.1,
            exited=lambda code: AssertionError(f"prometheus exited {code}:\n{self.log_tail()}"),
            late=lambda: AssertionError(f"prometheus not ready:\n{self.log_tail()}"),
        )

    def api(self, path: str, **params: str) -> Any:
        """The ``data`` of a successful ``/api/v1/<path>`` answer."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=5) as response:
            body = json.loads(response.read().decode("utf-8"))
        assert body["status"] == "success", body
        return body["data"]

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM (Prometheus flushes its head block), SIGKILL after ``timeout`` s."""
        code = self._terminate(timeout)
        self.process = None
        return code

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
