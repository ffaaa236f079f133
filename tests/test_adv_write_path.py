"""Attacks on the faster write path (issue 9): decisions on a head another process moved
past, refusals decided there, real processes racing limits, exits and payments, and the
staged bytearray bodies read back everywhere a body is read."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest

from ledger.commands import IncreasePosition
from ledger.envelope import NewEvent, Recorded
from ledger.errors import UnknownPosition
from ledger.events import (
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import Book
from tests import _adv_race_worker as worker
from tests._worker_process import kill_9, worker_process

ROOT = Path(__file__).resolve().parents[1]


async def _log(path: Path) -> list[object]:
    store = SQLiteEventStore(path)
    await store.open()
    try:
        return [record.event for record in await store.read()]
    finally:
        await store.close()


# -- refusals decided on a stale head are decided again on the current one -----------------


@pytest.mark.anyio
async def test_an_open_refused_on_a_stale_full_book_opens_after_the_other_close(
    db_path: Path,
) -> None:
    """One position at most. B closes the position A opened (on B's stale book it is unknown)
    and A, whose book still holds it, opens another: on A's stale book that is one too many,
    on the log it is the only one. Neither stale refusal may reach its caller."""
    settings = Settings(max_concurrent_positions=1)
    async with Ledger(db_path, settings=settings) as a, Ledger(db_path, settings=settings) as b:
        first = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        await b.close_position(first.position_id, price=101, reason="by b")
        second = await a.open_position("BTC/USDT:USDT", "sell", entry_price=50, qty=2, leverage=5)
        assert set(a.book.open) == {second.position_id}
        assert first.position_id in a.book.closed
    events = await _log(db_path)
    assert sum(isinstance(e, PositionOpened) for e in events) == 2
    assert sum(isinstance(e, PositionClosed) for e in events) == 1


@pytest.mark.anyio
async def test_an_exit_refused_on_a_stale_size_succeeds_after_the_other_increase(
    db_path: Path,
) -> None:
    """A opened 1; B adds 2 to it (B's stale book does not know the position); A exits 2:
    more than A's stale book holds, less than the log's 3."""
    async with Ledger(db_path) as a, Ledger(db_path) as b:
        position = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        pid = position.position_id
        await b.execute(IncreasePosition(position_id=pid, qty=Decimal(2), price=Decimal(100)))
        after = await a.register_partial_exit(pid, price=110, qty=2)
        assert after.qty == Decimal(1) and after.is_open
    events = await _log(db_path)
    exits = [e for e in events if isinstance(e, PartialExitRecorded)]
    assert [e.qty for e in exits] == [Decimal(2)]


@pytest.mark.anyio
async def test_a_group_with_a_staged_job_and_a_stale_refusal_is_decided_again(
    db_path: Path,
) -> None:
    """One group of A's: a mark of a position A knows (staged at A's head + 1) and a close of
    one B opened after A last looked (unknown on A's stale book). The mark's insert meets
    B's row: the whole group is decided again, and the close succeeds."""
    async with Ledger(db_path) as a, Ledger(db_path) as b:
        known = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        other = await b.open_position("ETH/USDT:USDT", "sell", entry_price=10, qty=3, leverage=5)
        results = await asyncio.gather(
            a.mark(known.position_id, 105),
            a.close_position(other.position_id, price=9, reason="by a"),
            return_exceptions=True,
        )
        assert not [r for r in results if isinstance(r, BaseException)], results
        assert other.position_id in a.book.closed
        with pytest.raises(UnknownPosition):  # and a real refusal still reaches its caller
            await b.close_position("never-opened", price=1)
    events = await _log(db_path)
    assert sum(isinstance(e, PositionClosed) for e in events) == 1
    assert sum(isinstance(e, PositionMarked) for e in events) == 1


# -- real processes racing a limit, one position's exits and one payment -------------------


def test_processes_racing_opens_exits_and_payments_hold_every_limit(
    db_path: Path, tmp_path: Path
) -> None:
    """Three processes, each: exit 1 from one shared position of 10 and record the same six
    payments, six times; then (all together again) open six positions under a limit of
    seven. Whatever the interleaving, exactly ten exits succeed (the tenth closes it), each
    payment counts once, exactly seven positions open, and each process was told exactly what
    the log holds (a refusal decided on a stale head would make fewer succeed than that, an
    acceptance there more)."""
    processes = 3

    async def prepare() -> None:
        async with Ledger(
            db_path, settings=Settings(max_concurrent_positions=worker.LIMIT)
        ) as ledger:
            await ledger.open_position(
                "SHARED/USDT:USDT", "sell", entry_price=100, qty=10, leverage=2,
                position_id=worker.SHARED,
            )  # fmt: skip

    asyncio.run(prepare())
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes, timeout=100)
    outs = [tmp_path / f"race-{i}.json" for i in range(processes)]
    procs = [
        context.Process(target=worker.race, args=(str(db_path), i, start, str(outs[i])))
        for i in range(processes)
    ]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    for proc in procs:
        if proc.is_alive():
            proc.kill()
            proc.join()
    assert [p.exitcode for p in procs] == [0] * processes
    told = [json.loads(out.read_text(encoding="utf-8")) for out in outs]
    events = asyncio.run(_log(db_path))

    exits = [e for e in events if isinstance(e, PartialExitRecorded)]
    assert sum(t["exited"] for t in told) == len(exits) == 10
    assert sum(Fraction(e.qty) for e in exits) == 10
    assert sum(t["refused_exit"] for t in told) == processes * worker.ATTEMPTS - 10
    assert [e.position_id for e in events if isinstance(e, PositionClosed)] == [worker.SHARED]

    payments = [e for e in events if isinstance(e, FundingRecorded)]
    assert sorted(e.execution_id for e in payments) == [f"pay-{k}" for k in range(worker.ATTEMPTS)]
    assert sum(Fraction(e.amount) for e in payments) == Fraction(1, 4) * worker.ATTEMPTS

    # then, the shared position closed, opens alone under a limit of seven: exactly seven
    # succeed, and each refusal was told to the process whose open the log does not hold
    opened = [e.position_id for e in events if isinstance(e, PositionOpened)][1:]
    assert sorted(opened) == sorted(pid for t in told for pid in t["opened"])
    assert len(opened) == worker.LIMIT
    assert sum(t["too_many"] for t in told) == processes * worker.ATTEMPTS - worker.LIMIT
    book = Book()
    book.apply_all(asyncio.run(_records(db_path)))
    assert sorted(book.open) == sorted(opened)


async def _records(path: Path) -> list[Recorded]:
    store = SQLiteEventStore(path)
    await store.open()
    try:
        return list(await store.read())
    finally:
        await store.close()


# -- the seed's floats through the manager, against an exact reference --------------------


def _near(value: Decimal, exact: Fraction) -> bool:
    """value is exact rounded to 28 significant digits (the ledger's context): within half a
    unit in its 28th digit."""
    if exact == 0:
        return value == 0
    return abs(Fraction(value) - exact) <= abs(exact) * Fraction(1, 10**27) / 2


def test_seed_floats_through_the_manager_are_exact(tmp_path: Path) -> None:
    """Sizes and prices as the seed's bots send them (floats, `size * 0.5`, a third), through
    every writing method of the manager: each quantity is the float's shortest decimal over
    the price rounded once to 28 digits, each realized PnL the float's own decimal exactly,
    summed exactly, and two halves (or three thirds) of a size close the position."""
    import random

    from ledger.blocking import ThreadSafePositionManager

    rng = random.Random(9)
    settings = Settings(max_concurrent_positions=100)
    with ThreadSafePositionManager(tmp_path / "positions.json", settings=settings) as manager:
        for n in range(24):
            entry = round(rng.uniform(0.0001, 70_000), rng.randint(0, 8))
            size = round(rng.uniform(5, 5_000), rng.randint(0, 4))
            pids = manager.thread_safe_create_position(
                symbol=f"S{n}USDT", side=rng.choice(["buy", "sell", "long", "short"]),
                entry_price=entry, position_size=size, leverage=rng.randint(1, 20),
            )  # fmt: skip
            exact_entry = Fraction(repr(entry))
            position = manager.exact.get_position(pids)
            assert position is not None
            assert _near(position.qty, Fraction(repr(size)) / exact_entry), (entry, size)
            parts = [size * 0.5, size * 0.5] if n % 2 else [size / 3] * 3
            pnls = [round(rng.uniform(-50, 50), rng.randint(0, 6)) for _ in parts]
            exit_price = round(entry * rng.uniform(0.8, 1.2), 6) or entry
            for i, (part, pnl) in enumerate(zip(parts, pnls, strict=True)):
                assert manager.register_partial_exit(pids, part, exit_price, pnl, f"tp{i}")
                still = manager.exact.get_position(pids)
                if i < len(parts) - 1:
                    assert still is not None, (entry, size, i)
                    assert still.realized_pnl == sum(
                        (Decimal(repr(p)) for p in pnls[: i + 1]), Decimal(0)
                    )
                else:
                    assert still is None, (entry, size, parts)
            (closed,) = [p for p in manager.exact.get_closed_positions() if p.position_id == pids]
            assert Fraction(closed.realized_pnl) == sum(Fraction(repr(p)) for p in pnls)
            assert closed.qty == 0


# -- store.append groups and long batches on a stale head ---------------------------------


def _new(event: object, event_id: str) -> NewEvent:
    return NewEvent(
        stream=stream_of(event),  # type: ignore[arg-type]
        event=event,  # type: ignore[arg-type]
        event_id=event_id,
        occurred_at=datetime(2025, 1, 7, tzinfo=UTC),
    )


def _mark(position_id: str, price: int) -> PositionMarked:
    return PositionMarked(position_id=position_id, mark_price=Decimal(price))


@pytest.mark.anyio
async def test_a_group_of_appends_with_a_stale_version_refusal_is_decided_again(
    db_path: Path,
) -> None:
    """One's group of two appends: a long batch (column by column) expecting p0 at the
    version two committed, which one's stale cache refuses, and a batch to another stream
    staged at one's stale head + 1. Both are decided again on the log: both commit, in
    order, and the chain verifies."""
    one, two = SQLiteEventStore(db_path), SQLiteEventStore(db_path)
    await one.open()
    await two.open()
    try:
        await one.append([_new(_mark("p0", 100), "a0")])
        await two.append([_new(_mark("p0", 101), "b0")], expected_versions={"p0": 1})
        long = [_new(_mark("p0", 200 + i), f"long{i}") for i in range(20)]
        first, second = await asyncio.gather(
            one.append(long, expected_versions={"p0": 2}),
            one.append([_new(_mark("p1", 300), "other")]),
        )
        assert [r.version for r in first] == list(range(3, 23))
        assert [r.version for r in second] == [1]
        stored = await two.read()
        assert [r.event_id for r in stored][:2] == ["a0", "b0"]
        assert sorted(r.seq for r in stored) == list(range(1, 24))
        assert (await two.verify_chain()).events == 23
    finally:
        await two.close()
        await one.close()


# -- a writer killed with kill -9 while another Ledger's head goes stale -------------------


def test_a_stale_ledger_after_a_writer_killed_mid_transaction_decides_on_the_log(
    db_path: Path,
) -> None:
    """A Ledger opened before another process starts writing (its head goes stale), that
    process killed with SIGKILL while it writes (mostly inside a transaction): the stale
    Ledger then closes every position the killed writer acknowledged (unknown on its stale
    book: each refusal there must be decided again on the log), the killed writer's
    unacknowledged transaction is not in the log, and the chain verifies."""

    async def scenario() -> tuple[list[str], list[object]]:
        settings = Settings(max_concurrent_positions=10_000)
        async with Ledger(db_path, settings=settings) as stale:
            await stale.open_position("A/USDT:USDT", "buy", entry_price=1, qty=1, leverage=2)
            acked: list[str] = []
            with worker_process("tests._adv_open_worker", str(db_path)) as proc:
                assert proc.stdout is not None
                assert proc.stdout.readline() == b"ready\n"
                while len(acked) < 25:
                    line = proc.stdout.readline()
                    assert line.endswith(b"\n"), "the writer ended early"
                    acked.append(line.decode().strip())
                kill_9(proc)
            for pid in acked:
                await stale.close_position(pid, price=101, reason="after the kill")
            assert not set(acked) & set(stale.book.open)
            report = await stale.store.verify_chain()
            assert report.events == stale.last_seq
            return acked, [r.event for r in await stale.store.read()]

    acked, events = asyncio.run(scenario())
    opened = [e.position_id for e in events if isinstance(e, PositionOpened)][1:]
    # every acknowledged open is there, in order; at most one more (committed, its ack lost)
    assert opened[: len(acked)] == acked and len(opened) <= len(acked) + 1
    closed = [e.position_id for e in events if isinstance(e, PositionClosed)]
    assert closed == acked


@pytest.mark.anyio
async def test_runs_of_marks_staged_on_a_stale_head_are_decided_again(db_path: Path) -> None:
    """B writes before each of A's groups, so each group of A's (30 concurrent marks: a run
    staged column by column, one of them with a close of B's position A never saw) is first
    decided on a stale head. Every call succeeds, each mark is stored once, the live book is
    the fold of the log, and the chain verifies."""
    from datetime import UTC, datetime

    from projections.book import fold_records
    from projections.snapshot import encode_snapshot

    settings = Settings(max_concurrent_positions=100)
    async with Ledger(db_path, settings=settings) as a, Ledger(db_path, settings=settings) as b:
        mine = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=2)
        theirs = await b.open_position("BTC/USDT:USDT", "buy", entry_price=100, qty=1, leverage=2)
        for round_no in range(5):
            await b.mark(theirs.position_id, 100 + round_no)
            calls = [a.mark(mine.position_id, Decimal(101) + Decimal(i) / 7) for i in range(30)]
            if round_no == 4:
                calls.insert(15, a.close_position(theirs.position_id, price=99))
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
        records = await a.store.read()
        marks = [r for r in records if isinstance(r.event, PositionMarked)]
        assert len(marks) == 5 + 5 * 30
        assert len({r.event_id for r in records}) == len(records)
        reference = fold_records(records)
        reference.last_hash = a.book.last_hash
        at = datetime(2025, 1, 7, tzinfo=UTC)
        assert encode_snapshot(a.book, at) == encode_snapshot(reference, at)
        assert (await a.store.verify_chain()).events == len(records) == a.last_seq
