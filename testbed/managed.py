"""One child process with a log file, and the throwaway servers built on it.

``ManagedProcess`` is what every launcher shares: spawn with output appended to a log file,
wait until ready, stop (SIGTERM, wait, SIGKILL) or kill, the log's tail, ``with``.
``EmbeddedServer`` adds what the embedded PostgreSQL and nats-server share: a temp dir owned
by this pid (removed at exit, or by the next run if this one died), a free port kept across
restarts, new ports while another process takes the chosen one first, ``python -m`` use.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from testbed.processes import free_tcp_port, launched, pid_alive, terminate

T = TypeVar("T")
OWNER_FILE = "owner.pid"
_PORT_TAKEN = ("address already in use", "in use by another")


class ManagedProcess:
    """A child process whose stdout and stderr go to ``log_path``."""

    missing_log = "<no server log>"

    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.running and self.process is not None else None

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return self.missing_log
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    def _spawn(
        self,
        argv: Sequence[str],
        *,
        death_signal: int | None = None,
        die_with_parent: bool = True,
        user: tuple[int, int] | None = None,
        **popen: Any,
    ) -> subprocess.Popen[bytes]:
        """Start ``argv`` with its output appended to the log, as ``user`` (uid, gid) when
        given. A server (``death_signal`` given) gets a session of its own, so a terminal's
        Ctrl-C does not reach it, and that signal when the thread that started it dies
        (``die_with_parent``, Linux)."""
        if death_signal is not None:
            popen.update(start_new_session=True)
        death_signal = death_signal if die_with_parent else None
        argv = launched(argv, death_signal=death_signal, user=user, env=popen.get("env"))
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **popen
            )
        return self.process

    def _wait_until(
        self,
        probe: Callable[[], T | None],
        *,
        deadline: float,
        interval: float,
        exited: Callable[[int], BaseException],
        late: Callable[[], BaseException],
    ) -> T:
        """``probe()``'s first answer that is not None; ``exited(code)`` is raised if the
        process ends first, ``late()`` once ``deadline`` (time.monotonic) has passed."""
        assert self.process is not None
        while True:
            answer = probe()
            if answer is not None:
                return answer
            code = self.process.poll()
            if code is not None:
                raise exited(code)
            if time.monotonic() > deadline:
                raise late()
            time.sleep(interval)

    def _terminate(self, timeout: float) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` s: the exit code (None if never started)."""
        if self.process is None:
            return None
        return terminate(self.process, timeout)

    def _kill(self) -> int | None:
        """SIGKILL at once (a crash): the exit code (None if never started)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.kill()
        process.wait()
        return process.returncode


def reap_stale_dirs(prefix: str, stop_orphan: Callable[[Path], None]) -> None:
    """Remove our temp dirs named ``prefix*`` whose owning process died, after
    ``stop_orphan(dir)`` has stopped the server it may have left running."""
    for base in Path(tempfile.gettempdir()).glob(f"{prefix}*"):
        try:
            if base.stat().st_uid != os.geteuid() or not base.is_dir():
                continue
            owner = int((base / OWNER_FILE).read_text().strip())
            if pid_alive(owner):
                continue
            stop_orphan(base)
            shutil.rmtree(base, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


class EmbeddedServer(ManagedProcess):
    """A server on 127.0.0.1 with a temp dir of its own, controlled by this process.

    ``start()`` prepares the dir on first use, starts the server and waits (``start_timeout``
    s) until it answers; the port is chosen once and kept across ``stop()``/``kill()``/
    ``restart()``, so addresses stay valid.
    """

    dir_prefix: ClassVar[str]
    program: ClassVar[str]  # in messages
    start_error: ClassVar[type[RuntimeError]]

    def __init__(self, *, port: int | None, start_timeout: float, die_with_parent: bool) -> None:
        super().__init__()
        self.host = "127.0.0.1"
        self._port = port
        self._port_fixed = port is not None
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.base_dir: Path | None = None
        self._lock = threading.RLock()

    # -- what each server defines

    def address(self) -> str:
        """What clients connect to (DSN, URL)."""
        raise NotImplementedError

    def _prepare(self) -> None:
        """First start: make the dir (``_make_dir``) and whatever the server needs in it."""
        raise NotImplementedError

    def _launch(self) -> None:
        raise NotImplementedError

    def _wait_ready(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def _stop_for_cleanup(self) -> None:
        self.stop()

    def _before_removal(self) -> None:
        """Last words before the dir is deleted."""

    @staticmethod
    def _stop_orphan(base: Path) -> None:
        """Stop the server a dead owner left running in ``base``."""
        raise NotImplementedError

    # -- shared

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server has not been started yet")
        return self._port

    def _path(self, name: str) -> Path:
        if self.base_dir is None:
            raise RuntimeError("server has not been started yet")
        return self.base_dir / name

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self._port} {state} {self.base_dir}>"

    def start(self) -> Self:
        with self._lock:
            if self.running:
                return self
            self._prepare()
            attempts = 1 if self._port_fixed else 3
            for attempt in range(attempts):
                if self._port is None:
                    self._port = free_tcp_port(self.host)
                try:
                    self._spawn_and_wait()
                except self.start_error as exc:
                    port_taken = any(text in str(exc).lower() for text in _PORT_TAKEN)
                    if not (port_taken and attempt < attempts - 1):
                        raise
                    self._port = None  # someone grabbed the free port first; pick another
                else:
                    self._port_fixed = True  # restarts keep the port, so addresses stay valid
                    return self
            raise AssertionError("unreachable")

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the server (no flush, no clean shutdown)."""
        with self._lock:
            self._kill()
            self.process = None

    def restart(self) -> Self:
        """Stop (if running) and start again on the same port and dir."""
        with self._lock:
            self.stop()
            return self.start()

    def cleanup(self) -> None:
        """Stop the server (if running) and delete its directory.  Idempotent."""
        with self._lock:
            try:
                try:
                    self._stop_for_cleanup()
                except Exception:
                    self.kill()
            finally:
                atexit.unregister(self.cleanup)
                if self.base_dir is not None:
                    self._before_removal()
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                    self.base_dir = None

    def close(self) -> None:
        self.cleanup()

    def _make_dir(self) -> Path:
        reap_stale_dirs(self.dir_prefix, self._stop_orphan)
        atexit.register(self.cleanup)
        base = Path(tempfile.mkdtemp(prefix=self.dir_prefix))
        self.base_dir = base
        (base / OWNER_FILE).write_text(f"{os.getpid()}\n")
        return base

    def _spawn_and_wait(self) -> None:
        self._launch()
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _ready_deadline(self) -> float:
        return time.monotonic() + self.start_timeout

    def _wait_answering(
        self, probe: Callable[[], bool | None], *, deadline: float, not_ready: Callable[[], str]
    ) -> None:
        """Until ``probe()`` answers; ``start_error`` with the log's tail if the server exits
        first or ``deadline`` passes (``not_ready()`` says what it was waiting for)."""
        self._wait_until(
            probe,
            deadline=deadline,
            interval=0.05,
            exited=lambda code: self.start_error(
                f"{self.program} exited with code {code} during startup\n{self.log_tail()}"
            ),
            late=lambda: self.start_error(f"{not_ready()}\n{self.log_tail()}"),
        )


class ExternalServer:
    """A server we do not own (given by the environment): never started or stopped."""

    def start(self) -> Self:
        return self

    def cleanup(self) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        pass


def serve_until_signalled(server: EmbeddedServer, *, env: str, data: Callable[[], str]) -> int:
    """``python -m testbed.X``: start ``server``, print its address, run until Ctrl-C /
    SIGTERM / SIGHUP, then delete it; 1 if the server died on its own."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    try:
        server.start()
        print(server.address(), flush=True)
        print(
            f"started in {time.monotonic() - started:.2f}s; {data()}, "
            f"log {server.log_path}\nexport {env}={server.address()}\n"
            "Ctrl-C or SIGTERM to stop.",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        while not stop.wait(0.5):
            if not server.running:
                print(f"{server.program} exited unexpectedly\n{server.log_tail()}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.cleanup()
