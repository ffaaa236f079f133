"""Adversary: the disk fills under sequential store appends led inline on the loop (5ee67d2's
one-row insert and inline BEGIN, 550ba67's long batches): the append that does not fit is a
typed StoreError naming the cause, nothing of it is stored and the head does not move; once
space returns the same batch (same ids) is stored once, on the chain, by the same store."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore
from tests._tmpfs import mounted_tmpfs

pytestmark = pytest.mark.anyio


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with mounted_tmpfs(tmp_path / "mnt", "1m") as point:
        yield point


def _batch(round_: int, size: int) -> list[NewEvent]:
    at = datetime(2024, 5, 6, 7, 8, 9, round_, tzinfo=UTC)
    return [
        NewEvent(
            stream=f"p{j % 3}",
            event=PositionMarked(position_id=f"p{j % 3}", mark_price=Decimal(f"{round_}.{j}")),
            event_id=f"r{round_}-{j}",
            occurred_at=at,
        )
        for j in range(size)
    ]


@pytest.mark.parametrize("size", [1, 40])
async def test_a_full_disk_refuses_one_append_whole_and_the_same_batch_goes_in_later(
    small_disk: Path, size: int
) -> None:
    db = small_disk / "ledger.db"
    filler = small_disk / "filler"
    store = SQLiteEventStore(db)
    await store.open()
    try:
        acked = list(await store.append(_batch(0, size)))
        stat = os.statvfs(small_disk)
        filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 32 * 1024))
        refused: list[NewEvent] | None = None
        for round_ in range(1, 2000):
            batch = _batch(round_, size)
            before = await store.head()
            try:
                acked.extend(await store.append(batch))
            except StoreError as error:
                assert "disk full" in str(error), error
                after = await store.head()
                assert (after.seq, after.hash) == (before.seq, before.hash)
                refused = batch
                break
        assert refused is not None, "the disk never filled"
        filler.unlink()  # space returns
        stored_now = await store.append(refused)
        again = await store.append(refused)  # a retry of the same ids: the stored records
        assert [r.hash for r in again] == [r.hash for r in stored_now]
        acked.extend(stored_now)
        await store.verify_chain()
        records = await store.read()
    finally:
        await store.close()
    assert [(r.seq, r.event_id, r.hash) for r in records] == [
        (r.seq, r.event_id, r.hash) for r in acked
    ]
