"""Adversary: an interrupt (KeyboardInterrupt, as a signal's handler raises it) before every
instruction of SQLite's write transaction while it appends a long batch, whose rows are dropped
from the transaction once inserted, before the COMMIT (77a72a1): on a current head (the
optimistic insert, `_insert_proving`) and on a stale one (another store appended first:
`_attempt`). After each, the batch is stored whole or not at all; the caller, told nothing,
appends it again and it is then stored exactly once, in order; both stores go on appending and
a fresh reader finds the chain whole.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import NewEvent
from ledger.errors import StoreError
from ledger.events import PositionMarked
from ledger.store.base import STAGE_MANY_FROM
from ledger.store.sqlite import SQLiteEventStore
from tests._interrupts import Inject, log_problem, no_cyclic_gc

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

CODES = frozenset(
    {
        SQLiteEventStore.run_transaction.__code__,
        SQLiteEventStore._insert_proving.__code__,
        SQLiteEventStore._attempt.__code__,
    }
)
T0 = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _batch(tag: str, n: int = STAGE_MANY_FROM + 8) -> list[NewEvent]:
    return [
        NewEvent(
            stream=f"s{i % 3}",
            event=PositionMarked(position_id=f"s{i % 3}", mark_price=Decimal(f"1.{i}")),
            event_id=f"{tag}-{i}",
            occurred_at=T0,
        )
        for i in range(n)
    ]


def _ids_after(db: Path, seq: int) -> list[str]:
    """The ids the file holds after seq, in seq order (read by sqlite3 itself, no store)."""
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT event_id FROM events WHERE seq > ? ORDER BY seq", (seq,))
        return [row[0] for row in rows]


def _last_seq(db: Path) -> int:
    with closing(sqlite3.connect(db)) as conn:
        return int(conn.execute("SELECT max(seq) FROM events").fetchone()[0])


@pytest.mark.parametrize("head", ["current", "stale"])
def test_an_interrupt_anywhere_in_a_long_batchs_transaction_stores_it_whole_or_not(
    tmp_path: Path, head: str
) -> None:
    db = tmp_path / "ledger.db"

    async def opened() -> tuple[SQLiteEventStore, SQLiteEventStore]:
        # NORMAL: what is under test is the transaction, not the fsync (no fsync a commit: fast)
        mine = SQLiteEventStore(db, synchronous="NORMAL")
        other = SQLiteEventStore(db, synchronous="NORMAL")
        await mine.open()
        await other.open()
        return mine, other

    mine, other = anyio.run(opened)
    try:
        mine.append_blocking(_batch("warm", 1))
        if head == "stale":
            other.append_blocking(_batch("o-warm", 2))
        counted = Inject(None, codes=CODES)
        with counted:
            mine.append_blocking(_batch("counted"))
        assert counted.count > (60 if head == "stale" else 30)
        outcomes: set[bool] = set()
        for at in range(counted.count):
            if head == "stale":
                other.append_blocking(_batch(f"o{at}", 2))
            batch = _batch(f"m{at}")
            ids = [new.event_id for new in batch]
            last = _last_seq(db)
            inject = Inject(at, codes=CODES)
            try:
                with inject:
                    mine.append_blocking(batch)
            except (KeyboardInterrupt, StoreError):
                pass
            assert inject.where is not None
            landed = _ids_after(db, last)
            assert landed in ([], ids), inject.where  # whole or nothing
            outcomes.add(bool(landed))
            records = mine.append_blocking(batch)  # told nothing: again
            assert [r.event_id for r in records] == ids, inject.where
            assert _ids_after(db, last) == ids, inject.where  # once, in order
            # both go on from there (a head left behind is caught up by the next insert)
            other.append_blocking(_batch(f"o-after{at}", 1))
            mine.append_blocking(_batch(f"after{at}", 1))
        assert outcomes == {False, True}  # interrupted before the COMMIT, and after it
        problem = anyio.run(log_problem, SQLiteEventStore(db))
        assert problem is None, problem
    finally:
        anyio.run(mine.close)
        anyio.run(other.close)
