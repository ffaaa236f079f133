"""Adversary: an interrupt at each instruction of a Ledger command taken through the lone lane
(9252806: `GroupCommit.run_now` deciding holding the writer role without the queue's lock), on
the real Ledger and SQLite store, in a task of the MAIN thread's loop, where a signal's
handler runs (so `signalled_here` says yes: a job interrupted before it was stored is left
unsettled, which in the lane nobody else may run, since it was never queued).

Each command is caught where it is awaited; after each, the writer role and the queue are
idle. At the end a command succeeds, every acknowledged open is stored once as acknowledged,
every interrupted one at most once, the log verifies, and the live book is the fold of it.
"""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path

import anyio

import ledger.service
import ledger.store.base
import ledger.store.sqlite
import ledger.store.writer
from ledger.envelope import Recorded
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import fold_records
from tests._interrupts import BOUND, Inject, no_cyclic_gc
from tests._workers import book_state
from tests.test_write_role import opening
from tests.test_write_role_interrupts import role_free

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

SETTINGS = Settings(max_concurrent_positions=100_000)
WATCHDOG = 4 * BOUND
FILES = frozenset(
    {
        ledger.store.writer.__file__,
        ledger.service.__file__,
        ledger.store.base.__file__,
        ledger.store.sqlite.__file__,
    }
)


def test_an_interrupt_anywhere_in_a_lone_lane_command_leaves_the_ledger_whole(
    tmp_path: Path,
) -> None:
    assert threading.current_thread() is threading.main_thread()
    db = tmp_path / "ledger.db"
    acknowledged: list[Recorded] = []
    interrupted: list[str] = []
    lanes: list[bool] = []

    async def main() -> tuple[int, int, tuple[object, ...]]:
        with anyio.fail_after(WATCHDOG):  # a role left held hangs the close: fail instead
            return await sweep()

    async def sweep() -> tuple[int, int, tuple[object, ...]]:
        async with Ledger(db, settings=SETTINGS) as live:
            queue = live._jobs
            assert queue is not None
            for name in ("warm1", "warm2"):  # the loop is led from: the lane from now on
                acknowledged.extend(await live.transact(opening(name)))

            def noting(name: str) -> object:
                decide = opening(name)

                def decider(book: object) -> object:
                    lanes.append(not queue._draining)
                    return decide(book)  # type: ignore[arg-type]

                return decider

            async def traced(inject: Inject, name: str) -> None:
                inject.task = asyncio.current_task()
                sys.settrace(inject)
                try:
                    records = await live.transact(noting(name))  # type: ignore[arg-type]
                except KeyboardInterrupt:
                    sys.settrace(None)
                    interrupted.append(name)
                    return
                finally:
                    sys.settrace(None)
                acknowledged.extend(records)

            counted = Inject(None, files=FILES)
            await traced(counted, "count")
            assert lanes == [True], "the counted command did not take the lane"
            landed = 0
            for at in range(counted.count + 20):
                inject = Inject(at, files=FILES)
                await traced(inject, f"p{at}")
                landed += inject.where is not None
                assert (inject.where is None) == (interrupted[-1:] != [f"p{at}"]), inject.where
                assert not queue._draining and not queue._pending, f"{inject.where}: draining"
                assert await asyncio.to_thread(role_free, live.store.writer), inject.where
            acknowledged.extend(await live.transact(opening("after")))
            live_state = book_state(live.book)
            return counted.count, landed, live_state

    count, landed, live_state = asyncio.run(main())
    assert count > 500 and landed >= count  # the sweep ran through the whole command

    async def log() -> list[Recorded]:
        store = SQLiteEventStore(db, read_only=True)
        await store.open()
        try:
            await store.verify_chain()
            return await store.read()
        finally:
            await store.close()

    records = asyncio.run(log())
    by_id = {record.event_id: record for record in records}
    assert [by_id.get(record.event_id) for record in acknowledged] == acknowledged
    opened = [str(getattr(record.event, "position_id", "")) for record in records]
    assert len(opened) == len(set(opened))  # nothing stored twice
    told = {str(getattr(record.event, "position_id", "")) for record in acknowledged}
    assert set(opened) <= told | set(interrupted)
    assert live_state == book_state(fold_records(records))
