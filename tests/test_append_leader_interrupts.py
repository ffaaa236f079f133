"""An interrupt of the thread leading a group of the store's own appends stays with that
thread; its followers' batches are each stored once and acknowledged.

tests/test_leader_interrupts.py's sweep, for `store.append_blocking` instead of the Ledger's
commands: the main thread leads a group of its own append and another thread's
(tests/_interrupts.py's LedGroup), and a KeyboardInterrupt is raised (a trace function, as a
signal's handler raises it) before each instruction in turn of the group's processing: the
staging, the store's transaction, the settling. Each time the main thread hears it, and the
other thread hears its batch's records, as stored (never the interrupt, never a StoreError
for a group not stored: such a group is run again by the writer thread). The same with an
asyncio task of the main thread leading inline on its loop. At the end the log verifies and
holds each acknowledged record as acknowledged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import anyio
import pytest

from ledger.envelope import Recorded
from ledger.store.base import EventStore, _stage_appends
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import GroupCommit
from tests._events import lone_mark as event
from tests._interrupts import (
    Inject,
    LedGroup,
    counting_entries,
    normal_store,
    task_leads_a_group,
)
from tests.test_leader_interrupts import _codes, assert_usable
from tests.test_write_role_interrupts import role_free

# what the leading thread runs of the group, holding the role: the staging of both batches,
# the store's transaction, the settling, and the group's taking and letting go
GROUP_PROCESSING = frozenset(
    _codes(
        [
            EventStore._commit_appends,
            _stage_appends,
            SQLiteEventStore._commit_appends,
            SQLiteEventStore.run_transaction,
            SQLiteEventStore._insert_proving,
            GroupCommit._lead_one_group,
            GroupCommit._take,
            GroupCommit._stop_leading,
        ]
    )
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    with normal_store(tmp_path / "ledger.db") as opened:
        yield opened


def _log(store: SQLiteEventStore) -> dict[str, Recorded]:
    async def read() -> dict[str, Recorded]:
        await store.verify_chain()
        return {record.event_id: record for record in await store.read()}

    return anyio.run(read)


def _sweep(
    count: int,
    run: Callable[[Inject, int], tuple[object, object]],
    leader: str,
    after_each: Callable[[], None],
) -> list[Recorded]:
    """Interrupt the group's processing before each of its count instructions in turn (run
    leads a group of one batch and a follower's with inject); the leader hears every
    interrupt that landed, the follower its records each time; after_each checks the group
    is usable again. The records acknowledged to the followers."""
    acknowledged: list[Recorded] = []
    failures: list[str] = []
    landed = 0
    for at in range(count):
        inject = Inject(at, codes=GROUP_PROCESSING)
        led, followed = run(inject, at)
        landed += inject.where is not None
        if inject.where is not None and not isinstance(led, KeyboardInterrupt):
            failures.append(f"{inject.where}: {leader} heard {led!r}")
        elif not isinstance(followed, list):
            failures.append(f"{inject.where}: the follower heard {followed!r}")
        if failures:
            break  # one is enough to see: the rest would repeat it
        assert isinstance(followed, list)
        acknowledged += followed
        after_each()
    assert failures == []
    assert landed > count // 2  # the sweep ran through the group's processing
    return acknowledged


def test_an_interrupt_anywhere_in_a_leaders_append_group_stays_with_the_leader(
    store: SQLiteEventStore,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    group = LedGroup(store._append_queue(), store.writer)
    append = store.append_blocking
    append([event("warm")])
    counted = Inject(None, codes=GROUP_PROCESSING)

    def lead_counted() -> object:
        with counted:
            return append([event("count")])

    led, heard = group.run(lead_counted, [partial(append, [event("f-count")])])
    assert isinstance(led, list) and isinstance(heard[0], list), (led, heard)
    assert counted.count > 300  # two batches staged, their transaction, the settling

    def run(inject: Inject, at: int) -> tuple[object, object]:
        def lead() -> object:
            with inject:
                return append([event(f"m{at}")])

        led, (followed,) = group.run(lead, [partial(append, [event(f"f{at}")])])
        return led, followed

    acknowledged = _sweep(counted.count, run, "the leader", partial(assert_usable, group))
    stored = _log(store)
    assert [stored.get(record.event_id) for record in acknowledged] == acknowledged


def test_an_interrupt_in_the_staging_of_a_followers_batch_is_the_leaders(
    store: SQLiteEventStore,
) -> None:
    """The signal lands while the leading main thread stages the other thread's batch (the
    group's second): the main thread hears it, and the other thread's batch is stored all the
    same, run again by the writer thread, and it is told so."""
    assert threading.current_thread() is threading.main_thread()
    group = LedGroup(store._append_queue(), store.writer)
    append = store.append_blocking
    staging = frozenset({_stage_appends.__code__})
    counted = Inject(None, codes=staging)

    def lead_counted() -> object:
        with counted:
            return append([event("count")])

    led, heard = group.run(lead_counted, [partial(append, [event("f-count")])])
    assert isinstance(led, list) and isinstance(heard[0], list), (led, heard)
    inject = Inject(counted.count * 3 // 4, codes=staging)  # in the follower's batch

    def lead() -> object:
        with inject:
            return append([event("main")])

    led, (followed,) = group.run(lead, [partial(append, [event("follow")])])
    # the leader's interrupt, not handed to the follower, the follower's batch not failed
    assert isinstance(led, KeyboardInterrupt) and isinstance(followed, list), (led, followed)
    stored = _log(store)
    assert [stored.get(record.event_id) for record in followed] == followed
    assert "main" not in stored  # the leader's own batch: not stored, its interrupt heard
    assert_usable(group)


def test_an_interrupt_anywhere_in_a_tasks_append_group_stays_with_the_task(
    store: SQLiteEventStore,
) -> None:
    """The same sweep with an asyncio task of the main thread leading (inline on its loop,
    after its turn, in which another thread's append queues behind it): the task hears the
    interrupt (asyncio.run raises it), the other thread its records."""
    assert threading.current_thread() is threading.main_thread()
    queue = store._append_queue()
    queued = counting_entries(queue, followers_only=True)
    store.append_blocking([event("warm")])

    def run(inject: Inject, name: object) -> tuple[object, object]:
        return task_leads_a_group(store, inject, queued, lead=f"m-{name}", follow=f"f-{name}")

    counted = Inject(None, codes=GROUP_PROCESSING)
    led, followed = run(counted, "count")
    assert isinstance(led, list) and isinstance(followed, list), (led, followed)
    assert counted.count > 300

    def usable() -> None:
        assert role_free(store.writer), "the writer role was left held"
        assert not queue._draining and not queue._pending, "left draining"

    acknowledged = _sweep(counted.count, run, "the leading task", usable)
    stored = _log(store)
    assert [stored.get(record.event_id) for record in acknowledged] == acknowledged
