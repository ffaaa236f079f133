"""Many writers at once: threads through the blocking manager, tasks through one Ledger, and
OS processes on one database file. Afterwards the log is gapless, nothing is lost or doubled,
the chain verifies, and what the writers saw equals a serial replay of the log.

Races start from barriers (threading.Barrier, multiprocessing Barrier, an anyio Event), never
from sleeps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import multiprocessing
import sqlite3
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.commands import ClosePosition, MarkPosition, OpenPosition, RecordPartialExit
from ledger.envelope import Recorded
from ledger.errors import (
    DuplicatePosition,
    ExitExceedsPosition,
    LedgerError,
    PositionAlreadyClosed,
)
from ledger.events import PositionClosed, PositionOpened
from ledger.seed_edge import SeedPosition
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.positions import Position
from tests._workers import (
    POSITIONS_PER_TASK,
    PROCESS_SETTINGS,
    RACE_SYMBOL,
    TASKS_PER_PROCESS,
    Audit,
    audit_log,
    book_state,
    kind,
    kinds,
    process_worker,
)

THREADS = 16
TASKS = 500
PROCESSES = 4
JOIN_SECONDS = 120.0
SETTINGS = Settings(max_concurrent_positions=1000)


# -- helpers ------------------------------------------------------------------------------


@pytest.fixture
def manager(tmp_path: Path, db_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=db_path, settings=SETTINGS
    ) as opened:
        yield opened


def run_threads(count: int, work: Callable[[int], object]) -> list[object]:
    """Run work(i) in `count` real threads released together by a barrier; return each
    thread's result, or the exception it raised."""
    barrier = threading.Barrier(count)
    results: list[object] = [None] * count

    def body(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work(index)
        except BaseException as exc:  # handed to the test, which asserts on it
            results[index] = exc

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(JOIN_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "a thread is stuck"
    return results


def check_manager_matches_log(manager: ThreadSafePositionManager, db: Path) -> Audit:
    """The manager's live views equal a serial replay of the log, which audits clean."""
    audit = anyio.run(audit_log, db)
    fold = audit.fold
    assert manager.exact.get_active_positions() == list(fold.open.values())
    assert manager.exact.get_closed_positions() == list(fold.closed.values())
    assert manager.exact.get_session_summary() == fold.summary()
    return audit


def open_kwargs(symbol: str, side: str = "long", size: object = 200) -> dict[str, object]:
    return {
        "symbol": symbol,
        "side": side,
        "entry_price": 100,
        "position_size": size,
        "leverage": 5,
    }


# -- threads through ThreadSafePositionManager ----------------------------------------------


def test_sixteen_threads_each_working_their_own_positions(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    cycles = 4

    def work(index: int) -> Counter[str]:
        acked: Counter[str] = Counter()
        symbol = f"T{index}USDT"
        for cycle in range(cycles):
            pid = manager.thread_safe_create_position(**open_kwargs(symbol))  # qty 2
            acked["PositionOpened"] += 1
            assert manager.update_position_price(pid, 100 + cycle + 1)
            acked["PositionMarked"] += 1
            assert manager.register_partial_exit(pid, 100, 105, None, "tp1")  # qty 1
            acked["PartialExitRecorded"] += 1
            seen = manager.get_position(pid)
            assert seen is not None and seen.qty == 1, "a thread reads its own write"
            if cycle % 2:
                assert manager.close_position(pid, "done", exit_price=103)
            else:
                assert manager.register_partial_exit(pid, 100, 106, None, "tp2")  # + close
                acked["PartialExitRecorded"] += 1
            acked["PositionClosed"] += 1
            assert manager.get_position(pid) is None
        # one position per thread stays open; the other side of the same symbol is allowed
        manager.thread_safe_create_position(**open_kwargs(symbol, side="short"))
        acked["PositionOpened"] += 1
        return acked

    results = run_threads(THREADS, work)
    acked: Counter[str] = Counter()
    for result in results:
        assert isinstance(result, Counter), repr(result)
        acked.update(result)
    audit = check_manager_matches_log(manager, db_path)
    assert kinds(audit.records) == acked
    assert acked["PositionOpened"] == THREADS * (cycles + 1)
    assert len(audit.fold.open) == THREADS
    assert len(audit.fold.closed) == THREADS * cycles


def test_sixteen_threads_closing_one_position_exactly_one_wins(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    pid = manager.thread_safe_create_position(**open_kwargs("ONEUSDT"))
    results = run_threads(THREADS, lambda i: manager.close_position(pid, f"thread {i}", 101))
    assert sorted(map(repr, results)) == ["False"] * (THREADS - 1) + ["True"]
    audit = check_manager_matches_log(manager, db_path)
    closes = [r for r in audit.records if isinstance(r.event, PositionClosed)]
    assert len(closes) == 1
    winner = results.index(True)
    assert audit.fold.closed[pid].close_reason == f"thread {winner}"


def test_seventeen_threads_each_exiting_a_sixteenth_never_exceed_the_size(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    size = Decimal(1600)  # qty 16 at entry 100: each thread exits 100 (qty 1)
    pid = manager.thread_safe_create_position(**open_kwargs("SIXTEENUSDT", size=size))
    results = run_threads(
        THREADS + 1, lambda i: manager.register_partial_exit(pid, size / THREADS, 110, None, "x")
    )
    assert results.count(True) == THREADS
    extra = [r for r in results if r is not True]
    # the extra one comes after the position closed (False), or is refused as too large
    assert len(extra) == 1 and (extra[0] is False or isinstance(extra[0], ExitExceedsPosition))
    audit = check_manager_matches_log(manager, db_path)
    closed = audit.fold.closed[pid]
    assert len(closed.partial_exits) == THREADS
    assert sum(e.qty for e in closed.partial_exits) == closed.initial_qty == 16
    assert kinds(audit.records) == Counter(
        PositionOpened=1, PartialExitRecorded=THREADS, PositionClosed=1
    )


def test_sixteen_threads_over_exiting_one_position_get_exit_exceeds(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    pid = manager.thread_safe_create_position(**open_kwargs("OVERUSDT", size=1000))  # qty 10
    results = run_threads(
        THREADS, lambda i: manager.register_partial_exit(pid, 300, 90, None, f"t{i}")
    )  # qty 3 each: three fit, one unit stays
    assert results.count(True) == 3
    refused = [r for r in results if r is not True]
    assert len(refused) == THREADS - 3
    assert all(isinstance(r, ExitExceedsPosition) for r in refused), refused
    audit = check_manager_matches_log(manager, db_path)
    position = audit.fold.open[pid]
    assert position.qty == 1
    assert sum(e.qty for e in position.partial_exits) == 9
    assert kinds(audit.records) == Counter(PositionOpened=1, PartialExitRecorded=3)


# -- tasks through one Ledger ---------------------------------------------------------------


@pytest.mark.anyio
async def test_five_hundred_tasks_through_one_ledger_with_group_commit(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acked: list[Recorded] = []
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        transactions = 0
        original_transaction = ledger.store.run_transaction

        def counting_transaction(unit: Callable[[StoreTransaction], Any]) -> Any:
            nonlocal transactions
            transactions += 1
            return original_transaction(unit)

        monkeypatch.setattr(ledger.store, "run_transaction", counting_transaction)

        async def gated(gate: anyio.Event, job: Callable[[], Any]) -> None:
            await gate.wait()
            await job()

        # phase 1: 500 opens at once, plus the one position every racer will try to close
        gate = anyio.Event()
        shared = OpenPosition(
            position_id="shared",
            symbol="SHAREDUSDT",
            side=Side.SELL,
            qty=Decimal(5),
            entry_price=Decimal(20),
            leverage=2,
        )

        async def open_one(i: int) -> None:
            command = OpenPosition(
                position_id=f"task-{i}",
                symbol=f"A{i}USDT",
                side=Side.BUY,
                qty=Decimal(4),
                entry_price=Decimal(10),
                leverage=3,
            )
            acked.extend(await ledger.execute(command))

        async def open_shared() -> None:
            acked.extend(await ledger.execute(shared))

        async with anyio.create_task_group() as group:
            for i in range(TASKS):
                group.start_soon(gated, gate, lambda i=i: open_one(i))
            group.start_soon(gated, gate, open_shared)
            gate.set()
        opening_transactions = transactions
        assert len(ledger.book.open) == TASKS + 1
        # far fewer commits than commands: jobs queued behind a commit share the next one
        assert opening_transactions <= (TASKS + 1) // 10, opening_transactions

        # phase 2: every task marks, exits, closes; 50 more race to close the shared one
        gate = anyio.Event()
        outcomes: list[str] = []

        async def lifecycle(i: int) -> None:
            pid = f"task-{i}"
            acked.extend(
                await ledger.execute(MarkPosition(position_id=pid, mark_price=Decimal(11)))
            )
            exit_qty = Decimal(1) if i % 2 else Decimal(4)  # even tasks exit all: exit + close
            acked.extend(
                await ledger.execute(
                    RecordPartialExit(position_id=pid, qty=exit_qty, price=Decimal(12))
                )
            )
            if i % 2:
                acked.extend(await ledger.execute(ClosePosition(position_id=pid)))

        async def close_shared(i: int) -> None:
            try:
                acked.extend(
                    await ledger.execute(
                        ClosePosition(position_id="shared", price=Decimal(19), reason=str(i))
                    )
                )
                outcomes.append("closed")
            except PositionAlreadyClosed:
                outcomes.append("already closed")

        transactions = 0
        async with anyio.create_task_group() as group:
            for i in range(TASKS):
                group.start_soon(gated, gate, lambda i=i: lifecycle(i))
            for i in range(50):
                group.start_soon(gated, gate, lambda i=i: close_shared(i))
            gate.set()
        commands = TASKS * 2 + TASKS // 2 + 50
        assert transactions <= commands // 10, transactions
        assert sorted(outcomes) == ["already closed"] * 49 + ["closed"]

        live = book_state(ledger.book)
        audit = await audit_log(db_path)
        assert live == book_state(audit.fold)
        assert [(r.seq, r.event_id, r.hash) for r in sorted(acked, key=lambda r: r.seq)] == [
            (r.seq, r.event_id, r.hash) for r in audit.records
        ]
        assert kinds(audit.records) == kinds(acked)
        assert kinds(audit.records) == Counter(
            PositionOpened=TASKS + 1,
            PositionMarked=TASKS,
            PartialExitRecorded=TASKS,
            PositionClosed=TASKS + 1,
        )
        # each commit stamps its rows with one recorded_at: the log itself shows the grouping
        assert len({r.recorded_at for r in audit.records}) <= opening_transactions + transactions
        assert not audit.fold.open
    # a fresh start reads the same book back
    async with Ledger(db_path, settings=SETTINGS) as again:
        assert book_state(again.book) == book_state(audit.fold)


# -- OS processes on one database file -------------------------------------------------------


def run_processes(mode: str, db: Path, tmp_path: Path) -> list[dict[str, Any]]:
    """Start PROCESSES spawned workers, released together by a barrier; return their reports.

    Unless the test made it already, the database file does not exist yet: the workers'
    ledgers create it together as they start.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES, timeout=JOIN_SECONDS)
    done = context.Barrier(PROCESSES, timeout=JOIN_SECONDS)
    outs = [tmp_path / f"worker-{i}-{mode}.json" for i in range(PROCESSES)]
    workers = [
        context.Process(target=process_worker, args=(mode, str(db), i, start, done, str(outs[i])))
        for i in range(PROCESSES)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(JOIN_SECONDS)
    for worker in workers:
        if worker.is_alive():
            worker.kill()
            worker.join()
    assert [w.exitcode for w in workers] == [0] * PROCESSES
    return [json.loads(out.read_text(encoding="utf-8")) for out in outs]


def check_processes_against_log(
    reports: list[dict[str, Any]],
    db: Path,
    parent_acked: Sequence[Recorded] = (),
) -> Audit:
    audit = anyio.run(audit_log, db)
    stored = [[r.seq, r.event_id, kind(r)] for r in audit.records]
    acked = sorted(
        [[r.seq, r.event_id, kind(r)] for r in parent_acked]
        + [event for report in reports for event in report["acked"]]
    )
    assert acked == stored, "every stored event acknowledged by exactly one process"
    for report in reports:
        assert report["live_matches_replay"], "a process's book differs from the replay"
        assert report["last_seq"] == len(audit.records)

    async def fresh() -> tuple[object, ...]:
        async with Ledger(db, settings=PROCESS_SETTINGS) as ledger:
            return book_state(ledger.book)

    assert anyio.run(fresh) == book_state(audit.fold)
    return audit


def test_four_processes_append_to_one_database(db_path: Path, tmp_path: Path) -> None:
    reports = run_processes("mixed", db_path, tmp_path)
    audit = check_processes_against_log(reports, db_path)
    positions = PROCESSES * TASKS_PER_PROCESS * POSITIONS_PER_TASK
    assert kinds(audit.records) == Counter(
        BalanceObserved=PROCESSES,
        PositionOpened=positions,
        PositionMarked=positions,
        PartialExitRecorded=positions + positions // 2,
        PositionClosed=positions,
    )
    assert len(audit.fold.closed) == positions
    # every round holds commits of every process: at least PROCESSES - 1 switches in each
    owners = [r.stream.split("-")[0] for r in audit.records if r.stream != "account"]
    switches = sum(1 for a, b in itertools.pairwise(owners) if a != b)
    assert switches >= (PROCESSES - 1) * POSITIONS_PER_TASK


def test_processes_racing_to_open_the_same_symbol_side_one_wins(
    db_path: Path, tmp_path: Path
) -> None:
    reports = run_processes("race-open", db_path, tmp_path)
    assert sorted(r["outcome"] for r in reports) == ["duplicate"] * (PROCESSES - 1) + ["opened"]
    audit = check_processes_against_log(reports, db_path)
    opened = [r for r in audit.records if isinstance(r.event, PositionOpened)]
    # and the limits these processes run under, recorded once by the winner
    assert len(opened) == 1 and sum(kinds(audit.records).values()) == 1
    assert isinstance(opened[0].event, PositionOpened)
    assert opened[0].event.symbol == RACE_SYMBOL


def test_processes_racing_to_close_one_position_one_wins(db_path: Path, tmp_path: Path) -> None:
    pid = "to-close"

    async def prepare() -> list[Recorded]:
        async with Ledger(db_path, settings=PROCESS_SETTINGS) as ledger:
            return await ledger.execute(
                OpenPosition(
                    position_id=pid,
                    symbol=RACE_SYMBOL,
                    side=Side.SELL,
                    qty=Decimal(2),
                    entry_price=Decimal(100),
                    leverage=4,
                )
            )

    opened = anyio.run(prepare)
    reports = run_processes("race-close", db_path, tmp_path)
    outcomes = sorted(r["outcome"] for r in reports)
    assert outcomes == ["already-closed"] * (PROCESSES - 1) + ["closed"]
    audit = check_processes_against_log(reports, db_path, opened)
    closes = [r for r in audit.records if isinstance(r.event, PositionClosed)]
    assert len(closes) == 1
    winner = next(i for i, r in enumerate(reports) if r["outcome"] == "closed")
    assert audit.fold.closed[pid].close_reason == f"w{winner}"


# -- the manager inside an event loop; returned objects are snapshots ------------------------


def test_manager_called_from_asyncio_tasks_does_not_deadlock(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    bots = 8

    async def bot(i: int) -> str:
        # blocking calls straight from the loop's own thread, awaiting in between
        pid = manager.thread_safe_create_position(**open_kwargs(f"L{i}USDT", size=300))
        await asyncio.sleep(0)
        assert manager.update_position_price(pid, 101)
        summary = await asyncio.to_thread(manager.get_session_summary)
        assert int(str(summary["active_positions"])) >= 1
        assert manager.register_partial_exit(pid, 100, 102, None, "tp")
        await asyncio.sleep(0)
        assert manager.has_position_for_symbol(f"L{i}USDT")
        assert manager.close_position(pid, "done")
        return pid

    async def main() -> list[str]:
        return list(await asyncio.gather(*(bot(i) for i in range(bots))))

    results: list[object] = []

    def run_loop() -> None:
        try:
            results.append(asyncio.run(main()))
        except BaseException as exc:
            results.append(exc)

    thread = threading.Thread(target=run_loop, daemon=True)
    thread.start()
    thread.join(JOIN_SECONDS)
    assert not thread.is_alive(), "deadlock: the blocking manager hung inside an event loop"
    [pids] = results
    assert isinstance(pids, list) and len(set(pids)) == bots, pids
    audit = check_manager_matches_log(manager, db_path)
    assert set(audit.fold.closed) == set(pids)


def test_returned_positions_are_snapshots(manager: ThreadSafePositionManager) -> None:
    pid = manager.thread_safe_create_position(**open_kwargs("SNAPUSDT", size=500))
    before = manager.get_position(pid)
    assert isinstance(before, SeedPosition)
    kept = dataclasses.asdict(before)
    active = manager.get_active_positions()
    summary = manager.get_session_summary()

    assert manager.update_position_price(pid, 120)
    assert manager.register_partial_exit(pid, 150, 110, None, "tp1")
    after = manager.get_position(pid)
    assert after is not None and after.current_price == 120 and len(after.partial_exits) == 1

    assert dataclasses.asdict(before) == kept, "a returned position changed under the caller"
    assert before.current_price == 100 and before.partial_exits == [] and before.qty == 5
    assert active == [before]
    assert summary["active_positions"] == 1 and summary["unrealized_pnl"] == 0

    # what the caller does to what it got does not reach the ledger
    after.qty = 1.0
    after.partial_exits[0]["realized_pnl"] = 1e9
    after.partial_exits.clear()
    active.clear()
    summary["active_positions"] = 99
    fresh = manager.get_position(pid)
    assert fresh is not None and fresh.qty == 3.5 and len(fresh.partial_exits) == 1
    assert fresh.partial_exits[0]["realized_pnl"] == 15.0
    assert manager.get_active_positions() == [fresh]
    assert manager.get_session_summary()["active_positions"] == 1
    # the exact views are immutable
    exact = manager.exact.get_position(pid)
    assert isinstance(exact, Position)
    with pytest.raises(AttributeError):
        setattr(exact, "qty", Decimal(1))  # noqa: B010  (frozen: mypy would refuse the plain form)

    assert manager.close_position(pid, "done", exit_price=115)
    assert fresh.status == "open" and fresh.close_time is None
    [closed] = manager.get_closed_positions()
    assert closed.status == "closed" and closed.partial_exits == fresh.partial_exits


def test_manager_rejections_append_nothing_under_races(
    manager: ThreadSafePositionManager, db_path: Path
) -> None:
    """16 threads open the same symbol and side at once: one wins, the rest are refused."""
    results = run_threads(
        THREADS,
        lambda i: manager.thread_safe_create_position(**open_kwargs("SAMEUSDT", size=100 + i)),
    )
    winners = [r for r in results if isinstance(r, str)]
    assert len(winners) == 1, results
    refused = [r for r in results if not isinstance(r, str)]
    assert all(isinstance(r, DuplicatePosition) for r in refused), refused
    assert all(isinstance(r, LedgerError) for r in refused)
    audit = check_manager_matches_log(manager, db_path)
    assert kinds(audit.records) == Counter(PositionOpened=1)
    assert list(audit.fold.open) == winners


# -- several writers creating one fresh database ----------------------------------------------


@pytest.mark.anyio
async def test_two_writers_creating_one_fresh_database_at_once(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes start their ledgers on a database file that does not exist yet.

    The interleaving is forced: when the first writer reads the table list, a second store
    (on its own thread and event loop, as another process would be) creates the database.
    If the first writer holds no transaction at that point, the second one runs to the end
    first, as another process could; if it does, the second one waits for the lock. Either
    way both must open: a database being created by another writer is not a foreign one.
    """
    real_connect = sqlite3.connect
    hooked: list[sqlite3.Connection] = []
    others: list[threading.Thread] = []
    failures: list[BaseException] = []

    async def create_elsewhere() -> None:
        other = SQLiteEventStore(db_path)
        await other.open()
        await other.close()

    def on_statement(sql: str) -> None:
        if "sqlite_master" not in sql or others:
            return
        other = threading.Thread(target=_run_catching, args=(create_elsewhere, failures))
        others.append(other)
        other.start()
        if not hooked[0].in_transaction:
            other.join(JOIN_SECONDS)  # nothing stops it: let it finish between our reads

    def connect_and_trace(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn: sqlite3.Connection = real_connect(*args, **kwargs)
        if not hooked:  # only the first writer's own connection (the store's write one)
            hooked.append(conn)
            conn.set_trace_callback(on_statement)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect_and_trace)
    store = SQLiteEventStore(db_path)
    try:
        await store.open()
    finally:
        await store.close()
        for other in others:
            other.join(JOIN_SECONDS)
    assert others, "the second writer never started"
    assert failures == []
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.open_position("FRESHUSDT", "long", entry_price=10, qty=1, leverage=2)
    assert sum(kinds((await audit_log(db_path)).records).values()) == 1


def _run_catching(job: Callable[[], Any], failures: list[BaseException]) -> None:
    try:
        anyio.run(job)
    except BaseException as exc:
        failures.append(exc)


# -- readers during a commit ------------------------------------------------------------------


@pytest.mark.anyio
async def test_readers_never_see_events_that_are_not_committed_yet(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the writer waits for COMMIT (an fsync: about a millisecond, during which the loop
    runs other tasks and every ThreadSafePositionManager call), reads must show the state as
    of the last durable commit: an open that may still fail, or be lost to a crash, is not
    yet a position anyone can see. The write comes from a plain thread (as a
    ThreadSafePositionManager bot's does, run on that thread), so the loop reads meanwhile."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.open_position("BASEUSDT", "long", entry_price=10, qty=1, leverage=2)
        before = (ledger.last_seq, ledger.active_positions(), ledger.session_summary())
        store_transaction = ledger.store.run_transaction
        # threading events: the transaction runs on the bot's thread
        staged = threading.Event()
        release = threading.Event()

        def paused_before_commit(unit: Callable[[StoreTransaction], Any]) -> Any:
            def decided_then_paused(tx: StoreTransaction) -> Any:
                result = unit(tx)
                if tx.rows:  # staged and decided, not yet inserted nor committed
                    staged.set()
                    release.wait()
                return result

            return store_transaction(decided_then_paused)

        monkeypatch.setattr(ledger.store, "run_transaction", paused_before_commit)
        dirty = OpenPosition(
            position_id="dirty",
            symbol="DIRTYUSDT",
            side=Side.SELL,
            qty=Decimal(3),
            entry_price=Decimal(20),
            leverage=2,
        )
        async with anyio.create_task_group() as group:
            group.start_soon(anyio.to_thread.run_sync, ledger.execute_blocking, dirty)
            await anyio.to_thread.run_sync(staged.wait)
            during = (ledger.last_seq, ledger.active_positions(), ledger.session_summary())
            seen_dirty = ledger.get_position("dirty")
            release.set()
        committed = ledger.get_position("dirty")
    assert committed is not None
    assert seen_dirty is None, "a reader saw a position before its commit"
    assert during == before
