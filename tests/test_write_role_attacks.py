"""Attacks on the write role (DESIGN in ledger/store/writer.py): callers that run their own
group inline, asyncio leaders that yield once, groups handed to the writer thread.

Every interleaving here is forced, never hoped for: threads wait on threading.Events set from
inside a transaction, asyncio tasks are ordered by the loop's FIFO of ready callbacks, and
`anyio.wait_all_tasks_blocked` tells when every task waits. A scenario that could hang runs
on a daemon thread joined with a watchdog, so a regression fails the test instead of hanging
the suite.
"""

from __future__ import annotations

import asyncio
import atexit
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.commands import ClosePosition, MarkPosition, OpenPosition
from ledger.envelope import NewEvent, Recorded
from ledger.errors import StoreError, StoreUnavailable
from ledger.events import PositionMarked, PositionOpened
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from ledger.store.base import EventStore, StoreTransaction
from ledger.store.memory import MemoryEventStore
from ledger.store.postgres import PostgresEventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.book import Book
from tests._interrupts import counting_entries
from tests.test_write_role import opening

pytestmark = pytest.mark.anyio

SETTINGS = Settings(max_concurrent_positions=10_000)
WATCHDOG = 60.0  # seconds a scenario may take before it counts as hung
ROOT = Path(__file__).resolve().parents[1]


def marked(event_id: str, stream: str = "x") -> NewEvent:
    event = PositionMarked(position_id=stream, mark_price=Decimal(1))
    return NewEvent(stream=stream, event=event, event_id=event_id, occurred_at=datetime.now(UTC))


def run_on_own_loop(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """asyncio.run(main()) on a daemon thread; fails (instead of hanging) past the watchdog."""
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append(("ok", asyncio.run(main())))
        except BaseException as exc:  # handed to the test's thread
            outcome.append(("raised", exc))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(WATCHDOG)
    assert not thread.is_alive(), "hung: the scenario never finished"
    kind, value = outcome[0]
    if kind == "raised":
        raise value
    return value


def wrap_transactions(store: EventStore, before: Callable[[int], None]) -> list[tuple[int, int]]:
    """Call before(n) ahead of the store's n-th transaction (from 1); returns (n, thread id)."""
    calls: list[tuple[int, int]] = []
    real = store.run_transaction

    def wrapped(unit: Callable[[StoreTransaction], Any]) -> Any:
        calls.append((len(calls) + 1, threading.get_ident()))
        before(len(calls))
        return real(unit)

    store.run_transaction = wrapped  # type: ignore[method-assign]
    return calls


async def log_of(db: Path) -> list[Recorded]:
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        report = await store.verify_chain()
        records = await store.read()
    finally:
        await store.close()
    assert report.events == len(records) == (records[-1].seq if records else 0)
    return records


# -- a blocking call on a thread whose own loop has a leader parked in its yield ----------


def test_a_blocking_command_on_a_loop_whose_task_leads_does_not_hang(db_path: Path) -> None:
    """Task A leads and yields once; before it resumes, a callback on the same loop thread
    makes a blocking command. It must not wait for A (which cannot resume while the loop
    thread blocks): it runs the group itself, A's job included."""

    async def main() -> tuple[int, list[str]]:
        async with Ledger(db_path, settings=SETTINGS) as ledger:

            async def leader() -> None:
                await ledger.transact(opening("a"))

            async def blocking_on_the_loop() -> None:
                ledger.transact_blocking(opening("b"))

            # A runs first (it enters and parks in its yield), then B blocks the loop thread
            await asyncio.gather(asyncio.create_task(leader()), blocking_on_the_loop())
            return ledger.last_seq, sorted(ledger.book.open)

    assert run_on_own_loop(main) == (2, ["a", "b"])


def test_a_blocking_append_on_a_loop_whose_task_leads_does_not_hang(db_path: Path) -> None:
    async def main() -> list[int]:
        store = SQLiteEventStore(db_path)
        await store.open()
        try:
            leader = asyncio.create_task(store.append([marked("a")]))
            await asyncio.sleep(0)  # the leader enters and parks in its yield
            (blocking,) = store.append_blocking([marked("b")])
            (first,) = await leader
            return sorted([first.seq, blocking.seq])
        finally:
            await store.close()

    assert run_on_own_loop(main) == [1, 2]


# -- closing while a caller runs its group inline -------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "memory", "postgres"])
async def test_closing_the_store_while_a_thread_appends_inline_finishes_every_queued_append(
    kind: str, db_path: Path, request: pytest.FixtureRequest
) -> None:
    """A thread holds the role inside its own append; two more appends queue behind it; then
    the store is closed. Close must finish every write queued before it: the inline one on
    the connection it began with, the queued ones before the connection closes."""
    store: EventStore
    if kind == "sqlite":
        store = SQLiteEventStore(db_path)
    elif kind == "memory":
        store = MemoryEventStore()
    else:
        store = PostgresEventStore(request.getfixturevalue("pg_url"))
    await store.open()
    inside, release = threading.Event(), threading.Event()

    def hold_first(n: int) -> None:
        if n == 1:
            inside.set()
            release.wait(WATCHDOG)

    wrap_transactions(store, hold_first)
    entered = counting_entries(store._append_queue())
    outcomes: dict[str, object] = {}

    def append(event_id: str) -> None:
        try:
            outcomes[event_id] = store.append_blocking([marked(event_id)])[0].seq
        except BaseException as exc:
            outcomes[event_id] = exc

    threads = [threading.Thread(target=append, args=("lead",))]
    threads[0].start()
    await anyio.to_thread.run_sync(inside.wait)
    for name in ("q1", "q2"):
        threads.append(threading.Thread(target=append, args=(name,)))
        threads[-1].start()
    for _ in range(3):
        await anyio.to_thread.run_sync(entered.acquire)
    async with anyio.create_task_group() as group:
        group.start_soon(store.close)
        await anyio.wait_all_tasks_blocked()  # close waits for the role the thread holds
        release.set()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, WATCHDOG)
    assert sorted(outcomes) == ["lead", "q1", "q2"]
    assert outcomes["lead"] == 1, outcomes
    assert sorted([outcomes["q1"], outcomes["q2"]]) == [2, 3], outcomes  # type: ignore[type-var]
    if isinstance(store, SQLiteEventStore):
        assert next(r.event_id for r in await log_of(db_path)) == "lead"
    elif isinstance(store, PostgresEventStore):  # what was acknowledged is in the table
        reader = PostgresEventStore(request.getfixturevalue("pg_url"), read_only=True)
        await reader.open()
        try:
            assert next(r.event_id for r in await reader.read()) == "lead"
            assert (await reader.head()).seq == 3
        finally:
            await reader.close()


async def test_closing_the_ledger_while_a_thread_commits_inline_runs_every_queued_job(
    db_path: Path,
) -> None:
    inside, release = threading.Event(), threading.Event()
    opened, close = anyio.Event(), anyio.Event()
    ledgers: list[Ledger] = []

    async def run_ledger() -> None:
        async with Ledger(db_path, settings=SETTINGS) as ledger:
            ledgers.append(ledger)
            opened.set()
            await close.wait()

    def slow(book: Book) -> Sequence[Plan]:
        inside.set()
        release.wait(WATCHDOG)
        return opening("lead")(book)

    outcomes: dict[str, object] = {}
    threads: list[threading.Thread] = []
    async with anyio.create_task_group() as group:
        group.start_soon(run_ledger)
        await opened.wait()
        ledger = ledgers[0]
        entered = counting_entries(ledger._queue())

        def command(name: str, decider: Callable[[Book], Sequence[Plan]]) -> None:
            try:
                outcomes[name] = [r.seq for r in ledger.transact_blocking(decider)]
            except BaseException as exc:
                outcomes[name] = exc

        threads.append(threading.Thread(target=command, args=("lead", slow)))
        threads[0].start()
        await anyio.to_thread.run_sync(inside.wait)
        for name in ("q1", "q2", "q3"):
            threads.append(threading.Thread(target=command, args=(name, opening(name))))
            threads[-1].start()
        for _ in range(4):
            await anyio.to_thread.run_sync(entered.acquire)
        close.set()  # the ledger closes while the thread holds the role, three jobs queued
        await anyio.wait_all_tasks_blocked()
        release.set()
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, WATCHDOG)
    assert outcomes["lead"] == [1], outcomes
    queued = sorted(s for n in ("q1", "q2", "q3") for s in outcomes[n])  # type: ignore[attr-defined]
    assert queued == [2, 3, 4], outcomes
    assert len(await log_of(db_path)) == 4


# -- KeyboardInterrupt-like exceptions inside an inline transaction --------------------------


def test_an_interrupt_during_an_inline_append_reaches_its_thread_and_the_store_goes_on(
    db_path: Path,
) -> None:
    """A KeyboardInterrupt (as a signal delivers it to the thread running the group inline)
    must reach that thread as itself, not as a StoreError a retry loop would swallow; nothing
    is stored, and the store's role is free again."""

    async def main() -> tuple[str, list[int]]:
        store = SQLiteEventStore(db_path)
        await store.open()
        try:

            def interrupt_first(n: int) -> None:
                if n == 1:
                    raise KeyboardInterrupt

            calls = wrap_transactions(store, interrupt_first)

            def bot() -> str:
                try:
                    store.append_blocking([marked("k1")])
                except KeyboardInterrupt:
                    return "interrupted"
                except StoreError as exc:
                    return f"told {exc!r}"
                return "stored"

            heard = await anyio.to_thread.run_sync(bot)
            assert calls[0][1] != threading.get_ident()  # it ran inline on the bot's thread
            (after,) = await store.append([marked("k2")])
            return heard, [after.seq]
        finally:
            await store.close()

    assert run_on_own_loop(main) == ("interrupted", [1])


def test_an_interrupt_during_an_inline_command_reaches_its_thread_and_the_ledger_goes_on(
    db_path: Path,
) -> None:
    async def main() -> tuple[str, int, list[str]]:
        async with Ledger(db_path, settings=SETTINGS) as ledger:

            def interrupt_first(n: int) -> None:
                if n == 1:
                    raise KeyboardInterrupt

            wrap_transactions(ledger.store, interrupt_first)

            def bot() -> str:
                try:
                    ledger.transact_blocking(opening("k1"))
                except KeyboardInterrupt:
                    return "interrupted"
                except StoreError as exc:
                    return f"told {exc!r}"
                return "stored"

            heard = await anyio.to_thread.run_sync(bot)
            await ledger.transact(opening("k2"))
            return heard, ledger.last_seq, sorted(ledger.book.open)

    assert run_on_own_loop(main) == ("interrupted", 1, ["k2"])


class Poison(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit inside a decider looks like."""


async def test_a_base_exception_in_a_decider_on_the_loop_fails_its_group_and_frees_the_role(
    db_path: Path,
) -> None:
    loop_thread = threading.get_ident()
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        transactions = wrap_transactions(ledger.store, lambda n: None)

        def poisoned(book: Book) -> list[Plan]:
            raise Poison

        good = asyncio.create_task(ledger.transact(opening("g")))
        bad = asyncio.create_task(ledger.transact(poisoned))
        await asyncio.wait([good, bad])
        assert isinstance(bad.exception(), Poison)  # its own exception, in its own caller
        error = good.exception()
        assert isinstance(error, StoreError) and "rolled back" in str(error)
        assert transactions == [(1, loop_thread)]  # one group, inline on the loop
        assert ledger.last_seq == 0
        (record,) = await ledger.transact(opening("after"))
        assert record.seq == 1 and transactions[-1] == (2, loop_thread)
    assert [r.stream for r in await log_of(db_path)] == ["after"]


# -- cancellation -----------------------------------------------------------------------------


async def test_a_leader_cancelled_in_its_yield_still_runs_the_group_it_leads(
    db_path: Path,
) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        leader = asyncio.create_task(ledger.transact(opening("lead")))
        follower = asyncio.create_task(ledger.transact(opening("follow")))
        await asyncio.sleep(0)  # both entered: the leader is parked in its yield
        leader.cancel()
        (record,) = await follower
        with pytest.raises(asyncio.CancelledError):
            await leader
        # the cancelled leader's job was taken with the group: committed, not lost
        assert sorted(ledger.book.open) == ["follow", "lead"]
        assert record.seq in (1, 2) and ledger.last_seq == 2
        (again,) = await ledger.transact(opening("next"))  # nobody is left draining
        assert again.seq == 3
    assert len(await log_of(db_path)) == 3


async def test_a_cancelled_follower_does_not_stop_its_group(db_path: Path) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        leader = asyncio.create_task(ledger.transact(opening("lead")))
        follower = asyncio.create_task(ledger.transact(opening("follow")))
        await asyncio.sleep(0)
        follower.cancel()
        await leader
        with pytest.raises(asyncio.CancelledError):
            await follower
        assert ledger.last_seq == 2  # a cancelled caller's job may still commit
        (again,) = await ledger.transact(opening("next"))
        assert again.seq == 3


# -- WouldWait after a DuplicateEventId retry -------------------------------------------------


async def test_would_wait_on_the_duplicate_retry_hands_the_group_to_the_writer_thread(
    db_path: Path,
) -> None:
    """An inline async append stages a stored event_id: the insert fails, and the retry (this
    time asking) finds the lock taken by another connection: WouldWait. The writer thread
    must run the group once the lock is free: the stored record for the old id, one new row
    for the new id, nothing twice."""
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=30_000)
    await store.open()
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        (old,) = await store.append([marked("old")])

        def contend(n: int) -> None:
            if n == 2:  # the retry, asking: another writer has the lock now
                other.execute("BEGIN IMMEDIATE")
            elif n == 3:  # the writer thread: the other writer is done
                other.execute("COMMIT")

        calls = wrap_transactions(store, contend)
        records = await store.append([marked("old"), marked("new")])
        # the writer thread starts the group afresh: not asking, refused, then asking
        assert [c[0] for c in calls] == [1, 2, 3, 4]
        assert calls[0][1] == calls[1][1] == loop_thread
        assert calls[2][1] == calls[3][1] != loop_thread
        assert records[0] == old and records[1].seq == 2
        assert [r.event_id for r in await store.read()] == ["old", "new"]
    finally:
        other.close()
        await store.close()


# -- another process holds the lock ----------------------------------------------------------


def hold_lock(db: str, locked: Any, release: Any) -> None:
    """A child process: take the write lock, say so, hold it until told."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    release.wait(WATCHDOG)
    conn.execute("COMMIT")
    conn.close()


async def test_a_lock_held_past_the_busy_timeout_is_a_typed_error_and_the_loop_goes_on(
    db_path: Path,
) -> None:
    """Another process holds the write lock longer than the busy timeout: the async command
    fails with StoreUnavailable after the timeout, on the writer thread (the loop runs this
    test meanwhile), and once the lock is free the next command commits, inline again."""
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=300)
    context = multiprocessing.get_context("spawn")
    locked, release = context.Event(), context.Event()
    async with Ledger(store=store, settings=SETTINGS) as ledger:
        begins = record_busy_timeouts(store)
        holder = context.Process(target=hold_lock, args=(str(db_path), locked, release))
        holder.start()
        try:
            await anyio.to_thread.run_sync(locked.wait, WATCHDOG)
            outcome: list[BaseException] = []

            async def command() -> None:
                try:
                    await ledger.transact(opening("late"))
                except StoreUnavailable as exc:
                    outcome.append(exc)

            async with anyio.create_task_group() as group:
                group.start_soon(command)
                await anyio.wait_all_tasks_blocked()
                # the loop is free while the writer thread waits out the busy timeout
                assert outcome == [] and ledger.last_seq == 0
            assert len(outcome) == 1 and "lock" in str(outcome[0])
        finally:
            release.set()
            await anyio.to_thread.run_sync(holder.join, WATCHDOG)
        # after the failed wait the write connection is reopened; the loop still never waits
        (record,) = await ledger.transact(opening("after"))
        assert record.seq == 1
        assert begins[0] == (loop_thread, 0, "would wait")
        assert begins[1][0] != loop_thread and begins[1][1:] == (300, "failed")
        assert begins[-1] == (loop_thread, 0, "began")
    assert [r.stream for r in await log_of(db_path)] == ["after"]


def record_busy_timeouts(store: SQLiteEventStore) -> list[tuple[int, int, str]]:
    """(thread, the connection's busy_timeout as SQLite has it, outcome) of every BEGIN."""
    seen: list[tuple[int, int, str]] = []
    real = store._begin

    def begin(conn: sqlite3.Connection | sqlite3.Cursor) -> None:  # the writer's cursor
        outcome = "began"
        try:
            real(conn)
        except BaseException as exc:
            outcome = "would wait" if type(exc).__name__ == "WouldWait" else "failed"
            raise
        finally:
            (busy,) = conn.execute("PRAGMA busy_timeout").fetchone()
            seen.append((threading.get_ident(), int(busy), outcome))

    store._begin = begin  # type: ignore[method-assign]
    return seen


async def test_after_a_reconnect_the_loop_never_waits_and_the_thread_waits_patiently(
    db_path: Path,
) -> None:
    """A storage fault (here a failed lock wait) makes the next write reopen the connection,
    whose busy timeout starts at the full value: an inline leader must still set it to 0
    before its one attempt, and the writer thread back to the full value."""
    loop_thread = threading.get_ident()
    store = SQLiteEventStore(db_path, busy_timeout_ms=300)
    await store.open()
    other = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    try:
        begins = record_busy_timeouts(store)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable):
            await store.append([marked("fails")])  # WouldWait, then the thread times out
        # reconnect pending; the lock is still taken: the inline attempt must not wait
        store._busy_timeout_ms = 30_000  # the writer thread will wait as long as it takes

        def free_lock(n: int) -> None:
            if threading.get_ident() != loop_thread:
                other.execute("COMMIT")

        wrap_transactions(store, free_lock)
        (record,) = await store.append([marked("after")])
        assert record.seq == 1
        assert [b[1:] for b in begins] == [
            (0, "would wait"),
            (300, "failed"),
            (0, "would wait"),
            (30_000, "began"),
        ]
        assert [b[0] == loop_thread for b in begins] == [True, False, True, False]
    finally:
        other.close()
        await store.close()


# -- a decider calling back into the ledger ---------------------------------------------------


async def test_a_decider_running_inline_on_a_thread_cannot_wait_for_another_write(
    db_path: Path,
) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        refused: list[BaseException] = []

        def reentrant(book: Book) -> Sequence[Plan]:
            try:
                ledger.transact_blocking(opening("inner"))
            except StoreUnavailable as exc:
                refused.append(exc)
            return opening("outer")(book)

        await anyio.to_thread.run_sync(ledger.transact_blocking, reentrant)
        assert len(refused) == 1 and sorted(ledger.book.open) == ["outer"]


# -- other async backends ---------------------------------------------------------------------


def test_trio_commands_go_to_the_writer_thread_and_commit(tmp_path: Path) -> None:
    """Under trio (no asyncio loop to resolve a future on) every group goes to the writer
    thread, and tasks and a plain thread still share its transactions. The memory store:
    the SQLite store reads through aiosqlite, which is asyncio's."""
    pytest.importorskip("trio", reason="trio is not installed: the trio backend is not tested")

    async def main() -> tuple[int, set[int], int]:
        threads: set[int] = set()
        store = MemoryEventStore()
        real = store.run_transaction

        def counted(unit: Callable[[StoreTransaction], Any]) -> Any:
            threads.add(threading.get_ident())
            return real(unit)

        store.run_transaction = counted  # type: ignore[method-assign]
        async with Ledger(
            store=store, snapshot_path=tmp_path / "positions.json", settings=SETTINGS
        ) as ledger:
            async with anyio.create_task_group() as group:
                for i in range(20):
                    group.start_soon(ledger.transact, opening(f"t{i}"))
                group.start_soon(anyio.to_thread.run_sync, ledger.transact_blocking, opening("b"))
            return ledger.last_seq, threads, len(ledger.book.open)

    last_seq, threads, still_open = anyio.run(main, backend="trio")
    assert last_seq == 21 and still_open == 21
    assert threading.get_ident() not in threads  # never on trio's own thread


# -- mixed async + blocking + processes on one file -------------------------------------------

PROCESSES = 3
ROUNDS = 8


def hammer(db: str, index: int, start: Any) -> None:
    """A child process: async tasks and plain threads of one Ledger, all writing at once."""
    anyio.run(_hammer, db, index, start)


async def _hammer(db: str, index: int, start: Any) -> None:
    async with Ledger(db, settings=SETTINGS) as ledger:
        await anyio.to_thread.run_sync(start.wait, WATCHDOG)
        await _mixed_rounds(ledger, f"p{index}")


async def _mixed_rounds(ledger: Ledger, prefix: str) -> None:
    for k in range(ROUNDS):
        async with anyio.create_task_group() as group:
            for task in range(3):
                group.start_soon(_lifecycle_async, ledger, f"{prefix}-a{task}-{k}")
            for thread in range(2):
                group.start_soon(
                    anyio.to_thread.run_sync, _lifecycle_blocking, ledger, f"{prefix}-b{thread}-{k}"
                )


def _commands(pid: str) -> list[OpenPosition | MarkPosition | ClosePosition]:
    return [
        OpenPosition(
            position_id=pid,
            symbol=f"{pid.upper().replace('-', '')}USDT",
            side=Side.BUY,
            qty=Decimal(2),
            entry_price=Decimal(100),
            leverage=5,
        ),
        MarkPosition(position_id=pid, mark_price=Decimal("101.5")),
        ClosePosition(position_id=pid, price=Decimal(103)),
    ]


async def _lifecycle_async(ledger: Ledger, pid: str) -> None:
    for command in _commands(pid):
        await ledger.execute(command)


def _lifecycle_blocking(ledger: Ledger, pid: str) -> None:
    for command in _commands(pid):
        ledger.execute_blocking(command)


def test_async_blocking_and_processes_hammering_one_file_keep_one_chain(
    db_path: Path,
) -> None:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES + 1, timeout=WATCHDOG)
    workers = [
        context.Process(target=hammer, args=(str(db_path), i, start)) for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()

    async def parent() -> None:
        async with Ledger(db_path, settings=SETTINGS) as ledger:
            await anyio.to_thread.run_sync(start.wait, WATCHDOG)
            await _mixed_rounds(ledger, "parent")

    anyio.run(parent)
    for worker in workers:
        worker.join(WATCHDOG)
        if worker.is_alive():
            worker.kill()
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    records = anyio.run(log_of, db_path)
    assert [r.seq for r in records] == list(range(1, len(records) + 1))
    # the settings differ from the defaults: the first ledger to open records them, once
    assert [type(r.event).__name__ for r in records if r.stream == "account"] == ["RulesConfigured"]
    records = [r for r in records if r.stream != "account"]
    positions = (PROCESSES + 1) * ROUNDS * 5
    assert len(records) == positions * 3
    assert len({r.event_id for r in records}) == len(records)
    by_stream: dict[str, list[str]] = {}
    for r in records:
        by_stream.setdefault(r.stream, []).append(type(r.event).__name__)
    assert len(by_stream) == positions
    assert all(
        kinds == ["PositionOpened", "PositionMarked", "PositionClosed"]
        for kinds in by_stream.values()
    )
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--db", str(db_path), "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WATCHDOG,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


# -- ThreadSafePositionManager: its own loop thread, many threads, closing under them ----------


def open_kwargs(symbol: str) -> dict[str, object]:
    return {
        "symbol": symbol,
        "side": "long",
        "entry_price": 100,
        "position_size": 200,
        "leverage": 5,
    }


def test_the_manager_called_on_its_own_loop_while_a_task_there_leads(tmp_path: Path) -> None:
    """Code on the ledger's own loop thread (as a sync or a subscriber runs there) starts an
    async command, which parks in its yield as leader, then makes a blocking manager call."""
    manager = ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    )
    portal = manager._portal
    assert portal is not None

    async def on_the_ledgers_loop() -> tuple[str, list[int]]:
        leader = asyncio.create_task(manager.ledger.transact(opening("async")))
        await asyncio.sleep(0)  # the leader entered and is parked in its yield
        pid = manager.thread_safe_create_position(**open_kwargs("BLOCKUSDT"))
        return pid, [r.seq for r in await leader]

    outcome: list[tuple[str, list[int]]] = []
    caller = threading.Thread(
        target=lambda: outcome.append(portal.call(on_the_ledgers_loop)), daemon=True
    )
    caller.start()
    caller.join(WATCHDOG)
    if caller.is_alive():  # a hung loop cannot be closed either: leave it to its daemon
        atexit.unregister(manager.close)
        pytest.fail("hung: a blocking call on the ledger's loop")
    try:
        [(pid, seqs)] = outcome
        assert seqs in ([1], [2])
        assert {p.position_id for p in manager.exact.get_active_positions()} == {pid, "async"}
    finally:
        manager.close()


def transacting(
    decider: Callable[[Book], Sequence[Plan]],
) -> Callable[[Ledger], Coroutine[Any, Any, list[Recorded]]]:
    return lambda ledger: ledger.transact(decider)


def test_many_threads_and_async_commands_on_the_managers_loop_then_close_under_them(
    tmp_path: Path,
) -> None:
    """Eight threads make blocking commands while four others drive async commands on the
    ledger's loop (the path the Bybit sync takes); then the manager closes while a last wave
    runs. Every call returns (stored, or StoreUnavailable once closed), and every stored
    position is in the log, which verifies."""
    db = tmp_path / "ledger.db"
    manager = ThreadSafePositionManager(tmp_path / "positions.json", db_path=db, settings=SETTINGS)
    stored: list[str] = []
    refused: list[BaseException] = []
    lock = threading.Lock()
    ready = threading.Barrier(12 + 1, timeout=WATCHDOG)
    reached = threading.Barrier(12 + 1, timeout=WATCHDOG)  # eight commands each, then close

    def blocking(i: int) -> None:
        ready.wait()
        for k in range(12):
            if k == 8:
                reached.wait()
            try:
                pid = manager.thread_safe_create_position(**open_kwargs(f"B{i}K{k}USDT"))
            except StoreUnavailable as exc:
                with lock:
                    refused.append(exc)
                continue
            with lock:
                stored.append(pid)

    def via_loop(i: int) -> None:
        ready.wait()
        for k in range(12):
            if k == 8:
                reached.wait()
            pid = f"a{i}k{k}"
            try:
                manager._acall(transacting(opening(pid)))
            except StoreUnavailable as exc:
                with lock:
                    refused.append(exc)
                continue
            with lock:
                stored.append(pid)

    threads = [threading.Thread(target=blocking, args=(i,), daemon=True) for i in range(8)]
    threads += [threading.Thread(target=via_loop, args=(i,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    ready.wait()
    reached.wait()
    manager.close()  # while the last wave runs
    for thread in threads:
        thread.join(WATCHDOG)
    assert not any(thread.is_alive() for thread in threads), "a caller hung across close"
    assert len(stored) + len(refused) == 12 * 12
    assert len(stored) >= 8 * 12  # the first eight commands of each thread came before close
    records = anyio.run(log_of, db)
    opened = [r.stream for r in records if isinstance(r.event, PositionOpened)]
    assert sorted(opened) == sorted(stored)  # acknowledged = stored, nothing twice


# -- a subscriber writing back into the ledger ---------------------------------------------


def test_a_subscriber_writing_back_blocking_and_async_never_hangs(db_path: Path) -> None:
    """A subscriber on the ledger's loop answers each open with a blocking command (on the
    loop thread) and an async one, while a task of the same loop leads a group of its own."""

    async def main() -> tuple[list[str], int, int]:
        async with Ledger(db_path, settings=SETTINGS) as ledger:
            answered: list[str] = []

            async def subscriber() -> None:
                async for record in ledger.subscribe():
                    name = record.stream
                    if not isinstance(record.event, PositionOpened) or name[0] != "o":
                        continue
                    leader = asyncio.create_task(ledger.transact(opening(f"t{name}")))
                    await asyncio.sleep(0)  # a task of this loop leads, parked in its yield
                    ledger.transact_blocking(opening(f"b{name}"))
                    await ledger.transact(opening(f"a{name}"))
                    await leader
                    answered.append(name)
                    if len(answered) == 5:
                        return

            async with anyio.create_task_group() as group:
                group.start_soon(subscriber)
                await anyio.wait_all_tasks_blocked()
                for i in range(5):
                    await ledger.transact(opening(f"o{i}"))
            return sorted(answered), len(ledger.book.open), ledger.last_seq

    assert run_on_own_loop(main) == ([f"o{i}" for i in range(5)], 20, 20)
    assert len(anyio.run(log_of, db_path)) == 20
