"""Adversary: two stores on one file in one process, on one loop, each leading its appends
inline (`run_now`: no thread, no yield), alternately and from concurrent tasks: each one's
head is stale at nearly every turn (the other just committed), so the one-row optimistic
insert meets seq head+1 taken and long batches are decided again after the tail (5ee67d2,
550ba67). Versions stay consecutive, an id both append is stored once and handed to both
alike, and the chain verifies."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent, Recorded
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


def _batch(tag: str, round_: int) -> list[NewEvent]:
    if round_ % 5 == 4:  # the same event from both stores
        tag = "both"
    size = 35 if round_ % 3 == 1 else 1
    at = datetime(2024, 6, 7, 8, 9, 10, round_, tzinfo=UTC)
    return [
        NewEvent(
            stream=f"s{j % 2}",  # both stores write the same streams
            event=PositionMarked(position_id=f"s{j % 2}", mark_price=Decimal(f"{round_}.{j}")),
            event_id=f"{tag}/{round_}/{j}",
            occurred_at=at,
        )
        for j in range(size)
    ]


async def test_two_stores_on_one_file_on_one_loop_keep_one_chain(db_path: Path) -> None:
    first, second = SQLiteEventStore(db_path), SQLiteEventStore(db_path)
    await first.open()
    await second.open()
    acked: dict[str, list[Recorded]] = {"a": [], "b": []}
    try:
        for round_ in range(30):  # alternately, each after the other's commit
            acked["a"].extend(await first.append(_batch("a", round_)))
            acked["b"].extend(await second.append(_batch("b", round_)))

        async def writer(store: SQLiteEventStore, tag: str) -> None:
            for round_ in range(30, 60):
                acked[tag].extend(await store.append(_batch(tag, round_)))

        await asyncio.gather(writer(first, "a"), writer(second, "b"))
        await first.verify_chain()
        records = await first.read()
    finally:
        await first.close()
        await second.close()
    by_id = {r.event_id: r for r in records}
    assert len(by_id) == len(records)
    for record in acked["a"] + acked["b"]:
        stored = by_id[record.event_id]
        assert (stored.seq, stored.hash, stored.version) == (
            record.seq,
            record.hash,
            record.version,
        )
    versions: dict[str, int] = {}
    for record in records:
        versions[record.stream] = versions.get(record.stream, 0) + 1
        assert record.version == versions[record.stream]
    expected = {new.event_id for r in range(60) for t in "ab" for new in _batch(t, r)}
    assert set(by_id) == expected
