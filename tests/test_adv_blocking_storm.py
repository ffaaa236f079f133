"""Attack (adversary): the blocking write path's fast lane (`GroupCommit.run_blocking` running a
plain thread's lone job where it is, its Completion armed only when queued; the manager's
short create; BEGIN IMMEDIATE taken inline for a thread that may wait) under everything that
can meet it at once:

- plain threads through one ThreadSafePositionManager (create, mark, partial exit, resize,
  close; and all of them racing for one symbol),
- asyncio tasks of another loop calling the blocking manager from inside that loop,
- tasks of the ledger's own loop (`Ledger.execute` through the manager's portal: run_now),
- another OS process writing real events to the same SQLite file and holding its write lock
  while every caller above starts (BEGIN IMMEDIATE meets the lock, waits, then finds a stale
  head: the tail path).

Afterwards: every acknowledged command is in the log exactly once, a refused one left
nothing, the chain verifies, the manager's live views equal a fold of the log, a reopened
ledger (positions.json + tail) equals it too, and nobody hung (every join has a timeout; the
foreign lock is released once a BEGIN of ours was seen to meet it, never after a sleep).
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
from collections import Counter
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path

import anyio

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import DuplicatePosition
from ledger.events import PositionClosed, PositionOpened
from ledger.service import Ledger
from ledger.settings import Settings
from projections.positions import Position
from tests._worker_process import worker_process
from tests._workers import audit_log, book_state

JOIN = 120.0
SETTINGS = Settings(max_concurrent_positions=1000)
THREADS = 8
LOOP_TASKS = 4
LEDGER_TASKS = 8
CHILD_ROUNDS = 3
RACE = "RACEUSDT"


def lock_holder(db: Path, snapshot: Path) -> AbstractContextManager[subprocess.Popen[bytes]]:
    return worker_process(
        "tests._adv_lock_holder", str(db), str(snapshot), watchdog_seconds=JOIN, stdin=True
    )


def tell(proc: subprocess.Popen[bytes], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(f"{line}\n".encode())
    proc.stdin.flush()


def hear(proc: subprocess.Popen[bytes]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    assert line.endswith("\n"), f"the lock holder ended early (exit {proc.poll()})"
    return line.strip()


def seed_kwargs(symbol: str) -> dict[str, object]:
    return {
        "symbol": symbol,
        "side": "long",
        "entry_price": 100,
        "position_size": 300,
        "leverage": 5,
    }


def life(manager: ThreadSafePositionManager, symbol: str) -> tuple[str, bool | None]:
    """A position's whole life through the seed's calls; then one try for the raced symbol.
    (its id, whether this caller won the race: None when it lost with DuplicatePosition)."""
    pid = manager.thread_safe_create_position(**seed_kwargs(symbol))
    assert manager.update_position_price(pid, 101)
    assert manager.register_partial_exit(pid, 100, 102, None, "tp")
    assert manager.update_position_size(pid, 150, 103)
    assert manager.close_position(pid, "done")
    try:
        manager.thread_safe_create_position(**seed_kwargs(RACE))
    except DuplicatePosition:
        return pid, None
    return pid, True


def test_threads_tasks_and_a_lock_holding_process_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    results: dict[str, tuple[str, bool | None]] = {}
    failures: list[BaseException] = []
    with (
        ThreadSafePositionManager(tmp_path / "positions.json", db_path=db, settings=SETTINGS) as m,
        lock_holder(db, tmp_path / "child" / "positions.json") as child,
    ):
        assert hear(child) == "ready"
        tell(child, "open 0")
        assert hear(child) == "locked"  # the child holds BEGIN IMMEDIATE from here

        conn = m.ledger.store._conn  # type: ignore[attr-defined]
        began = threading.Event()
        conn.set_trace_callback(lambda sql: began.set() if sql == "BEGIN IMMEDIATE" else None)
        start = threading.Barrier(THREADS + 2)

        def thread_body(i: int) -> None:
            start.wait()
            try:
                results[f"t{i}"] = life(m, f"T{i}USDT")
            except BaseException as exc:
                failures.append(exc)

        def foreign_loop() -> None:
            async def task(i: int) -> tuple[str, bool | None]:
                await asyncio.sleep(0)  # the tasks interleave on the loop between calls
                return life(m, f"L{i}USDT")

            async def main() -> None:
                start.wait()
                for i, got in enumerate(
                    await asyncio.gather(*(task(i) for i in range(LOOP_TASKS)))
                ):
                    results[f"l{i}"] = got

            try:
                asyncio.run(main())
            except BaseException as exc:
                failures.append(exc)

        submitted: list[Future[Position]] = []

        def ledger_tasks() -> None:
            # tasks of the ledger's own loop (run_now), submitted from a plain thread
            portal, ledger = m._portal, m.ledger
            assert portal is not None

            async def open_one(i: int) -> Position:
                return await ledger.open_position(
                    f"P{i}USDT", "short", entry_price=10, qty=3, leverage=2, position_id=f"p{i}"
                )

            start.wait()
            for i in range(LEDGER_TASKS):
                submitted.append(portal.start_task_soon(open_one, i))

        workers = [threading.Thread(target=thread_body, args=(i,)) for i in range(THREADS)]
        workers += [threading.Thread(target=foreign_loop), threading.Thread(target=ledger_tasks)]
        for worker in workers:
            worker.daemon = True
            worker.start()
        assert began.wait(JOIN), "no write of ours met the held lock"
        tell(child, "go")
        child_acked = [hear(child)]
        for n in range(1, CHILD_ROUNDS):  # more commits of the child's, between ours
            tell(child, f"open {n}")
            assert hear(child) == "locked"
            tell(child, "go")
            child_acked.append(hear(child))
        for worker in workers:
            worker.join(JOIN)
        assert not any(worker.is_alive() for worker in workers), "a caller hung"
        for future in submitted:
            future.result(JOIN)
        conn.set_trace_callback(None)
        tell(child, "exit")
        assert child.wait(JOIN) == 0
        assert not failures, failures
        # one more write of ours: the book takes the child's last commits as its tail
        last = m.thread_safe_create_position(**seed_kwargs("LASTUSDT"))
        live = (m.exact.get_active_positions(), m.exact.get_closed_positions())
        summary = m.exact.get_session_summary()

    assert child_acked == [f"acked child{n}" for n in range(CHILD_ROUNDS)]
    audit = anyio.run(audit_log, db)
    fold = audit.fold
    assert live == (list(fold.open.values()), list(fold.closed.values()))
    assert summary == fold.summary()

    opened = Counter(
        r.event.position_id for r in audit.records if isinstance(r.event, PositionOpened)
    )
    closed = Counter(
        r.event.position_id for r in audit.records if isinstance(r.event, PositionClosed)
    )
    ours = list(results.values())
    assert len(ours) == THREADS + LOOP_TASKS
    pids = [pid for pid, _ in ours]
    winners = [won for _, won in ours if won]
    assert len(winners) == 1, "exactly one caller opens the raced symbol"
    assert all(opened[pid] == 1 and closed[pid] == 1 for pid in pids)
    assert all(opened[f"p{i}"] == 1 for i in range(LEDGER_TASKS))
    assert all(opened[f"child{n}"] == 1 for n in range(CHILD_ROUNDS))
    assert opened[last] == 1
    # nothing else: every open in the log is one of the acknowledged ones
    race = [pid for pid in opened if fold.open.get(pid) and fold.open[pid].symbol == RACE]
    assert len(race) == 1
    assert set(opened) == {
        *pids,
        *(f"p{i}" for i in range(LEDGER_TASKS)),
        *(f"child{n}" for n in range(CHILD_ROUNDS)),
        last,
        *race,
    }
    assert all(count == 1 for count in opened.values())

    async def reopened() -> tuple[object, ...]:
        async with Ledger(db, snapshot_path=tmp_path / "positions.json", settings=SETTINGS) as led:
            return book_state(led.book)

    assert anyio.run(reopened) == book_state(fold)
