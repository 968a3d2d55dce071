"""``x-request-id`` generation: well-formed UUIDv4 strings, unique within a process (a
counter) and across processes (a random prefix per process, a new one after a fork)."""

from __future__ import annotations

import os
import uuid

from proxy.server.runtime import new_request_id


def test_ids_are_well_formed_uuid4_and_unique():
    ids = [new_request_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    for rid in ids[:50] + ids[-50:]:
        u = uuid.UUID(rid)
        assert u.version == 4 and u.variant == uuid.RFC_4122
        assert str(u) == rid and len(rid) == 36


def test_forked_child_starts_its_own_series():
    parent_before = new_request_id()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave without running pytest's teardown
        try:
            os.write(w, new_request_id().encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        child = f.read().decode()
    os.waitpid(pid, 0)
    parent_after = new_request_id()
    uuid.UUID(child)
    assert child[:24] != parent_before[:24]  # another random prefix
    assert parent_after[:24] == parent_before[:24]
    assert child not in (parent_before, parent_after)
