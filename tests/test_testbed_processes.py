"""The throwaway servers' launcher (testbed.processes.launched): a server dies with the thread
that started it, runs as the user it is given, and starting one from a process that is busy in
gRPC is safe."""

from __future__ import annotations

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


def test_the_server_keeps_its_pid_and_dies_with_the_thread_that_started_it() -> None:
    started: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        argv = launched([sys.executable, "-c", "import time; time.sleep(60)"], death_signal=9)
        started.append(subprocess.Popen(argv))
        time.sleep(1.0)  # the launcher has exec'd the server by then

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    server = started[0]
    try:
        # The thread is gone: the kernel sent SIGKILL to the pid Popen reported.
        assert server.wait(10) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
    assert not pid_alive(server.pid)


def test_with_nothing_to_arm_the_argv_is_unchanged() -> None:
    assert launched(["nats-server", "-p", "1"]) == ["nats-server", "-p", "1"]


@pytest.mark.skipif(os.geteuid() != 0, reason="switching user needs root")
def test_the_server_runs_as_the_given_user_without_supplementary_groups() -> None:
    nobody = pwd.getpwnam("nobody")
    argv = launched(
        ["sh", "-c", "id -u; id -g; id -G"], user=(nobody.pw_uid, nobody.pw_gid), death_signal=9
    )
    ids = subprocess.run(argv, capture_output=True, text=True, check=True, cwd="/").stdout
    assert ids.split() == [str(nobody.pw_uid), str(nobody.pw_gid), str(nobody.pw_gid)]


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
