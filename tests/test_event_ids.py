"""Event and position ids drawn from a per-thread pool of random uuid4s (ledger.service)."""

from __future__ import annotations

import os
import threading
import uuid
import warnings
from collections.abc import Callable

from ledger.service import _EventIds, new_position_id


def _is_uuid4_hex(value: str) -> bool:
    parsed = uuid.UUID(value)
    return parsed.hex == value and parsed.version == 4 and parsed.variant == uuid.RFC_4122


def _ids_of_a_forked_child(draw: Callable[[], list[str]]) -> set[str]:
    """The ids `draw` gives in a forked child (read back through a pipe; the child exits
    without cleanup)."""
    reader, writer = os.pipe()
    with warnings.catch_warnings():  # 3.12+ warns of forking a process with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        try:
            os.write(writer, "".join(draw()).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        child_hex = pipe.read().decode()
    os.waitpid(pid, 0)
    return {child_hex[i : i + 32] for i in range(0, len(child_hex), 32)}


def test_ids_are_uuid4_hex_and_distinct_across_many_pool_refills() -> None:
    ids = _EventIds(1)
    drawn = [ids.next() for _ in range(2000)]  # several refills of the pool
    assert len(set(drawn)) == len(drawn)
    assert all(_is_uuid4_hex(event_id) for event_id in drawn)
    positions = [new_position_id() for _ in range(2000)]
    assert len(set(positions)) == len(positions)
    assert all(p.startswith("pos_") and len(p) == 16 for p in positions)
    assert all(int(p[4:], 16) >= 0 for p in positions)


def test_ids_taken_many_at_once_are_uuid4_hex_distinct_and_never_handed_out_again() -> None:
    """A run of marks takes its ids at once (_EventIds.many): runs short and long, across
    refills and runs larger than a pool, mixed with single ids, never the same id twice."""
    ids = _EventIds(1)
    drawn: list[str] = []
    for count in [*range(1, 40), 255, 2, 256, 257, 600, 1, 31, 1000, 500, 5]:
        run = ids.many(count)
        assert len(run) == count
        drawn += run
        drawn.append(ids.next())
    assert len(set(drawn)) == len(drawn)
    assert all(_is_uuid4_hex(event_id) for event_id in drawn)
    assert ids.many(0) == []


def test_threads_draw_from_pools_of_their_own() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def draw(into: list[str]) -> None:
        start.wait()
        ids = _EventIds(1)
        into.extend(ids.next() for _ in range(1000))

    threads = [threading.Thread(target=draw, args=(into,)) for into in drawn]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [event_id for into in drawn for event_id in into]
    assert len(set(every)) == len(every) == 4000


def test_a_forked_child_never_hands_out_its_parents_ids() -> None:
    """The pool is refilled after a fork: a child that inherited a half-used pool would give
    the very ids its parent gives next (the same bytes in both processes' memory)."""
    ids = _EventIds(1)
    ids.next()  # the pool is filled and partly used when the process forks

    def draw() -> list[str]:
        child = _EventIds(1)
        return [child.next() for _ in range(8)]

    child_ids = _ids_of_a_forked_child(draw)
    assert len(child_ids) == 8
    parent_ids = {ids.next() for _ in range(8)}
    assert not child_ids & parent_ids
    assert all(_is_uuid4_hex(event_id) for event_id in child_ids)


def test_a_forked_child_taking_many_ids_never_hands_out_its_parents() -> None:
    """As above for runs taken at once, in the parent and in the child (each group makes its
    _EventIds inside its transaction, so after any fork; the parent's goes on after it)."""
    before = _EventIds(1)
    before.many(3)  # the pool is filled and partly used when the process forks
    child_ids = _ids_of_a_forked_child(
        lambda: [*_EventIds(1).many(8), _EventIds(1).next(), *_EventIds(1).many(4)]
    )
    assert len(child_ids) == 13
    parent_ids = {*before.many(8), *_EventIds(1).many(8), before.next()}
    assert len(parent_ids) == 17
    assert not child_ids & parent_ids
