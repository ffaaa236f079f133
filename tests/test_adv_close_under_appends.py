"""Attack (adversary): a store closed while plain threads append one event at a time through the
blocking lane (`GroupCommit.run_blocking`: a lone append run where it is, unqueued, or queued
behind another and handed to the writer thread) and tasks of the store's loop append through
the lone-append lane (`run_now`, `_append_alone`).

Every call returns (stored, or refused with a typed StoreError once the store is closing),
nobody hangs, and every append that was acknowledged is in the log exactly once, which
verifies; nothing refused is there.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

WATCHDOG = 60.0
THREADS = 6
BEFORE_CLOSE = 5  # appends each thread makes before the store is closed under them
AFTER = 20  # and how many more each tries


def mark(event_id: str) -> NewEvent:
    return NewEvent(
        stream=event_id.split("-")[0],
        event=PositionMarked(position_id="p", mark_price=Decimal(101)),
        event_id=event_id,
        occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_closing_a_store_under_appending_threads_and_tasks_loses_nothing_acknowledged(
    db_path: Path,
) -> None:
    acked: list[str] = []
    refused: list[BaseException] = []
    lock = threading.Lock()
    reached = threading.Barrier(THREADS + 1, timeout=WATCHDOG)

    async def main() -> None:
        store = SQLiteEventStore(db_path)
        await store.open()

        def thread_body(i: int) -> None:
            for k in range(BEFORE_CLOSE + AFTER):
                if k == BEFORE_CLOSE:
                    reached.wait()
                event_id = f"t{i}-{k}"
                try:
                    store.append_blocking([mark(event_id)])
                except StoreError as exc:
                    with lock:
                        refused.append(exc)
                    continue
                with lock:
                    acked.append(event_id)

        async def task_body(i: int) -> None:
            for k in range(BEFORE_CLOSE + AFTER):
                event_id = f"a{i}-{k}"
                try:
                    await store.append([mark(event_id)])
                except StoreError as exc:
                    refused.append(exc)
                    await anyio.sleep(0)  # a turn to the loop, so close goes on
                    continue
                acked.append(event_id)
                await anyio.sleep(0)

        threads = [
            threading.Thread(target=thread_body, args=(i,), daemon=True) for i in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        async with anyio.create_task_group() as group:
            for i in range(2):
                group.start_soon(task_body, i)
            await anyio.to_thread.run_sync(reached.wait)
            await store.close()  # while the threads' and the tasks' appends go on
        for thread in threads:
            await anyio.to_thread.run_sync(thread.join, WATCHDOG)
        assert not any(thread.is_alive() for thread in threads), "an appending thread hung"

    anyio.run(main)
    assert len(acked) + len(refused) == (THREADS + 2) * (BEFORE_CLOSE + AFTER)
    assert len(acked) >= THREADS * BEFORE_CLOSE

    async def stored() -> list[str]:
        store = SQLiteEventStore(db_path, read_only=True)
        await store.open()
        try:
            report = await store.verify_chain()
            records = await store.read()
            assert report.events == len(records)
            return [r.event_id for r in records]
        finally:
            await store.close()

    ids = anyio.run(stored)
    assert len(ids) == len(set(ids)), "an event stored twice"
    # acknowledged = stored: a refusal stored nothing
    assert set(ids) == set(acked), (set(acked) - set(ids), set(ids) - set(acked))
