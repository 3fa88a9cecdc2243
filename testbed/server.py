"""Run ``ledger serve`` as a real subprocess for integration tests.

``LedgerProcess`` starts ``python -m entrypoints.cli serve --listen 127.0.0.1:0 --database URL``,
reads the chosen port from the ``ledger listening on HOST:PORT`` log line, and waits until
``grpc.health.v1`` answers SERVING.  stderr goes to a temporary file (``.log_text()``), so a
chatty server can never block on a full pipe.

    with LedgerProcess("sqlite:////tmp/x.db") as ledger:
        query = stub(ledger, query_service_pb2_grpc.InventoryQueryServiceStub)
        ...
        ledger.restart()          # same database, new process (and port)

``.stop()`` sends SIGTERM (clean shutdown) and SIGKILLs after 10 s; ``.kill()`` SIGKILLs at once.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self, TypeVar

import grpc
from grpc_health.v1 import health_pb2

from testbed.managed import ManagedProcess

START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
_LISTENING = re.compile(r"ledger listening on (?P<host>\S+):(?P<port>\d+) ")

S = TypeVar("S")


class LedgerStartError(RuntimeError):
    """The server process did not come up (the message carries its stderr)."""


class LedgerProcess(ManagedProcess):
    def __init__(
        self,
        database_url: str,
        *,
        listen: str = "127.0.0.1:0",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        start_timeout: float = START_TIMEOUT_SECONDS,
        command: str = "serve",
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        super().__init__()
        self.database_url = database_url
        self.command = command  # "serve", or "dev" (the same gRPC service plus NATS and ingest)
        self.listen = listen
        self.env = dict(env or {})
        self.extra_args = list(extra_args or [])
        # TLS: .channel() (and the health check at start) use these channel credentials.
        self.credentials = credentials
        self.start_timeout = start_timeout
        self.port: int | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="ledger-proc-")
        self._log_path = Path(self._log_dir.name) / "stderr.log"
        self._log_offset = 0  # where the current process's output starts in the log file
        self._channel: grpc.Channel | None = None
        self.start_seconds: float | None = None  # how long the last start took

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def address(self) -> str:
        if self.port is None:
            raise RuntimeError("ledger process is not running")
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self._log_path

    def start(self) -> Self:
        if self.running:
            raise RuntimeError("ledger process already running")
        began = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        # Command-line flags win over these, but keep the environment from leaking in.
        env.pop("LEDGER_LISTEN", None)
        env.pop("LEDGER_DATABASE_URL", None)
        self._log_offset = self._log_path.stat().st_size if self._log_path.exists() else 0
        argv = [sys.executable, "-m", "entrypoints.cli", self.command, "--listen", self.listen]
        # LEDGER_TEST_WRITER=process: every PostgreSQL `ledger serve` of the run writes through
        # a writer process (the PostgreSQL suite run in that shape; an explicit --writer wins).
        test_writer = os.environ.get("LEDGER_TEST_WRITER", "")
        if test_writer and self.command == "serve" and self.database_url.startswith("postgres"):
            argv += ["--writer", test_writer]
        self._spawn([*argv, "--database", self.database_url, *self.extra_args], env=env)
        try:
            self.port = self._wait_for_port(began + self.start_timeout)
            self._wait_serving(began + self.start_timeout)
        except BaseException:
            self.kill()
            raise
        self.start_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. Returns the exit code."""
        self._close_channel()
        if self.process is None:
            return None
        self.port = None
        return self._terminate(timeout)

    def kill(self) -> int | None:
        """SIGKILL (a crash). Returns the exit code."""
        self._close_channel()
        if self.process is None:
            return None
        self.port = None
        return self._kill()

    def restart(self) -> Self:
        """Stop cleanly and start a new process on the same database."""
        self.stop()
        return self.start()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._log_dir.cleanup()

    def __repr__(self) -> str:
        state = f"port {self.port}" if self.running else "stopped"
        return f"<LedgerProcess {self.database_url} {state}>"

    # ---- clients ----------------------------------------------------------------------------

    def channel(self) -> grpc.Channel:
        """A channel to the current process (re-created after a restart)."""
        if self._channel is None:
            self._channel = (
                grpc.insecure_channel(self.address)
                if self.credentials is None
                else grpc.secure_channel(self.address, self.credentials)
            )
        return self._channel

    def stub(self, stub_class: Callable[[grpc.Channel], S]) -> S:
        return stub(self.channel(), stub_class)

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    # ---- logs -------------------------------------------------------------------------------

    def log_text(self, *, all_runs: bool = False) -> str:
        """The server's stderr (this run only unless ``all_runs``)."""
        if not self._log_path.exists():
            return ""
        data = self._log_path.read_bytes()
        return (
            data.decode("utf-8", "replace")
            if all_runs
            else data[self._log_offset :].decode("utf-8", "replace")
        )

    # ---- start-up -----------------------------------------------------------------------------

    def _fail(self, why: str) -> LedgerStartError:
        code = self.process.poll() if self.process is not None else None
        return LedgerStartError(
            f"ledger serve {why} (exit code {code}); database {self.database_url}\n"
            f"--- stderr ---\n{self.log_text()}"
        )

    def _logged_port(self) -> int | None:
        match = _LISTENING.search(self.log_text())
        return int(match["port"]) if match else None

    def _wait_for_port(self, deadline: float) -> int:
        return self._wait_until(
            self._logged_port,
            deadline=deadline,
            interval=0.02,
            exited=lambda _code: self._fail("exited before listening"),
            late=lambda: self._fail(f"did not log its port within {self.start_timeout:.0f} s"),
        )

    def _wait_serving(self, deadline: float) -> None:
        # The channel's own callable: grpcio's stubs give HealthStub no Check to type-check.
        check = self.channel().unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        last: list[str] = []

        def serving() -> bool | None:
            try:
                answer = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
            except grpc.RpcError as error:
                last[:] = [f"{error.code().name}: {error.details()}"]
                return None
            if answer.status == health_pb2.HealthCheckResponse.SERVING:
                return True
            last[:] = [health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)]
            return None

        self._wait_until(
            serving,
            deadline=deadline,
            interval=0.05,
            exited=lambda _code: self._fail(
                f"exited before SERVING (last health answer: {last[0] if last else None})"
            ),
            late=lambda: self._fail(
                f"not SERVING within {self.start_timeout:.0f} s (last: {last[0] if last else None})"
            ),
        )


def dev_process(database_url: str, nats_dir: Path, **options: Any) -> tuple[LedgerProcess, str]:
    """A ``ledger dev`` (service, nats-server with JetStream, ingest bridge), not yet started,
    with its nats-server on a free port; returns it and that server's ``nats://`` URL."""
    from testbed.processes import free_tcp_port

    nats_listen = f"127.0.0.1:{free_tcp_port()}"
    extra_args = ["--nats-listen", nats_listen, "--nats-dir", str(nats_dir)]
    process = LedgerProcess(database_url, command="dev", extra_args=extra_args, **options)
    return process, f"nats://{nats_listen}"


def stub(target: grpc.Channel | LedgerProcess, stub_class: Callable[[grpc.Channel], S]) -> S:
    """``stub(ledger, ReservationServiceStub)`` — a stub on a channel or a running process."""
    channel = target.channel() if isinstance(target, LedgerProcess) else target
    return stub_class(channel)
