"""The throwaway servers' launcher (testbed.processes.launched): a server dies with the thread
that started it, runs as the user it is given, and starting one from a process that is busy in
gRPC is safe."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from testbed.processes import launched, pid_alive

REPO = Path(__file__).resolve().parent.parent


def _nobody() -> tuple[int, int]:
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


@pytest.mark.parametrize("as_nobody", [False, True], ids=["same-user", "nobody"])
def test_the_server_keeps_its_pid_and_dies_with_the_thread_that_started_it(
    as_nobody: bool,
) -> None:
    """Also as another user: a change of user clears the parent-death signal, so the
    launcher must arm it after the switch."""
    if as_nobody and os.geteuid() != 0:
        pytest.fail("switching user needs root (the embedded PostgreSQL needs it too)")
    started: list[subprocess.Popen[bytes]] = []
    server_running = threading.Event()

    def start() -> None:
        user = _nobody() if as_nobody else None
        server = subprocess.Popen(launched(["sleep", "60"], death_signal=9, user=user))
        started.append(server)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the launcher has exec'd the server: same pid
            with contextlib.suppress(OSError):
                if Path(f"/proc/{server.pid}/cmdline").read_bytes() == b"sleep\x0060\x00":
                    server_running.set()
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    server = started[0]
    try:
        assert server_running.is_set(), "the server never ran under the launcher's pid"
        # The thread is gone: the kernel sent SIGKILL to the pid Popen reported.
        assert server.wait(10) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
    assert not pid_alive(server.pid)


def test_with_nothing_to_arm_the_argv_is_unchanged() -> None:
    assert launched(["nats-server", "-p", "1"]) == ["nats-server", "-p", "1"]


def test_the_server_runs_as_the_given_user_without_supplementary_groups() -> None:
    assert os.geteuid() == 0, "switching user needs root (the embedded PostgreSQL needs it too)"
    uid, gid = _nobody()
    argv = launched(["sh", "-c", "id -u; id -g; id -G"], user=(uid, gid), death_signal=9)
    ids = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/").stdout
    assert ids.split() == [str(uid), str(gid), str(gid)]


@pytest.mark.parametrize("ctype", [None, "C"])
def test_the_server_gets_the_signals_and_locale_popen_would_give_it(ctype: str | None) -> None:
    """Python's start-up ignores SIGPIPE and SIGXFSZ and may coerce LC_CTYPE; the launcher
    undoes both before the exec."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LC_") and k != "LANG"}
    if ctype is not None:
        env["LC_CTYPE"] = ctype
    status = subprocess.run(
        launched(["cat", "/proc/self/status"], death_signal=9, env=env),
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ignored = next(line.split()[1] for line in status.splitlines() if line.startswith("SigIgn"))
    assert int(ignored, 16) == 0, status
    environ = subprocess.run(
        launched(["env"], death_signal=9, env=env), env=env, capture_output=True, text=True
    ).stdout.splitlines()
    assert [line for line in environ if line.startswith("LC_CTYPE=")] == (
        [] if ctype is None else [f"LC_CTYPE={ctype}"]
    )


def test_a_server_that_cannot_be_executed_is_named() -> None:
    missing = subprocess.run(
        launched(["/nonexistent/server", "--flag"], death_signal=9), capture_output=True, text=True
    )
    assert missing.returncode == 127
    assert missing.stderr == (
        "launcher: cannot execute /nonexistent/server: No such file or directory\n"
    )


def test_spawning_while_another_thread_is_in_grpc_never_kills_the_child() -> None:
    """A ``preexec_fn`` made subprocess fork() this process and gRPC's fork handlers aborted
    about one child in 40 ("Epoll1Poller ... Bad file descriptor", exit -6) while another
    thread was in a call; that was the stack rehearsal's flake. Spawned through the launcher,
    every child runs."""
    script = textwrap.dedent(
        """
        import subprocess, sys, threading
        from concurrent import futures
        import grpc
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc
        from testbed.processes import launched

        server = grpc.server(futures.ThreadPoolExecutor(4))
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        calling = True

        def call() -> None:
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = health_pb2_grpc.HealthStub(channel)
                while calling:
                    stub.Check(health_pb2.HealthCheckRequest())

        caller = threading.Thread(target=call)
        caller.start()
        failed = []
        for _ in range(150):
            child = subprocess.run(
                launched(["true"], death_signal=9), capture_output=True, check=False
            )
            if child.returncode != 0:
                failed.append((child.returncode, child.stderr[-200:]))
        calling = False
        caller.join()
        server.stop(None)
        print(len(failed), failed[:3])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=REPO,
    )
    assert done.stdout.startswith("0 "), done.stdout + done.stderr[-2000:]
