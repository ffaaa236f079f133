"""Adversary: `GroupCommit.run_now` (c7482e3) when another connection (as another process
would) holds the file's write lock. A store append tried inline on the loop must not wait
there: WouldWait sends it to the writer thread, which waits for the lock, while the loop goes
on (this test releases the lock from the loop while the append waits; had the loop waited
inline, the release could only come after the busy timeout and the append would fail). The
append ends stored once, after the other writer's rows, for one event and a long batch, and
for the append that owes the loop its turn (every _MAX_SKIPPED_YIELDS-th)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.envelope import NewEvent, Recorded
from ledger.events import PositionMarked
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import _MAX_SKIPPED_YIELDS

pytestmark = pytest.mark.anyio


def _batch(tag: str, size: int) -> list[NewEvent]:
    at = datetime(2024, 4, 5, 6, 7, 8, tzinfo=UTC)
    return [
        NewEvent(
            stream="w",
            event=PositionMarked(position_id="w", mark_price=Decimal(f"2.{j}")),
            event_id=f"{tag}/{j}",
            occurred_at=at,
        )
        for j in range(size)
    ]


@pytest.mark.parametrize("size", [1, 40])
@pytest.mark.parametrize("warm_up", [0, _MAX_SKIPPED_YIELDS + 1])
async def test_an_append_meeting_another_writers_lock_waits_on_the_writer_thread(
    db_path: Path, size: int, warm_up: int
) -> None:
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=5_000)
    await store.open()
    try:
        for i in range(warm_up):  # sequential appends: the skipped-yield count runs up
            await store.append(_batch(f"warm{i}", 1))
        threads: list[int] = []
        real = store.run_transaction

        def counted(unit: Callable[[StoreTransaction], Any]) -> Any:
            threads.append(threading.get_ident())
            return real(unit)

        store.run_transaction = counted  # type: ignore[method-assign]
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            outcome: list[Recorded] = []

            async def append() -> None:
                outcome.extend(await store.append(_batch("locked", size)))

            async with anyio.create_task_group() as group:
                group.start_soon(append)
                await anyio.wait_all_tasks_blocked()
                assert outcome == []  # it waits, and the loop runs this line meanwhile
                other.execute("COMMIT")
            assert [r.event_id for r in outcome] == [f"locked/{j}" for j in range(size)]
            assert threads and threads[-1] != loop_thread  # committed on the writer thread
        finally:
            other.close()
        await store.verify_chain()
        ids = [r.event_id for r in await store.read()]
        assert ids.count("locked/0") == 1 and len(ids) == warm_up + size
    finally:
        await store.close()
