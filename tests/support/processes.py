"""What the throwaway-server helpers (PostgreSQL, NATS) share: ports, pids, parent death."""

from __future__ import annotations

import ctypes
import os
import socket
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


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


def make_preexec(die_with_parent: bool, death_signal: int) -> Callable[[], None] | None:
    """preexec_fn arming PR_SET_PDEATHSIG: the server gets ``death_signal`` when the thread
    that started it dies (Linux ties it to the thread, not the process)."""
    if not (die_with_parent and sys.platform.startswith("linux")):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        if os.getppid() != parent:  # parent already gone before prctl took effect
            os._exit(1)

    return preexec
