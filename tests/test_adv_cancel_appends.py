"""Adversary: appends cancelled at every point of their way (c7482e3/1660608's run_now, the
yield before a group, a follower's future, a group handed to the writer thread), by
`task.cancel()` after k turns of the loop for every k until the append ends on its own, and
under `asyncio.timeout` / anyio's `move_on_after`. Whatever the caller heard, its batch is
stored whole or not at all, the store's head is the log's end, and the same batch retried
(same ids) ends stored exactly once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.base import EventStore
from ledger.store.sqlite import SQLiteEventStore

pytestmark = pytest.mark.anyio


def _batch(tag: str, size: int) -> list[NewEvent]:
    at = datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)
    return [
        NewEvent(
            stream=f"s{j % 2}",
            event=PositionMarked(position_id=f"s{j % 2}", mark_price=Decimal(f"1.{j}")),
            event_id=f"{tag}/{j}",
            occurred_at=at,
        )
        for j in range(size)
    ]


@contextmanager
def _role_held_elsewhere(store: EventStore) -> Iterator[threading.Event]:
    """The writer thread busy until the event is set: an inline lead finds the role taken."""
    release, held = threading.Event(), threading.Event()

    def hold() -> None:
        held.set()
        release.wait()

    store.writer.submit(hold)
    held.wait()
    try:
        yield release
    finally:
        release.set()


async def _stored_ids(store: SQLiteEventStore) -> list[str]:
    return [r.event_id for r in await store.read()]


async def _check(store: SQLiteEventStore, batches: list[list[NewEvent]]) -> None:
    """Each batch stored whole or not at all; then retried: each exactly once, in the log's
    order, and the head the log's end."""
    ids = await _stored_ids(store)
    for batch in batches:
        present = [new.event_id in ids for new in batch]
        assert all(present) or not any(present), f"{batch[0].event_id}: stored in part"
    for batch in batches:
        await store.append(batch)
    ids = await _stored_ids(store)
    assert sorted(ids) == sorted(new.event_id for batch in batches for new in batch)
    head = await store.head()
    report = await store.verify_chain()
    assert head.seq == report.events == len(ids)


@pytest.mark.parametrize("size", [1, 40])
@pytest.mark.parametrize("mode", ["alone", "with followers", "role taken"])
async def test_an_append_cancelled_after_any_number_of_turns_is_whole_or_absent(
    db_path: Path, size: int, mode: str
) -> None:
    store = SQLiteEventStore(db_path, synchronous="NORMAL")
    await store.open()
    batches: list[list[NewEvent]] = []
    try:
        for turns in range(12):
            mine = _batch(f"{mode}-{turns}", size)
            others = [_batch(f"{mode}-{turns}-o{i}", size) for i in range(3)]
            batches.append(mine)
            if mode == "with followers":
                batches.extend(others)
            held = _role_held_elsewhere(store) if mode == "role taken" else nullcontext()
            with held as release:
                task = asyncio.ensure_future(store.append(mine))
                followers = (
                    [asyncio.ensure_future(store.append(b)) for b in others]
                    if mode == "with followers"
                    else []
                )
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                if release is not None:
                    release.set()
                await asyncio.gather(task, *followers, return_exceptions=True)
        await _check(store, batches)
    finally:
        await store.close()


@pytest.mark.parametrize("size", [1, 40])
async def test_appends_under_expiring_timeouts_are_whole_or_absent(
    db_path: Path, size: int
) -> None:
    """Sequential appends, each under a timeout that expires at once: an owed turn of the
    loop (every _MAX_SKIPPED_YIELDS appends) is where a timeout can fire."""
    store = SQLiteEventStore(db_path, synchronous="NORMAL")
    await store.open()
    batches: list[list[NewEvent]] = []
    try:
        for i in range(40):
            batch = _batch(f"t{i}", size)
            batches.append(batch)
            if i % 2:
                with anyio.move_on_after(0):
                    await store.append(batch)
            else:
                try:
                    async with asyncio.timeout(0):
                        await store.append(batch)
                except TimeoutError:
                    pass
        await _check(store, batches)
    finally:
        await store.close()
