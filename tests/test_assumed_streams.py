"""A stream taken as new without reading its version (`StoreTransaction.assume_new`, SQLite).

The position an open command creates has no events the book knows of, so the SQLite store
stages its first event at version 1 without a SELECT of the stream's version, and lets the
insert prove the stream empty: UNIQUE(stream, version) takes version 1 only there. Each test
here holds events in a stream the store has not seen (written before it opened, or by
another store), where taking it as new is wrong: the write must end exactly as a read of
the version would have made it, and the store's cache must never keep a version nothing
proved.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.events import AnyEvent, PositionMarked, stream_of
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from tests._events import opened
from tests.strategies import T0

pytestmark = pytest.mark.anyio


def marked(position_id: str, price: int) -> PositionMarked:
    return PositionMarked(position_id=position_id, mark_price=Decimal(price))


def new(event: AnyEvent, event_id: str) -> NewEvent:
    return NewEvent(stream=stream_of(event), event=event, event_id=event_id, occurred_at=T0)


@asynccontextmanager
async def opened_store(path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(path)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def _two_events_in_p0(path: Path) -> None:
    """p0 holds two events, written by a store that is closed again: a store opened after
    it knows the log's end but not p0's version."""
    async with opened_store(path) as writer:
        await writer.append([new(opened("p0"), "o0"), new(marked("p0", 101), "m1")])


async def _stored(path: Path) -> list[tuple[str, str, int]]:
    async with opened_store(path) as store:
        assert (await store.verify_chain()).events == len(await store.read())
        return [(r.event_id, r.stream, r.version) for r in await store.read()]


async def test_a_lone_event_in_a_stream_taken_as_new_that_holds_events_follows_them(
    db_path: Path,
) -> None:
    """The one-row commit: version 1 is refused by the stream's own events, and the unit is
    run again on the stream's stored version (what load_versions would have given it)."""
    await _two_events_in_p0(db_path)
    calls = itertools.count()
    async with opened_store(db_path) as store:

        def unit(tx: StoreTransaction) -> int:
            tx.assume_new(["p0"])
            (record,) = tx.stage([new(marked("p0", 102), f"m2-{next(calls)}")])
            return record.version

        assert await store.transact(unit) == 3
        # and the store now knows p0's version: the next event follows without a refusal
        await store.append([new(marked("p0", 103), "m3")])
    assert await _stored(db_path) == [
        ("o0", "p0", 1),
        ("m1", "p0", 2),
        ("m2-1", "p0", 3),
        ("m3", "p0", 4),
    ]


async def test_several_events_with_a_stream_taken_as_new_that_holds_events_follow_them(
    db_path: Path,
) -> None:
    """Rows that no single insert proves: the streams taken as new are read before any row
    goes in, and the unit runs again on their stored versions."""
    await _two_events_in_p0(db_path)
    calls = itertools.count()
    async with opened_store(db_path) as store:

        def unit(tx: StoreTransaction) -> list[int]:
            n = next(calls)
            tx.assume_new(["p0", "p1"])
            records = tx.stage(
                [
                    new(marked("p0", 102), f"m2-{n}"),
                    new(opened("p1"), f"o1-{n}"),
                    new(marked("p0", 103), f"m3-{n}"),
                ]
            )
            return [r.version for r in records]

        assert await store.transact(unit) == [3, 1, 4]
    assert await _stored(db_path) == [
        ("o0", "p0", 1),
        ("m1", "p0", 2),
        ("m2-1", "p0", 3),
        ("o1-1", "p1", 1),
        ("m3-1", "p0", 4),
    ]


async def test_a_stream_taken_as_new_and_not_written_is_not_cached_as_new(
    db_path: Path,
) -> None:
    """A unit takes p0 as new but writes elsewhere (its job for p0 failed alone): the commit
    proves nothing of p0, so a later write to p0 reads its version instead of trusting 0."""
    await _two_events_in_p0(db_path)
    async with opened_store(db_path) as store:

        def unit(tx: StoreTransaction) -> None:
            tx.assume_new(["p0"])
            mark = tx.savepoint()
            tx.stage([new(marked("p0", 102), "dropped")])
            tx.rollback_to(mark)  # the p0 job failed
            tx.load_versions(["p1"])
            tx.stage([new(opened("p1"), "o1")])

        await store.transact(unit)
        await store.append([new(marked("p0", 103), "m3")])
    assert await _stored(db_path) == [
        ("o0", "p0", 1),
        ("m1", "p0", 2),
        ("o1", "p1", 1),
        ("m3", "p0", 3),
    ]


async def test_a_stream_taken_as_new_another_store_wrote_meanwhile_follows_its_events(
    db_path: Path,
) -> None:
    """Another store (another process) wrote p0 after this one last looked: the head is
    stale and the stream not new; the run on the tail stages after the other's events."""
    async with opened_store(db_path) as one, opened_store(db_path) as two:
        await one.append([new(opened("p9"), "o9")])
        await two.append([new(opened("p0"), "o0"), new(marked("p0", 101), "m1")])

        def unit(tx: StoreTransaction) -> int:
            tx.assume_new(["p0"])
            (record,) = tx.stage([new(marked("p0", 102), f"m2-{len(tx.tail)}")])
            return record.version

        assert await one.transact(unit) == 3
    assert await _stored(db_path) == [
        ("o9", "p9", 1),
        ("o0", "p0", 1),
        ("m1", "p0", 2),
        ("m2-2", "p0", 3),
    ]


async def test_an_open_reads_no_version_and_a_new_stream_is_proven_by_its_insert(
    db_path: Path,
) -> None:
    """The usual open: the lock, the insert, the commit; no SELECT of its stream."""
    quiet = Settings(snapshot_every_events=10**9, snapshot_every_seconds=10**6)
    async with Ledger(db_path, settings=quiet) as ledger:
        await ledger.open_position("BTCUSDT", "buy", entry_price=100, qty=1, leverage=5)
        statements: list[str] = []

        def install() -> None:
            conn = ledger.store._conn  # type: ignore[attr-defined]
            conn.set_trace_callback(statements.append)

        await ledger.store.writer.call(install)
        position = await ledger.open_position("ETHUSDT", "buy", entry_price=10, qty=1, leverage=5)
        history = await ledger.history(position.position_id)
    assert [s.split(" ")[0] for s in statements[:3]] == ["BEGIN", "INSERT", "COMMIT"]
    assert [r.version for r in history] == [1]


async def test_an_open_on_a_stream_that_holds_events_the_book_does_not_fold_follows_them(
    db_path: Path,
) -> None:
    """A position id whose stream holds an event but no position (a mark appended through
    the store, before the ledger opened): the book has no such position, so the open is
    decided, and it is stored after that event, as a read of the stream's version gives."""
    async with opened_store(db_path) as store:
        await store.append([new(marked("pos_x", 101), "stray")])
    quiet = Settings(snapshot_every_events=10**9, snapshot_every_seconds=10**6)
    async with Ledger(db_path, settings=quiet) as ledger:
        assert ledger.get_position("pos_x") is None
        position = await ledger.open_position(
            "BTCUSDT", "buy", entry_price=100, qty=1, leverage=5, position_id="pos_x"
        )
        assert position.position_id == "pos_x"
        history = await ledger.history("pos_x")
    assert [(r.event_id, type(r.event).__name__, r.version) for r in history] == [
        ("stray", "PositionMarked", 1),
        (history[1].event_id, "PositionOpened", 2),
    ]
    assert (await _stored(db_path))[-1][1:] == ("pos_x", 2)


async def test_the_run_after_a_wrong_assumption_reads_every_version(db_path: Path) -> None:
    """The run again (after p0 proved not new) decides differently and takes p1 as new, which
    holds events too: nothing would prove it there, so its version is read."""
    async with opened_store(db_path) as writer:
        await writer.append([new(opened("p0"), "o0"), new(opened("p1"), "o1")])
    calls = itertools.count()
    async with opened_store(db_path) as store:

        def unit(tx: StoreTransaction) -> int:
            stream = f"p{next(calls)}"
            tx.assume_new([stream])
            (record,) = tx.stage([new(marked(stream, 102), f"m-{stream}")])
            return record.version

        assert await store.transact(unit) == 2
    assert await _stored(db_path) == [("o0", "p0", 1), ("o1", "p1", 1), ("m-p1", "p1", 2)]


async def test_opens_in_one_group_with_a_stream_that_holds_events_follow_them(
    db_path: Path,
) -> None:
    """Three opens decided in one transaction (a group), one on a stream that holds a stray
    event: the rows are proven new by reading before they go in, and the group is decided
    again on the stored version, every open stored."""
    async with opened_store(db_path) as store:
        await store.append([new(marked("pos_x", 101), "stray")])
    quiet = Settings(snapshot_every_events=10**9, snapshot_every_seconds=10**6)
    async with Ledger(db_path, settings=quiet) as ledger:
        statements: list[str] = []

        def install() -> None:
            conn = ledger.store._conn  # type: ignore[attr-defined]
            conn.set_trace_callback(statements.append)

        await ledger.store.writer.call(install)

        async def open_one(position_id: str, symbol: str) -> None:
            await ledger.open_position(
                symbol, "buy", entry_price=100, qty=1, leverage=5, position_id=position_id
            )

        async with anyio.create_task_group() as group:
            for position_id, symbol in (("pos_a", "AUSDT"), ("pos_x", "XUSDT"), ("pos_b", "BUSDT")):
                group.start_soon(open_one, position_id, symbol)
        versions = {
            pid: [r.version for r in await ledger.history(pid)]
            for pid in ("pos_a", "pos_x", "pos_b")
        }
    assert [s.split(" ")[0] for s in statements].count("BEGIN") == 1  # one group
    assert versions == {"pos_a": [1], "pos_x": [1, 2], "pos_b": [1]}
    assert len(await _stored(db_path)) == 4
