"""A SQLite store reads the stored version of each stream it has not seen (one seek a stream:
`_versions_sql`) before staging to it: after a restart, appends to long, short and new streams,
and to more streams at once than one read asks for (500), continue each stream's versions."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio
AT = datetime(2026, 1, 1, tzinfo=UTC)


def mark(stream: str, event_id: str) -> NewEvent:
    return NewEvent(
        stream=stream,
        event=PositionMarked(position_id=stream, mark_price=Decimal(101)),
        event_id=event_id,
        occurred_at=AT,
    )


async def test_versions_read_after_a_restart_continue_every_stream(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    lengths = {"long": 300, "short": 1, "two": 2}
    first = SQLiteEventStore(path, synchronous="NORMAL")
    await first.open()
    try:
        for stream, length in lengths.items():
            await first.append([mark(stream, f"{stream}-{n}") for n in range(length)])
    finally:
        await first.close()
    again = SQLiteEventStore(path, synchronous="NORMAL")  # knows no stream's version
    await again.open()
    try:
        batch = [mark(s, f"{s}-again") for s in ("two", "new", "long", "short")]
        records = await again.append(batch)
        one = await again.append([mark("long", "long-once-more")])
    finally:
        await again.close()
    assert [(r.stream, r.version) for r in records] == [
        ("two", 3),
        ("new", 1),
        ("long", 301),
        ("short", 2),
    ]
    assert (one[0].stream, one[0].version) == ("long", 302)


async def test_more_streams_than_one_read_asks_for_at_once(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    streams = [f"s{n:04}" for n in range(1_100)]
    first = SQLiteEventStore(path, synchronous="NORMAL")
    await first.open()
    try:
        # every other stream gets an event now; the rest are new after the restart
        await first.append([mark(s, f"{s}-1") for s in streams[::2]])
    finally:
        await first.close()
    again = SQLiteEventStore(path, synchronous="NORMAL")
    await again.open()
    try:
        records = await again.append([mark(s, f"{s}-next") for s in streams])
    finally:
        await again.close()
    expected = [(s, 2 if n % 2 == 0 else 1) for n, s in enumerate(streams)]
    assert [(r.stream, r.version) for r in records] == expected
