"""Code the concurrency and crash tests run in child processes, and the log audit they share.

Run as `python -m tests._workers crash <db> <snapshot_every_events> <run>` for the crash writer;
`process_worker` is the target of the multi-process tests (multiprocessing, spawn context).
"""

from __future__ import annotations

import faulthandler
import json
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing.synchronize import Barrier as ProcessBarrier
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread

from ledger.commands import (
    AnyCommand,
    ClosePosition,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordPartialExit,
)
from ledger.envelope import Recorded
from ledger.errors import DuplicatePosition, PositionAlreadyClosed
from ledger.events import PartialExitRecorded, PositionClosed
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import StoreTransaction, staged_row
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.book import Book, fold_records

T = TypeVar("T")

# -- shared checks ------------------------------------------------------------------------


def book_state(book: Book) -> tuple[object, ...]:
    """Everything a book holds that start-up must reproduce, order of positions included."""
    return (
        list(book.open.items()),
        list(book.closed.items()),
        book.balance,
        book.available,
        book.acc,
        book.imported_files,
        book.last_seq,
        book.last_hash,
        book.summary(),
    )


def kind(record: Recorded) -> str:
    return type(record.event).__name__


def kinds(records: list[Recorded]) -> Counter[str]:
    """The business events by type; the RulesConfigured a ledger under non-default limits
    records once (tests/test_rules_recorded.py covers it) is left out."""
    return Counter(kind(r) for r in records if kind(r) != "RulesConfigured")


@dataclass
class Audit:
    records: list[Recorded]
    fold: Book


async def audit_log(db: Path) -> Audit:
    """Read the whole log and check it: gapless seq, chain, every command whole.

    Raises AssertionError naming what is wrong.
    """
    store = SQLiteEventStore(db)
    await store.open()
    try:
        records = await store.read()
        report = await store.verify_chain()
    finally:
        await store.close()
    seqs = [r.seq for r in records]
    assert seqs == list(range(1, len(records) + 1)), f"seq not gapless: {seqs}"
    assert report.last_seq == len(records)
    assert len({r.event_id for r in records}) == len(records), "an event_id stored twice"
    fold = Book()
    for index, record in enumerate(records):
        fold.apply(record)
        event = record.event
        if isinstance(event, PartialExitRecorded):
            position = fold.open[event.position_id]
            if position.qty == 0:
                # an exit of all that is left and its close are one command: both or neither
                assert index + 1 < len(records), f"seq {record.seq}: full exit without close"
                after = records[index + 1]
                assert isinstance(after.event, PositionClosed), f"seq {record.seq}: no close"
                assert after.event.position_id == event.position_id
                assert after.recorded_at == record.recorded_at, "exit and close in two commits"
    assert fold.skipped == [], f"events the fold could not place: {fold.skipped}"
    assert all(p.qty > 0 for p in fold.open.values()), "an open position with nothing left"
    assert book_state(fold) == book_state(fold_records(records))
    return Audit(records, fold)


# -- multi-process workers ------------------------------------------------------------------

PROCESS_SETTINGS = Settings(max_concurrent_positions=1000)
TASKS_PER_PROCESS = 4
POSITIONS_PER_TASK = 6
RACE_SYMBOL = "RACEUSDT"
HANG_SECONDS = 30.0


def _acked(records: list[Recorded]) -> list[list[object]]:
    return [[r.seq, r.event_id, kind(r)] for r in records]


async def _mixed_position(
    ledger: Ledger, index: int, task: int, k: int, acked: list[list[object]]
) -> None:
    """One position's life: open, mark, exit half, then close or exit the rest (+ close)."""
    pid = f"w{index}-t{task}-k{k}"
    commands: list[AnyCommand] = [
        OpenPosition(
            position_id=pid,
            symbol=f"P{index}T{task}USDT",
            side=Side.BUY if k % 2 else Side.SELL,
            qty=Decimal(2),
            entry_price=Decimal(100),
            leverage=5,
        ),
        MarkPosition(position_id=pid, mark_price=Decimal("101.5")),
        RecordPartialExit(position_id=pid, qty=Decimal(1), price=Decimal(102)),
        ClosePosition(position_id=pid, price=Decimal(103))
        if k % 2
        else RecordPartialExit(position_id=pid, qty=Decimal(1), price=Decimal(99)),
    ]
    for command in commands:
        acked.extend(_acked(await ledger.execute(command)))


async def _process_main(
    mode: str, db: str, index: int, start: ProcessBarrier, done: ProcessBarrier, out: str
) -> None:
    acked: list[list[object]] = []
    outcome = ""
    async with Ledger(db, settings=PROCESS_SETTINGS) as ledger:
        await anyio.to_thread.run_sync(start.wait)
        if mode == "mixed":
            acked.extend(
                _acked(
                    await ledger.execute(
                        ObserveBalance(total=Decimal(index + 1000), available=Decimal(index + 900))
                    )
                )
            )
            # a round per position, every process released into each round together, so the
            # processes' commits interleave in the log whatever SQLite's busy handler favours
            for k in range(POSITIONS_PER_TASK):
                async with anyio.create_task_group() as group:
                    for task in range(TASKS_PER_PROCESS):
                        group.start_soon(_mixed_position, ledger, index, task, k, acked)
                await anyio.to_thread.run_sync(start.wait)
            outcome = "done"
        elif mode == "race-open":
            command = OpenPosition(
                position_id=f"race-{index}",
                symbol=RACE_SYMBOL,
                side=Side.BUY,
                qty=Decimal(1),
                entry_price=Decimal(100),
                leverage=3,
            )
            try:
                acked.extend(_acked(await ledger.execute(command)))
                outcome = "opened"
            except DuplicatePosition:
                outcome = "duplicate"
        elif mode == "race-close":
            target = ledger.get_position_for_symbol(RACE_SYMBOL)
            assert target is not None, "the parent opens the position to race on"
            try:
                close = ClosePosition(
                    position_id=target.position_id, price=Decimal(110), reason=f"w{index}"
                )
                acked.extend(_acked(await ledger.execute(close)))
                outcome = "closed"
            except PositionAlreadyClosed:
                outcome = "already-closed"
        else:
            raise ValueError(mode)
        await anyio.to_thread.run_sync(done.wait)
        await ledger.refresh()
        fold = fold_records(await ledger.store.read())
        result = {
            "acked": acked,
            "outcome": outcome,
            "live_matches_replay": book_state(ledger.book) == book_state(fold),
            "last_seq": ledger.last_seq,
        }
    Path(out).write_text(json.dumps(result), encoding="utf-8")


def process_worker(
    mode: str, db: str, index: int, start: ProcessBarrier, done: ProcessBarrier, out: str
) -> None:
    """One OS process with its own Ledger on the shared database; writes its report to out."""
    faulthandler.dump_traceback_later(HANG_SECONDS)  # a stuck worker shows where it is stuck
    try:
        anyio.run(_process_main, mode, db, index, start, done, out)
    except BaseException:
        start.abort()  # the others fail at their next barrier instead of waiting it out
        done.abort()
        raise


# -- the crash writer -----------------------------------------------------------------------

CRASH_TASKS = 3


def crash_settings(snapshot_every_events: int) -> Settings:
    return Settings(
        max_concurrent_positions=1000,
        synchronous="FULL",
        snapshot_every_events=snapshot_every_events,
    )


def _ack(task: int, step: str, records: list[Recorded]) -> None:
    line = {
        "task": task,
        "step": step,
        "events": [[r.seq, r.event_id, r.hash, kind(r)] for r in records],
    }
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _crash_task(ledger: Ledger, run: str, task: int) -> None:
    """Open, mark, exit a quarter, then exit the rest (exit + close: one two-event commit)."""
    cycle = 0
    while True:
        pid = f"crash-{run}-t{task}-c{cycle}"
        steps: list[tuple[str, OpenPosition | MarkPosition | RecordPartialExit | ClosePosition]]
        steps = [
            (
                "open",
                OpenPosition(
                    position_id=pid,
                    symbol=f"C{task}{run.upper()}USDT",
                    side=Side.BUY,
                    qty=Decimal(4),
                    entry_price=Decimal(100),
                    leverage=10,
                    fee=Decimal("0.04"),
                ),
            ),
            ("mark", MarkPosition(position_id=pid, mark_price=Decimal(101))),
            ("exit", RecordPartialExit(position_id=pid, qty=Decimal(1), price=Decimal(102))),
            (
                "exit-all" if cycle % 3 else "close",
                RecordPartialExit(position_id=pid, qty=Decimal(3), price=Decimal(103))
                if cycle % 3
                else ClosePosition(position_id=pid, price=Decimal(98)),
            ),
        ]
        for step, command in steps:
            _ack(task, step, await ledger.execute(command))
        cycle += 1


async def _crash_main(db: str, snapshot_every_events: int, run: str) -> None:
    async with Ledger(db, settings=crash_settings(snapshot_every_events)) as ledger:
        write_snapshot = ledger.write_snapshot

        async def announced_snapshot() -> Path:
            # tells the parent a snapshot is being written, so it can kill the writer mid-way
            sys.stdout.write(json.dumps({"snapshot": ledger.last_seq}) + "\n")
            sys.stdout.flush()
            return await write_snapshot()

        ledger.write_snapshot = announced_snapshot  # type: ignore[method-assign]
        store_transaction = ledger.store.run_transaction

        def announced_transaction(unit: Callable[[StoreTransaction], T]) -> T:
            def announced(tx: StoreTransaction) -> T:
                result = unit(tx)
                # staged, not yet inserted nor committed: tell the parent when this commit
                # holds a whole-position exit (exit + close), so it can kill mid-commit
                rows = [staged_row(row) for row in tx.rows]
                types = {row.type for row in rows}
                if {"PartialExitRecorded", "PositionClosed"} <= types:
                    sys.stdout.write(json.dumps({"committing": [r.seq for r in rows]}) + "\n")
                    sys.stdout.flush()
                return result

            return store_transaction(announced)

        ledger.store.run_transaction = announced_transaction  # type: ignore[method-assign]
        sys.stdout.write(json.dumps({"ready": ledger.last_seq}) + "\n")
        sys.stdout.flush()
        async with anyio.create_task_group() as group:
            for task in range(CRASH_TASKS):
                group.start_soon(_crash_task, ledger, run, task)


def main(argv: list[str]) -> None:
    if len(argv) == 4 and argv[0] == "crash":
        anyio.run(_crash_main, argv[1], int(argv[2]), argv[3])
        return
    raise SystemExit("usage: python -m tests._workers crash <db> <snapshot_every_events> <run>")


if __name__ == "__main__":
    main(sys.argv[1:])
