"""Progress lines on stderr, stamped with the seconds since the run began."""

from __future__ import annotations

import sys
import time

_START = time.monotonic()


def restart_clock() -> None:
    global _START
    _START = time.monotonic()


def progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)
