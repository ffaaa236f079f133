"""Adversary: a many-row insert's rows are dropped from the transaction once inserted, before
the COMMIT (77a72a1). When that COMMIT then fails (a disk failing under it) or an interrupt
lands at it, nothing of the batch may be acknowledged, nothing lost that was acknowledged, and
the append run again must store the whole batch, each id once, on an intact chain. Both ways a
long batch reaches its insert are driven: the optimistic one (its first row proves the head)
and the one after a stale head (another store appended first: `_attempt`).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import cast

import anyio
import pytest

from ledger.commands import OpenPosition
from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked, PositionOpened
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import STAGE_MANY_FROM
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side

pytestmark = pytest.mark.anyio

T0 = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
LONG = STAGE_MANY_FROM * 3  # a long batch: staged column by column, inserted by executemany


def _batch(tag: str, n: int = LONG) -> list[NewEvent]:
    # streams interleaved, two times (no shared-time shortcut)
    return [
        NewEvent(
            stream=f"p{i % 3}",
            event=PositionMarked(position_id=f"p{i % 3}", mark_price=Decimal(f"100.{i}")),
            event_id=f"{tag}-{i}",
            occurred_at=T0 if i % 2 else datetime(2024, 5, 6, tzinfo=UTC),
        )
        for i in range(n)
    ]


class _AtCommit:
    """The store's cursor, whose next COMMIT fails (`fail`: before it runs, as a disk error)
    or is interrupted (`before`: a KeyboardInterrupt before it runs; `after`: right after it
    returned, where a signal's handler runs). Counts the rows its executemany inserted."""

    def __init__(self, cursor: sqlite3.Cursor, how: str) -> None:
        self._cursor = cursor
        self.connection = cursor.connection
        self.how = how
        self.hit = 0
        self.many_rows = 0
        self.many = False  # an executemany since the last statement

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        many, self.many = self.many, False
        if sql == "COMMIT" and self.how == "fail-many" and not many:
            return self._cursor.execute(sql)  # not after an executemany: let it pass
        if sql == "COMMIT" and not self.hit:
            self.hit += 1
            if self.how in ("fail", "fail-many"):
                raise sqlite3.OperationalError("disk I/O error")
            if self.how == "before":
                raise KeyboardInterrupt("before the COMMIT")
            self._cursor.execute(sql)
            raise KeyboardInterrupt("after the COMMIT returned")
        return self._cursor.execute(sql, *args)  # type: ignore[arg-type]

    def executemany(self, sql: str, rows: object) -> sqlite3.Cursor:
        listed = list(rows)  # type: ignore[call-overload]
        self.many_rows += len(listed)
        self.many = True
        return self._cursor.executemany(sql, listed)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteEventStore]:
    store = SQLiteEventStore(tmp_path / "ledger.db")
    await store.open()
    try:
        await store.append(_batch("first", 1))
        yield store
    finally:
        await store.close()


def _wrap(store: SQLiteEventStore, how: str) -> _AtCommit:
    assert store._cursor is not None
    wrapped = _AtCommit(store._cursor, how)
    store._cursor = cast(sqlite3.Cursor, wrapped)
    return wrapped


async def _ids(path: Path) -> list[str]:
    """What the file holds, read by a store of its own (not the one under attack)."""
    reader = SQLiteEventStore(path, read_only=True)
    await reader.open()
    try:
        records = await reader.read()
        assert (await reader.verify_chain()).events == len(records)
        return [record.event_id for record in records]
    finally:
        await reader.close()


async def _stale(path: Path) -> None:
    other = SQLiteEventStore(path)
    await other.open()
    try:
        await other.append(_batch("theirs", 2))
    finally:
        await other.close()


@pytest.mark.parametrize("head", ["current", "stale"])
async def test_a_long_batch_whose_commit_fails_stores_nothing_and_is_stored_whole_again(
    store: SQLiteEventStore, tmp_path: Path, head: str
) -> None:
    path = tmp_path / "ledger.db"
    theirs = ["theirs-0", "theirs-1"] if head == "stale" else []
    if head == "stale":
        await _stale(path)
    wrapped = _wrap(store, "fail")
    batch = _batch("ours")
    with pytest.raises(StoreError, match=r"nothing of it was stored.*disk I/O error"):
        await store.append(batch)
    assert wrapped.hit == 1 and wrapped.many_rows >= LONG - 1  # inserted, then the COMMIT failed
    assert await _ids(path) == ["first-0", *theirs]
    assert (await store.head()).seq == 1 + len(theirs)
    records = await store.append(batch)  # again: every row, none dropped with the failure
    assert [r.event_id for r in records] == [new.event_id for new in batch]
    assert [r.seq for r in records] == list(range(2 + len(theirs), 2 + len(theirs) + LONG))
    assert await _ids(path) == ["first-0", *theirs, *(new.event_id for new in batch)]
    (after,) = await store.append(_batch("after", 1))
    assert after.seq == 2 + len(theirs) + LONG


@pytest.mark.parametrize("head", ["current", "stale"])
@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_long_batch_interrupted_at_its_commit_is_stored_whole_or_not_at_all(
    store: SQLiteEventStore, tmp_path: Path, head: str, when: str
) -> None:
    path = tmp_path / "ledger.db"
    theirs = ["theirs-0", "theirs-1"] if head == "stale" else []
    if head == "stale":
        await _stale(path)
    wrapped = _wrap(store, when)
    batch = _batch("ours")
    ours = [new.event_id for new in batch]
    with pytest.raises(KeyboardInterrupt):
        await store.append(batch)
    assert wrapped.hit == 1
    assert await _ids(path) == ["first-0", *theirs, *(ours if when == "after" else [])]
    # the caller, told nothing, appends the batch again: stored once, whole, in order
    records = await store.append(batch)
    assert [r.event_id for r in records] == ours
    assert [r.seq for r in records] == list(range(2 + len(theirs), 2 + len(theirs) + LONG))
    assert await _ids(path) == ["first-0", *theirs, *ours]
    (after,) = await store.append(_batch("after", 1))
    assert after.seq == 2 + len(theirs) + LONG
    assert await _ids(path) == ["first-0", *theirs, *ours, "after-0"]


def _open(position_id: str) -> OpenPosition:
    return OpenPosition(
        position_id=position_id,
        symbol=f"{position_id.upper()}/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=5,
    )


def _on_threads(ledger: Ledger, ids: list[str]) -> list[object]:
    """Each command from a plain thread of its own (as the blocking manager's callers), all
    released at once."""
    outcomes: list[object] = [None] * len(ids)
    start = threading.Barrier(len(ids))

    def run(index: int) -> None:
        start.wait()
        try:
            outcomes[index] = ledger.execute_blocking(_open(ids[index]))
        except BaseException as exc:  # handed to the test
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a command never returned"
    return outcomes


@pytest.mark.parametrize("callers", ["tasks", "threads"])
async def test_a_group_of_commands_whose_commit_fails_fails_whole_and_the_book_keeps_to_the_log(
    tmp_path: Path, callers: str
) -> None:
    """Commands of many tasks (or threads) at once, grouped into transactions of many rows
    (inserted by executemany, dropped from the transaction before the COMMIT); the first such
    COMMIT fails: each of its commands hears StoreError and is in neither the log nor the book,
    every other command is in both, and the failed ones run again succeed."""
    db = tmp_path / "ledger.db"
    async with Ledger(db, settings=Settings(max_concurrent_positions=1000)) as ledger:
        await ledger.execute(_open("warm"))
        store = ledger.store
        assert isinstance(store, SQLiteEventStore)
        wrapped = _wrap(store, "fail-many")  # the first COMMIT of a many-row insert
        ids = [f"p{i}" for i in range(60 if callers == "tasks" else 24)]
        outcomes: list[object] = (
            list(
                await asyncio.gather(
                    *(ledger.execute(_open(i)) for i in ids), return_exceptions=True
                )
            )
            if callers == "tasks"
            else await anyio.to_thread.run_sync(_on_threads, ledger, ids)
        )
        assert wrapped.hit == 1 and wrapped.many_rows > 1  # a group's rows, inserted, then failed
        failed = [i for i, out in zip(ids, outcomes, strict=True) if isinstance(out, BaseException)]
        assert failed and all(
            isinstance(out, StoreError) for out in outcomes if isinstance(out, BaseException)
        )
        opened = {
            r.event.position_id for r in await store.read() if isinstance(r.event, PositionOpened)
        }
        assert opened == {"warm", *(i for i in ids if i not in failed)}
        assert set(ledger.book.open) == opened  # the book holds what the log holds, no more
        for i in failed:  # nothing of them stored: each runs again as new
            await ledger.execute(_open(i))
        assert set(ledger.book.open) == {"warm", *ids}
