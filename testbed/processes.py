"""What the throwaway-server helpers share: ports, pids, stopping, parent death."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence


def free_tcp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def terminate(process: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, wait up to ``timeout`` s, then SIGKILL: the exit code."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    return process.returncode


# Runs in a fresh interpreter between the spawn and the server's exec: takes the server's
# user, then arms the parent-death signal (a change of user clears it) and checks that the
# parent did not die before it took effect. It hands the server what Popen would have: the
# signals Python's start-up ignores back at their defaults, LC_CTYPE as it was before
# Python's locale coercion ("-" when unset), and argv[0] found on the environment's PATH.
# Everything is imported before the user changes: the new user may not read the stdlib.
_LAUNCHER = """
import ctypes, os, signal, sys, warnings
uid, gid, death_signal, parent = (int(arg) for arg in sys.argv[1:5])
if sys.argv[5] == "-":
    os.environ.pop("LC_CTYPE", None)
else:
    os.environ["LC_CTYPE"] = sys.argv[5]
for number in (signal.SIGPIPE, signal.SIGXFSZ):
    signal.signal(number, signal.SIG_DFL)
if gid >= 0:
    os.setgroups([])
    os.setregid(gid, gid)
if uid >= 0:
    os.setreuid(uid, uid)
if death_signal:
    if ctypes.CDLL(None, use_errno=True).prctl(1, death_signal, 0, 0, 0) != 0:
        sys.exit("launcher: prctl(PR_SET_PDEATHSIG) failed: " + os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        os._exit(1)
try:
    os.execvp(sys.argv[6], sys.argv[6:])
except OSError as error:
    print(f"launcher: cannot execute {sys.argv[6]}: {error.strerror}", file=sys.stderr)
    os._exit(127 if isinstance(error, FileNotFoundError) else 126)
"""


def launched(
    argv: Sequence[str],
    *,
    death_signal: int | None = None,
    user: tuple[int, int] | None = None,
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """``argv`` started through a launcher that runs it as ``user`` (uid, gid, no
    supplementary groups) and arms PR_SET_PDEATHSIG: the server gets ``death_signal`` when
    the thread that started it dies (Linux ties it to the thread, not the process). The pid
    stays the server's: the launcher execs it. ``env`` is the environment Popen is given
    (default: this process's).

    Not ``preexec_fn`` or Popen's ``user=``: either makes subprocess fork() this
    multi-threaded process instead of vfork(), and gRPC's fork handlers then run in the
    child, where they abort ("Epoll1Poller ... epoll_wait error: Bad file descriptor") about
    once in 40 spawns while another thread is in a call: the child dies before it runs.
    The price is a wider window (the launcher's start-up, not microseconds) in which a
    starting thread that exits leaves the server untied: start servers from long-lived
    threads."""
    if death_signal is not None and not sys.platform.startswith("linux"):
        death_signal = None
    if death_signal is None and user is None:
        return list(argv)
    uid, gid = user if user is not None else (-1, -1)
    ctype = (os.environ if env is None else env).get("LC_CTYPE", "-")
    launcher = [sys.executable, "-I", "-S", "-c", _LAUNCHER]
    arming = [str(uid), str(gid), str(int(death_signal or 0)), str(os.getpid()), ctype]
    return [*launcher, *arming, *argv]
