"""Buffered random UUIDs: valid version 4, never repeated, not shared across a fork."""

from __future__ import annotations

import os
import uuid

from ledger.ids import new_uuid4


def test_ids_are_version_4_and_unique_across_refills() -> None:
    ids = [new_uuid4() for _ in range(2_000)]  # several 256-id refills
    assert len(set(ids)) == len(ids)
    assert all(i.version == 4 and i.variant == uuid.RFC_4122 for i in ids)


def test_a_forked_child_does_not_reuse_the_parent_buffer() -> None:
    new_uuid4()  # the parent now holds a partly used buffer
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, new_uuid4().bytes)
        os._exit(0)
    os.waitpid(pid, 0)
    child = uuid.UUID(bytes=os.read(read, 16))
    parent_next = [new_uuid4() for _ in range(256)]
    assert child not in parent_next
