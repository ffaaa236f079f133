"""An interrupted leading task's own job must never be handed to the writer thread.

An asyncio task of the main thread leads a group on its loop (another thread's append queued
behind it in its turn); a KeyboardInterrupt lands in the staging of the task's own batch
(surely not stored), so the group is left unsettled and put back (`GroupCommit._untake`).
The task hears the interrupt, and its own job must be taken out of the queue before the rest
goes to the writer thread: "its job, if it was still queued, is taken back (not run)"
(ledger/store/writer.py, DESIGN). The writer thread is scheduled at the worst moment, as a
2-core machine may: right when it is handed the queue (the main thread waits, on an Event,
until the writer thread has drained what it was handed). No sleep.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from ledger.envelope import Recorded
from ledger.store.base import _stage_appends
from ledger.store.sqlite import SQLiteEventStore
from tests._events import lone_mark as event
from tests._interrupts import (
    WATCHDOG,
    Inject,
    counting_entries,
    normal_store,
    task_leads_a_group,
)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteEventStore]:
    with normal_store(tmp_path / "ledger.db") as opened:
        yield opened


def test_an_interrupted_leading_tasks_own_batch_is_not_run_by_the_writer_thread(
    store: SQLiteEventStore,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    main = threading.get_ident()
    queued = counting_entries(store._append_queue(), followers_only=True)
    writer = store.writer
    real_submit = writer.submit
    drained: list[bool] = []

    def eager_submit(fn: Callable[[], None]) -> None:
        """The writer thread runs what the main thread hands it before the main thread
        goes on (the worst schedule)."""
        if threading.get_ident() != main:
            real_submit(fn)
            return
        ran = threading.Event()

        def then() -> None:
            try:
                fn()
            finally:
                ran.set()

        real_submit(then)
        drained.append(ran.wait(WATCHDOG))

    writer.submit = eager_submit  # type: ignore[method-assign]
    store.append_blocking([event("warm")])
    inject = Inject(3, codes={_stage_appends.__code__})  # in the leader's own batch
    led, followed = task_leads_a_group(store, inject, queued, lead="lead", follow="follow")
    writer.submit = real_submit  # type: ignore[method-assign]
    assert inject.where is not None and isinstance(led, KeyboardInterrupt), (inject.where, led)
    assert drained and all(drained), drained
    assert isinstance(followed, list), followed

    async def log() -> dict[str, Recorded]:
        await store.verify_chain()
        return {record.event_id: record for record in await store.read()}

    stored = anyio.run(log)
    assert [stored.get(record.event_id) for record in followed] == followed
    assert "lead" not in stored, (
        "the task heard its interrupt, and its batch was stored after it by the writer thread"
    )
