"""Who runs a write transaction: the caller itself when nobody else writes, the store's writer
thread otherwise, and never an event loop waiting for another process's lock.

See DESIGN in ledger/store/writer.py. Threads are told apart by `threading.get_ident()`
recorded inside the deciders and transactions themselves.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
import warnings
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.errors import StoreUnavailable
from ledger.events import PositionMarked, PositionOpened
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.writer import _MAX_SKIPPED_YIELDS, Completion, GroupCommit, WriterThread
from ledger.values import Side
from projections.book import Book

pytestmark = pytest.mark.anyio

SETTINGS = Settings(max_concurrent_positions=1000)


def opening(position_id: str, threads: list[int] | None = None) -> Callable[[Book], Sequence[Plan]]:
    """A decider opening one position that notes the thread it was decided on in threads."""

    def decide(book: Book) -> list[Plan]:
        if threads is not None:
            threads.append(threading.get_ident())
        return [
            Plan(
                PositionOpened(
                    position_id=position_id,
                    symbol=f"{position_id.upper()}USDT",
                    side=Side.BUY,
                    qty=Decimal(2),
                    entry_price=Decimal(10),
                    leverage=3,
                )
            )
        ]

    return decide


def counting_transactions(store: SQLiteEventStore) -> list[int]:
    """The thread of every transaction the store runs from now on."""
    threads: list[int] = []
    real = store.run_transaction

    def counted(unit: Callable[[StoreTransaction], Any]) -> Any:
        threads.append(threading.get_ident())
        return real(unit)

    store.run_transaction = counted  # type: ignore[method-assign]
    return threads


async def test_an_uncontended_async_command_runs_on_its_own_loop_thread(db_path: Path) -> None:
    loop_thread = threading.get_ident()
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        threads: list[int] = []
        records = await ledger.transact(opening("a", threads))
        assert threads == [loop_thread]
        assert [r.seq for r in records] == [1]
        assert "a" in ledger.book.open


async def test_an_uncontended_blocking_command_runs_on_the_calling_thread(db_path: Path) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        threads: list[int] = []
        callers: list[int] = []

        def bot() -> None:
            callers.append(threading.get_ident())
            ledger.transact_blocking(opening("b", threads))

        await anyio.to_thread.run_sync(bot)
        assert threads == callers and callers[0] != threading.get_ident()
        assert "b" in ledger.book.open


async def test_tasks_started_together_commit_in_one_transaction_on_the_loop(
    db_path: Path,
) -> None:
    loop_thread = threading.get_ident()
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        transactions = counting_transactions(ledger.store)  # type: ignore[arg-type]
        threads: list[int] = []
        async with anyio.create_task_group() as group:
            for i in range(50):
                group.start_soon(ledger.transact, opening(f"p{i}", threads))
        assert transactions == [loop_thread]
        assert threads == [loop_thread] * 50
        assert len(ledger.book.open) == 50 and ledger.last_seq == 50


async def test_the_store_appends_inline_too(db_path: Path) -> None:
    store = SQLiteEventStore(db_path)
    await store.open()
    try:
        transactions = counting_transactions(store)
        event = PositionMarked(position_id="x", mark_price=Decimal(1))
        new = NewEvent(stream="x", event=event, event_id="e1", occurred_at=_now())
        records = await store.append([new])
        assert transactions == [threading.get_ident()] and records[0].seq == 1
    finally:
        await store.close()


async def test_an_async_writer_never_holds_its_loop_waiting_for_another_writers_lock(
    db_path: Path,
) -> None:
    """Another connection (as another process would) holds the write lock. The command must
    go to the writer thread and wait there: the loop goes on, so this test can release the
    lock while the command waits. Had the loop waited inline for the lock, the release
    could only come after the busy timeout, and the command would fail with it."""
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=3_000)
    async with Ledger(store=store, settings=SETTINGS) as ledger:
        other = sqlite3.connect(db_path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            threads: list[int] = []
            outcome: list[int] = []

            async def command() -> None:
                records = await ledger.transact(opening("w", threads))
                outcome.extend(r.seq for r in records)

            async with anyio.create_task_group() as group:
                group.start_soon(command)
                # the command tried the lock once on the loop, and now waits on the thread
                await anyio.wait_all_tasks_blocked()
                assert outcome == [] and threads == []
                other.execute("COMMIT")
            assert outcome == [1]
            assert threads and loop_thread not in threads
        finally:
            other.close()


async def test_an_inline_begin_always_runs_with_the_busy_timeout_at_zero(db_path: Path) -> None:
    """Inline on a loop, BEGIN IMMEDIATE is tried once (then the group goes to the writer
    thread, which waits): it runs with the connection's busy timeout at 0, never with the full
    value the connection opens with or the writer thread sets back. A BEGIN running with
    the full value would hold the loop for up to busy_timeout_ms while another process
    writes. Statements are seen through the write connection's trace callback."""
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=3_000)
    await store.open()
    try:
        assert store._conn is not None
        busy = [3_000]  # as the connection opens
        begins: list[tuple[bool, int]] = []

        def trace(sql: str) -> None:
            if sql.startswith("PRAGMA busy_timeout = "):
                busy[0] = int(sql.rsplit(" ", 1)[1])
            elif sql.startswith("BEGIN"):
                begins.append((threading.get_ident() == loop_thread, busy[0]))

        store._conn.set_trace_callback(trace)

        def mark(i: int) -> list[NewEvent]:
            event = PositionMarked(position_id="x", mark_price=Decimal(i))
            return [NewEvent(stream="x", event=event, event_id=f"m{i}", occurred_at=_now())]

        for i in range(3):
            await store.append(mark(i))
        await store.transact(lambda tx: None)  # the writer thread: the full value again
        await store.append(mark(3))
        assert begins == [(True, 0), (True, 0), (True, 0), (False, 3_000), (True, 0)]
    finally:
        await store.close()


def _mark(event_id: str) -> list[NewEvent]:
    event = PositionMarked(position_id="x", mark_price=Decimal(1))
    return [NewEvent(stream="x", event=event, event_id=event_id, occurred_at=_now())]


async def test_a_task_appending_in_a_loop_never_starves_its_event_loop(db_path: Path) -> None:
    """Appends run inline skip their yield while nothing else is ready on the loop (no turn
    of the loop at all: see GroupCommit.run_now), but a task appending event after event
    must still let the loop run a timer that is due: bounded by _MAX_SKIPPED_YIELDS."""
    store = SQLiteEventStore(db_path, synchronous="NORMAL")
    await store.open()
    try:
        for i in range(3):  # past a first lead's yield
            await store.append(_mark(f"first{i}"))
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(0, fired.set)  # due now: the next turn runs it
        appends = 0
        while not fired.is_set() and appends < 200:
            await store.append(_mark(f"e{appends}"))
            appends += 1
        assert fired.is_set(), f"{appends} appends ran and the loop never turned"
    finally:
        await store.close()


async def test_appends_of_another_loop_never_make_this_loop_skip_its_yield_forever(
    db_path: Path,
) -> None:
    """A store written from two loops (two threads): this loop appends once, then the other
    appends 16 times, and so on. The count of skipped yields is the store's, not a thread's:
    had the other loop's leads counted on (or reset) this loop's count, this loop's appends
    would always fall where the count is low, and it would never turn; a lead after another
    loop's yields first."""
    store = SQLiteEventStore(db_path, synchronous="NORMAL")
    await store.open()
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        for i in range(3):  # this loop's leads alone first
            await store.append(_mark(f"alone{i}"))
        fired = asyncio.Event()
        asyncio.get_running_loop().call_later(0, fired.set)  # due now: the next turn runs it
        rounds = 0
        while not fired.is_set() and rounds < 40:
            await store.append(_mark(f"here{rounds}"))
            for i in range(16):  # this loop blocked meanwhile: it does not turn
                there = store.append(_mark(f"there{rounds}-{i}"))
                asyncio.run_coroutine_threadsafe(there, other).result(timeout=30)
            rounds += 1
        assert fired.is_set(), f"{rounds} rounds ran and this loop never turned"
    finally:
        other.call_soon_threadsafe(other.stop)
        thread.join(timeout=30)
        other.close()
        await store.close()


async def test_a_write_waiting_for_itself_is_refused(db_path: Path) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        store = ledger.store
        refused: list[BaseException] = []

        def decide(book: Book) -> list[Plan]:
            event = PositionMarked(position_id="y", mark_price=Decimal(1))
            new = NewEvent(stream="y", event=event, event_id="inner", occurred_at=_now())
            try:
                store.append_blocking([new])
            except StoreUnavailable as exc:
                refused.append(exc)
            return []

        await ledger.transact(decide)
        assert len(refused) == 1 and ledger.last_seq == 0


def test_jobs_left_when_the_writer_stops_fail_instead_of_hanging() -> None:
    writer = WriterThread("test-writer")
    processed: list[int] = []

    class Job:
        def __init__(self) -> None:
            self.done = Completion(blocking=True)
            self.error: BaseException | None = None

    commits: GroupCommit[Job] = GroupCommit(writer, lambda group: processed.append(len(group)))
    writer.stop()
    job = Job()
    commits.run_blocking(job)  # returns: nobody will ever run it, so it is failed
    assert isinstance(job.error, StoreUnavailable) and processed == []


def _now() -> datetime:
    return datetime.now(UTC)


async def test_a_turn_owed_to_the_loop_dropped_unawaited_warns_of_nothing(db_path: Path) -> None:
    """The turn `run_now` owes the loop after a run of jobs it ran without a yield is handed
    back to be awaited; an interrupt landing between its return and the caller's `await`
    drops it. Dropped, it must not warn (a native coroutine, asyncio.sleep(0), reports
    "coroutine ... was never awaited" when collected: under `-W error` an unraisable error,
    found by the lone lane's interrupt sweep). Each dropped here is one a job settled before."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        queue = ledger._jobs
        assert queue is not None
        real = queue.run_now
        dropped: list[int] = []

        def dropping(job: Any) -> Any:
            waiting = real(job)
            if waiting is not None and job.done._future is None:  # settled: the turn
                dropped.append(1)
                del waiting  # as an interrupt before the caller's await leaves it
                return None
            return waiting

        queue.run_now = dropping  # type: ignore[method-assign]
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for i in range(3 * _MAX_SKIPPED_YIELDS):
                await ledger.transact(opening(f"turn{i}"))
            gc.collect()
        assert len(dropped) >= 2
        assert [str(w.message) for w in seen] == []
        assert len(ledger.book.open) == 3 * _MAX_SKIPPED_YIELDS
