"""Random (version 4) UUIDs drawn from a buffer of OS randomness.

``uuid.uuid4()`` makes one ``getrandom`` call per id, and each call releases the GIL: under
load the writer thread then waits up to a switch interval (5 ms) to get it back, once per
reservation, inside its batch. Reading 4 KiB at a time keeps the ids as unpredictable as
``uuid4``'s and makes that wait once per 256 ids.
"""

from __future__ import annotations

import os
import threading
from uuid import UUID

_IDS_PER_READ = 256
_local = threading.local()


def _forget_after_fork() -> None:
    # A forked child must not hand out the ids its parent still holds.
    global _local
    _local = threading.local()


os.register_at_fork(after_in_child=_forget_after_fork)


def new_uuid4() -> UUID:
    """A fresh random UUID (RFC 4122 version 4), like ``uuid.uuid4()``."""
    pool: list[bytes] | None = getattr(_local, "pool", None)
    if not pool:
        data = os.urandom(16 * _IDS_PER_READ)
        pool = [data[i : i + 16] for i in range(0, len(data), 16)]
        _local.pool = pool
    return UUID(bytes=pool.pop(), version=4)
