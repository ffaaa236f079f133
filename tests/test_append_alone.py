"""A lone append of one event runs its transaction in one flat frame (SQLite's
`_append_alone`), and anything unusual goes the general way, with the general way's outcome.

Each test drives the lone path into one of its exits: a COMMIT that fails (refused and named,
never run again behind the caller's back, and its caller woken even when it yielded to its
loop first), an event staging refuses (its batch fails alone), another store on the file
having appended since (the insert refuses seq head+1: the append lands after their rows).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import cast

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)


def _mark(event_id: str, price: object = Decimal("101.5"), stream: str = "p1") -> NewEvent:
    event = PositionMarked(position_id=stream, mark_price=price)  # type: ignore[arg-type]
    return NewEvent(stream=stream, event=event, event_id=event_id, occurred_at=T0)


class _CommitFailsOnce:
    """The store's cursor, whose next COMMIT fails as a disk failing under it would."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self.connection = cursor.connection
        self.failed = 0

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        if sql == "COMMIT" and not self.failed:
            self.failed += 1
            raise sqlite3.OperationalError("disk I/O error")
        return self._cursor.execute(sql, *args)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        return self._cursor.executemany(sql, rows)  # type: ignore[arg-type]


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    try:
        await store.append([_mark("first")])  # inline on the loop: the lone path's state
        yield store
    finally:
        await store.close()


def _fail_next_commit(store: SQLiteEventStore) -> _CommitFailsOnce:
    assert store._cursor is not None
    failing = _CommitFailsOnce(store._cursor)
    store._cursor = cast(sqlite3.Cursor, failing)
    return failing


async def _stored_ids(store: SQLiteEventStore) -> list[str]:
    return [record.event_id for record in await store.read()]


async def test_a_lone_append_whose_commit_fails_is_refused_named_and_not_run_again(
    store: SQLiteEventStore,
) -> None:
    failing = _fail_next_commit(store)
    with pytest.raises(StoreError, match=r"nothing of it was stored.*disk I/O error"):
        await store.append([_mark("lost")])
    assert failing.failed == 1
    assert await _stored_ids(store) == ["first"]
    assert (await store.head()).seq == 1
    # the next append starts on a fresh connection and continues the chain
    (again,) = await store.append([_mark("lost")])
    assert again.seq == 2
    assert await _stored_ids(store) == ["first", "lost"]
    assert (await store.verify_chain()).events == 2


async def test_a_lone_append_that_yielded_to_its_loop_first_hears_its_failed_commit(
    store: SQLiteEventStore,
) -> None:
    """With another task ready, an append yields once before it runs its group (of one,
    alone): its caller awaits a future, which the failure must settle."""
    failing = _fail_next_commit(store)
    with anyio.fail_after(10):
        outcome = await asyncio.gather(
            store.append([_mark("lost")]), asyncio.sleep(0), return_exceptions=True
        )
    assert isinstance(outcome[0], StoreError)
    assert failing.failed == 1
    assert await _stored_ids(store) == ["first"]


async def test_a_lone_append_of_an_event_that_cannot_be_encoded_fails_alone(
    store: SQLiteEventStore,
) -> None:
    with pytest.raises(StoreError, match="cannot store this batch"):
        await store.append([_mark("bad", price=object())])
    (kept,) = await store.append([_mark("bad", price=Decimal(7))])  # the id is free
    assert kept.seq == 2
    assert await _stored_ids(store) == ["first", "bad"]


async def test_a_lone_append_after_another_store_appended_lands_after_their_rows(
    store: SQLiteEventStore, tmp_path: Path
) -> None:
    other = SQLiteEventStore(tmp_path / "ledger.db")
    await other.open()
    try:
        await other.append([_mark("theirs-1")])
        await other.append([_mark("theirs-2", stream="p2")])
    finally:
        await other.close()
    # this store's head is seq 1, p1 at version 1: both stale
    (ours,) = await store.append([_mark("ours")])
    assert (ours.seq, ours.version) == (4, 3)
    assert await _stored_ids(store) == ["first", "theirs-1", "theirs-2", "ours"]
    assert (await store.verify_chain()).events == 4
    (next_one,) = await store.append([_mark("next", stream="p2")])
    assert (next_one.seq, next_one.version) == (5, 2)


async def test_lone_appends_one_after_another_continue_each_stream_and_the_chain(
    store: SQLiteEventStore,
) -> None:
    records = [(await store.append([_mark(f"m{i}", stream=f"p{i % 2 + 1}")]))[0] for i in range(6)]
    assert [(r.seq, r.stream, r.version) for r in records] == [
        (2, "p1", 2),
        (3, "p2", 1),
        (4, "p1", 3),
        (5, "p2", 2),
        (6, "p1", 4),
        (7, "p2", 3),
    ]
    head = await store.head()
    assert (head.seq, head.hash, head.stream_versions) == (
        7,
        records[-1].hash,
        {"p1": 4, "p2": 3},
    )
    assert (await store.verify_chain()).events == 7


class _InterruptAfterBegin:
    """The store's cursor, interrupted (a KeyboardInterrupt) right after its next BEGIN
    took the lock: an interrupt arriving between two steps of the transaction."""

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self.connection = cursor.connection
        self.interrupted = 0

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        done = self._cursor.execute(sql, *args)  # type: ignore[arg-type]
        if sql == "BEGIN IMMEDIATE" and not self.interrupted:
            self.interrupted += 1
            raise KeyboardInterrupt
        return done


async def test_a_lone_append_interrupted_after_its_begin_leaves_no_transaction_open(
    store: SQLiteEventStore,
) -> None:
    assert store._cursor is not None
    interrupting = _InterruptAfterBegin(store._cursor)
    store._cursor = cast(sqlite3.Cursor, interrupting)
    with pytest.raises(KeyboardInterrupt):
        await store.append([_mark("interrupted")])
    assert interrupting.interrupted == 1
    assert store._conn is not None and not store._conn.in_transaction
    (next_one,) = await store.append([_mark("next")])  # the lock was given back
    assert next_one.seq == 2
    assert await _stored_ids(store) == ["first", "next"]


@pytest.mark.parametrize("caller", ["task", "thread"])
async def test_a_transaction_interrupted_after_its_begin_leaves_no_transaction_open(
    store: SQLiteEventStore, caller: str
) -> None:
    # two events: the general way (`run_transaction`), inline on the loop (busy timeout at 0)
    # or on a plain thread that may wait (its own BEGIN, the busy timeout set)
    assert store._cursor is not None
    interrupting = _InterruptAfterBegin(store._cursor)
    store._cursor = cast(sqlite3.Cursor, interrupting)
    batch = [_mark("interrupted-1"), _mark("interrupted-2")]
    with pytest.raises(KeyboardInterrupt):
        if caller == "task":
            await store.append(batch)
        else:
            await anyio.to_thread.run_sync(store.append_blocking, batch)
    assert interrupting.interrupted == 1
    assert store._conn is not None and not store._conn.in_transaction
    (next_one,) = await store.append([_mark("next")])  # the lock was given back
    assert next_one.seq == 2
    assert await _stored_ids(store) == ["first", "next"]
