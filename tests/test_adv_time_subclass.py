"""Attack (adversary): a caller's time that is a datetime *subclass* (pandas.Timestamp is one; a
seed bot may pass one as open_time), through the write path's one-event staging, whose time
(`StoreTransaction._stage_one`, the stage loop, `to_micros`) is `(moment - epoch) //
1 µs`: the subclass's own arithmetic. A subclass whose arithmetic disagrees with datetime's
must not change what is stored: the event is stored at the instant the caller named (the
reference here: calendar.timegm of its UTC fields, read with datetime's own methods), and the
live book equals the book rebuilt from the log.

The same through the store's own API (`NewEvent.occurred_at`, a store's clock), where no edge
of the ledger made the time a plain datetime first.

Controls of the same shape with plain datetimes (an offset zone, a DST fold, a naive time)
hold as they are.
"""

from __future__ import annotations

import calendar
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import anyio
import pytest

from benchmarks._data import EventMix, take
from ledger.blocking import ThreadSafePositionManager
from ledger.commands import OpenPosition
from ledger.envelope import NewEvent
from ledger.rules import decide
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.book import Book
from tests._workers import book_state

SETTINGS = Settings(max_concurrent_positions=100)
NY = ZoneInfo("America/New_York")


class Skewed(datetime):
    """A datetime whose subtraction is an hour off (as a library's own type may compute it
    in its own way): everything else is datetime's."""

    def __sub__(self, other: Any) -> Any:
        result = datetime.__sub__(self, other)
        return result + timedelta(hours=1) if isinstance(result, timedelta) else result


def instant_us(moment: datetime) -> int:
    """Microseconds since the epoch of the instant named, with datetime's own methods."""
    offset = datetime.utcoffset(moment)
    plain = datetime.combine(datetime.date(moment), datetime.time(moment))
    if offset is not None:
        plain -= offset
    return calendar.timegm(plain.timetuple()) * 1_000_000 + plain.microsecond


def last_occurred_us(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        (micros,) = conn.execute("SELECT occurred_us FROM events ORDER BY seq DESC").fetchone()
    finally:
        conn.close()
    return int(micros)


async def rebuilt(db: Path) -> tuple[object, ...]:
    async with Ledger(db, snapshot_path=db.parent / "none" / "p.json", settings=SETTINGS) as led:
        return book_state(led.book)


MOMENTS = {
    "skewed": Skewed(2026, 1, 1, 12, 0, 0, 5, tzinfo=UTC),
    "skewed-offset": Skewed(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    "skewed-fold": Skewed(2025, 11, 2, 1, 30, tzinfo=NY, fold=1),
    "offset": datetime(2026, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=-3))),
    "fold": datetime(2025, 11, 2, 1, 30, tzinfo=NY, fold=1),
    "naive": datetime(2026, 1, 1, 12, 0, 0, 7),
}


@pytest.mark.parametrize("name", list(MOMENTS))
def test_a_seed_open_time_is_stored_at_the_instant_it_names(tmp_path: Path, name: str) -> None:
    moment = MOMENTS[name]
    db = tmp_path / "ledger.db"
    with ThreadSafePositionManager(tmp_path / "p.json", db_path=db, settings=SETTINGS) as m:
        m.thread_safe_create_position(
            symbol="AUSDT",
            side="buy",
            entry_price=100,
            position_size=250,
            leverage=5,
            open_time=moment,
        )
        live = book_state(m.ledger.book)
    expected = instant_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    assert last_occurred_us(db) == expected
    assert anyio.run(rebuilt, db) == live


@pytest.mark.parametrize("name", list(MOMENTS))
def test_a_plan_time_is_stored_at_the_instant_it_names(tmp_path: Path, name: str) -> None:
    moment = MOMENTS[name]
    db = tmp_path / "ledger.db"
    command = OpenPosition(
        position_id="p1",
        symbol="AUSDT",
        side=Side.BUY,
        qty=Decimal(2),
        entry_price=Decimal(100),
        leverage=5,
    )

    def plan(book: Book) -> list[Plan]:
        return [Plan(e, occurred_at=moment) for e in decide(book, command, SETTINGS.limits)]

    async def main() -> tuple[object, ...]:
        async with Ledger(db, settings=SETTINGS) as ledger:
            await ledger.transact(plan)
            return book_state(ledger.book)

    live = anyio.run(main)
    expected = instant_us(moment if moment.tzinfo else moment.replace(tzinfo=UTC))
    assert last_occurred_us(db) == expected
    assert anyio.run(rebuilt, db) == live


# -- the store's own API: NewEvent.occurred_at and a clock's time are the caller's objects --


def _store_times(db: Path) -> list[tuple[int, int]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT occurred_us, recorded_us FROM events ORDER BY seq").fetchall()
    finally:
        conn.close()
    return [(int(occurred), int(recorded)) for occurred, recorded in rows]


def _skewed(moment: datetime) -> Skewed:
    return Skewed.combine(moment.date(), moment.timetz())


@pytest.mark.anyio
@pytest.mark.parametrize("shape", ["one event", "one time for a batch", "a time each"])
async def test_the_store_stores_a_subclass_time_at_the_instant_it_names(
    tmp_path: Path, shape: str
) -> None:
    base = datetime(2026, 3, 8, 6, 59, 59, 123456, tzinfo=UTC)
    events = take(EventMix(seed=11), 3)
    one = _skewed(base)
    times = {
        "one event": [one],
        "one time for a batch": [one, one, one],
        "a time each": [_skewed(base + timedelta(seconds=i)) for i in range(3)],
    }[shape]
    batch = [
        NewEvent(stream=e.stream, event=e.event, event_id=e.event_id, occurred_at=t)
        for e, t in zip(events, times, strict=False)
    ]
    recorded = _skewed(datetime(2026, 11, 30, 12, 0, tzinfo=UTC))
    store = SQLiteEventStore(tmp_path / "ledger.db", clock=lambda: recorded)
    await store.open()
    try:
        await store.append(batch)
    finally:
        await store.close()
    assert _store_times(tmp_path / "ledger.db") == [
        (instant_us(t), instant_us(recorded)) for t in times
    ]
