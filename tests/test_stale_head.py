"""Decisions made on a stale head are never committed nor reported (SQLite).

A SQLite write transaction first decides on the head its store last saw, without reading the
tail, and commits only once the insert of seq head+1 proves that head current (see DESIGN in
`ledger/store/sqlite.py`). Here two stores (or two Ledgers) on one file interleave their
writes in a fixed order, so that each write of the second is decided first on a head the
first has moved past: each test fails if that stale decision were committed, or handed to the
caller as a refusal.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, closing
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent
from ledger.errors import (
    PositionAlreadyClosed,
    StoreError,
    TooManyOpenPositions,
    VersionConflict,
)
from ledger.events import (
    AnyEvent,
    FundingRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from tests._events import opened
from tests.strategies import T0

pytestmark = pytest.mark.anyio


def new(event: AnyEvent, event_id: str) -> NewEvent:
    return NewEvent(stream=stream_of(event), event=event, event_id=event_id, occurred_at=T0)


def marked(position_id: str, price: int) -> PositionMarked:
    return PositionMarked(position_id=position_id, mark_price=Decimal(price))


@asynccontextmanager
async def two_stores(path: Path) -> AsyncIterator[tuple[SQLiteEventStore, SQLiteEventStore]]:
    one, two = SQLiteEventStore(path), SQLiteEventStore(path)
    await one.open()
    try:
        await two.open()
        try:
            yield one, two
        finally:
            await two.close()
    finally:
        await one.close()


async def test_a_close_decided_on_a_stale_book_is_refused_after_the_other_close(
    db_path: Path,
) -> None:
    """B closes a position A opened after B last looked (a refusal on B's stale book,
    "unknown position", must not reach B's caller); then A, which last saw the position
    open, closes it again: that close, decided on A's stale book, must not be committed."""
    settings = Settings()
    async with Ledger(db_path, settings=settings) as a, Ledger(db_path, settings=settings) as b:
        position = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        pid = position.position_id
        closed = await b.close_position(pid, price=110, reason="by b")
        assert closed.close_reason == "by b"
        with pytest.raises(PositionAlreadyClosed):
            await a.close_position(pid, price=90, reason="by a")
        assert a.get_position(pid) is not None
        records = await a.store.read()
    closes = [r.event for r in records if isinstance(r.event, PositionClosed)]
    assert len(closes) == 1 and closes[0].reason == "by b"
    assert (await _verify(db_path)) == len(records)


async def test_an_open_past_the_limit_decided_on_a_stale_book_is_refused(db_path: Path) -> None:
    """At most one open position: B, which has not seen A's open, must not open a second."""
    settings = Settings(max_concurrent_positions=1)
    async with Ledger(db_path, settings=settings) as a, Ledger(db_path, settings=settings) as b:
        await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        with pytest.raises(TooManyOpenPositions):
            await b.open_position("BTC/USDT:USDT", "sell", entry_price=100, qty=1, leverage=5)
        assert len(b.book.open) == 1  # and B's book took A's open, under the lock
        records = await b.store.read()
    assert sum(isinstance(r.event, PositionOpened) for r in records) == 1


async def test_a_payment_another_ledger_recorded_meanwhile_counts_once(db_path: Path) -> None:
    """Funding is idempotent by execution id across processes too: B, which has not seen A's
    record of the payment, must find it under the lock instead of recording it again."""
    settings = Settings()
    async with Ledger(db_path, settings=settings) as a, Ledger(db_path, settings=settings) as b:
        position = await a.open_position("SOL/USDT:USDT", "buy", entry_price=100, qty=1, leverage=5)
        pid = position.position_id
        await a.record_funding(pid, "-1.25", execution_id="fund-1")
        seen_by_b = await b.record_funding(pid, "-1.25", execution_id="fund-1")
        assert seen_by_b.funding == Decimal("-1.25")
        records = await b.store.read()
    assert sum(isinstance(r.event, FundingRecorded) for r in records) == 1


async def test_expected_versions_are_compared_with_the_committed_ones(db_path: Path) -> None:
    async with two_stores(db_path) as (one, two):
        await one.append([new(opened("p0"), "o0")])
        await two.append([new(marked("p0", 101), "m1")], expected_versions={"p0": 1})
        # one last saw p0 at version 1: a conflict decided on that is not reported
        (record,) = await one.append([new(marked("p0", 102), "m2")], expected_versions={"p0": 2})
        assert (record.seq, record.version) == (3, 3)
        # two last saw p0 at version 2, where its expectation holds: not committed
        with pytest.raises(VersionConflict) as conflict:
            await two.append([new(marked("p0", 103), "m3")], expected_versions={"p0": 2})
        assert (conflict.value.expected, conflict.value.actual) == (2, 3)
        assert [r.event_id for r in await one.read()] == ["o0", "m1", "m2"]
        assert (await one.verify_chain()).events == 3


async def test_rows_imported_through_a_stale_store_continue_the_log(db_path: Path) -> None:
    """import_rows checks the chain against the head: two, which saw nothing yet, must not
    refuse rows that continue what one appended (a unit that raises on a stale head)."""
    source = db_path.with_name("source.db")
    async with two_stores(source) as (writer, _):
        await writer.append([new(opened("p0"), "o0"), new(marked("p0", 101), "m1")])
        await writer.append([new(marked("p0", 102), "m2")])
        rows = [row async for page in writer.iterate_rows() for row in page]
    async with two_stores(db_path) as (one, two):
        await one.import_rows(rows[:2])
        await two.import_rows(rows[2:])
        assert [r.event_id for r in await one.read()] == ["o0", "m1", "m2"]
        assert (await one.verify_chain()).last_hash == rows[-1].hash


async def test_the_unit_of_a_stale_transaction_starts_again_on_the_tail(db_path: Path) -> None:
    """What a unit returns comes from its call that saw every committed record."""
    async with two_stores(db_path) as (one, two):
        await one.append([new(opened("p0"), "o0")])

        def unit(tx: StoreTransaction) -> tuple[int, list[str]]:
            tx.load_versions(["p0"])
            tx.stage([new(marked("p0", 101), "m1")])
            return tx.head.seq, [r.event_id for r in tx.tail]

        assert await two.transact(unit) == (2, ["o0"])
        assert await one.transact(unit_mark(102, "m2")) == 3
        assert [(r.event_id, r.version) for r in await two.read()] == [
            ("o0", 1),
            ("m1", 2),
            ("m2", 3),
        ]


def unit_mark(price: int, event_id: str) -> Callable[[StoreTransaction], int]:
    def unit(tx: StoreTransaction) -> int:
        tx.load_versions(["p0"])
        tx.stage([new(marked("p0", price), event_id)])
        return tx.head.seq

    return unit


async def test_a_gap_after_the_head_fails_the_attempt_whole(db_path: Path) -> None:
    """Seq head+1 free but a later seq taken (rows deleted by hand under a running writer):
    the insert of head+1 goes in and a later row fails. That proves no stale head, and the
    rows already inserted are in the transaction: the attempt must fail whole, never be run
    again on top of its own rows (a decision with fresh ids committed twice)."""
    async with two_stores(db_path) as (one, two):
        await one.append(
            [new(opened("p0"), "o0"), new(marked("p0", 101), "m1"), new(marked("p0", 102), "m2")]
        )
        with closing(sqlite3.connect(db_path)) as raw:
            raw.execute("DELETE FROM events WHERE seq = 1")
            raw.commit()
        calls = itertools.count()

        def unit(tx: StoreTransaction) -> int:
            n = next(calls)
            tx.load_versions(["p1"])
            tx.stage([new(opened("p1"), f"o1-{n}"), new(marked("p1", 101), f"m1-{n}")])
            return n

        with pytest.raises(StoreError):
            await two.transact(unit)
    with closing(sqlite3.connect(db_path)) as raw:
        stored = [row[0] for row in raw.execute("SELECT event_id FROM events ORDER BY seq")]
    assert stored == ["m1", "m2"]


async def test_an_append_to_a_current_head_reads_no_tail(db_path: Path) -> None:
    """The usual commit: the lock, the insert, the commit; nothing read first."""
    store = SQLiteEventStore(db_path)
    await store.open()
    statements: list[str] = []
    try:
        await store.append([new(opened("p0"), "o0")])

        def install() -> None:
            assert store._conn is not None
            store._conn.set_trace_callback(statements.append)

        await store.writer.call(install)
        await store.append([new(marked("p0", 101), "m1")])
    finally:
        await store.close()
    assert [s.split(" ")[0] for s in statements[:3]] == ["BEGIN", "INSERT", "COMMIT"]


async def _verify(path: Path) -> int:
    store = SQLiteEventStore(path, read_only=True)
    await store.open()
    try:
        return (await store.verify_chain()).events
    finally:
        await store.close()


async def test_an_id_another_store_stored_at_the_stale_head_plus_one_is_returned(
    db_path: Path,
) -> None:
    """One stores event id X at seq 3; two, whose head is still 2, appends X too (an append
    retried by two processes): two's first row fails at seq 3, where the row holds X, but
    not two's. Nothing of two's went in: its head was stale, and the append returns the
    stored record (the contract's same-id answer), not an error."""
    async with two_stores(db_path) as (one, two):
        await one.append([new(opened("p0"), "o0")])
        await two.append([new(marked("p0", 101), "m1")])
        (stored,) = await one.append([new(marked("p0", 102), "X")])
        (again,) = await two.append([new(marked("p0", 102), "X")])
        assert again == stored
        assert [r.event_id for r in await one.read()] == ["o0", "m1", "X"]
        assert (await one.verify_chain()).events == 3
