"""Attacks on the rebuild's one-hand-off fold (EventStore.fold_pages on SQLite): a caller
cancelled mid-fold, an exception inside a page, the store closed under a fold."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import anyio.from_thread
import pytest

from ledger.codec import FoldPage
from ledger.envelope import NewEvent
from ledger.events import PositionMarked, PositionOpened
from ledger.rebuild import fold_log
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.book import Book, fold_records

pytestmark = pytest.mark.anyio

EVENTS = 60
PAGE = 10


async def _filled(db_path: Path) -> SQLiteEventStore:
    store = SQLiteEventStore(db_path)
    await store.open()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    batch = [
        NewEvent(
            stream="a",
            event=PositionOpened(
                position_id="a",
                symbol="AUSDT",
                side=Side.BUY,
                qty=Decimal(1),
                entry_price=Decimal(10),
                leverage=2,
            ),
            event_id="open-a",
            occurred_at=at,
        )
    ]
    batch += [
        NewEvent(
            stream="a",
            event=PositionMarked(position_id="a", mark_price=Decimal(10 + i)),
            event_id=f"mark-{i}",
            occurred_at=at,
        )
        for i in range(1, EVENTS)
    ]
    await store.append(batch)
    return store


async def test_a_cancelled_fold_stops_after_its_page_and_the_store_goes_on(db_path: Path) -> None:
    store = await _filled(db_path)
    try:
        pages: list[int] = []
        with anyio.CancelScope() as scope:

            def consume(page: FoldPage) -> None:
                pages.append(len(page))
                if len(pages) == 2:
                    anyio.from_thread.run_sync(scope.cancel)

            await store.fold_pages(consume, page_size=PAGE)
        assert scope.cancelled_caught
        assert len(pages) == 2, pages  # stopped after the page it was on
        # the store still reads and writes, and a whole fold is the exact book
        book = await fold_log(store, page_size=PAGE)
        assert book.open["a"].current_price == Decimal(10 + EVENTS - 1)
        reference = fold_records(await store.read())
        assert book.open == reference.open and book.last_hash == reference.last_hash
    finally:
        await store.close()


async def test_an_exception_inside_a_page_reaches_the_caller_and_nothing_is_left_open(
    db_path: Path,
) -> None:
    store = await _filled(db_path)
    try:
        seen: list[Sequence[object]] = []

        class Boom(Exception):
            pass

        def consume(page: FoldPage) -> None:
            seen.append(page)
            if len(seen) == 3:
                raise Boom

        with pytest.raises(Boom):
            await store.fold_pages(consume, page_size=PAGE)
        assert len(seen) == 3
        # a writer still commits (no read transaction of the fold pins the file)
        await store.append(
            [
                NewEvent(
                    stream="a",
                    event=PositionMarked(position_id="a", mark_price=Decimal(5)),
                    event_id="after",
                    occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
                )
            ]
        )
        book = await fold_log(store, page_size=PAGE)
        assert book.open["a"].current_price == 5
    finally:
        await store.close()


async def test_closing_the_store_under_a_fold_neither_hangs_nor_corrupts_the_book(
    db_path: Path,
) -> None:
    """The fold reads through a connection of its own: a close meanwhile lets it finish (or
    refuse with StoreUnavailable), never leaves a half book claiming to be whole."""
    store = await _filled(db_path)
    book = Book()
    closed = False

    def consume(page: FoldPage) -> None:
        nonlocal closed
        book.apply_facts(page, last_hash=book.last_hash)
        if not closed:
            closed = True
            anyio.from_thread.run(store.close)

    try:
        await store.fold_pages(consume, page_size=PAGE)
    finally:
        await store.close()
    assert closed
    assert book.last_seq == EVENTS
    assert book.open["a"].current_price == Decimal(10 + EVENTS - 1)
