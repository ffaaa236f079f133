"""An interrupt at any instruction of the run after a stale head keeps the log's chain whole.

When another process committed after this store's head, the SQLite store reads the tail under
the write lock and moves its head over each record of it (`SQLiteEventStore._attempt`), then
runs the unit again. A KeyboardInterrupt (a signal's, raised here by a trace at each
instruction in turn) landing between the head's seq and its hash set for a record left the
head's seq ahead of its hash: the next write chained on the old hash, and the log failed
verification (what ac0f29c fixed for a committed head). After each interrupt: the next
appends of both stores are stored once, and the log verifies.
"""

from __future__ import annotations

from pathlib import Path

import anyio

from ledger.errors import StoreError
from ledger.store.sqlite import SQLiteEventStore
from tests._events import lone_mark as event
from tests._interrupts import Inject
from tests.test_write_role_interrupts import no_cyclic_gc

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

ATTEMPT = frozenset({SQLiteEventStore._attempt.__code__})


def test_an_interrupt_anywhere_in_the_run_after_a_stale_head_keeps_the_chain(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"

    async def opened() -> tuple[SQLiteEventStore, SQLiteEventStore]:
        mine, other = SQLiteEventStore(db), SQLiteEventStore(db)
        await mine.open()
        await other.open()
        return mine, other

    mine, other = anyio.run(opened)
    failures: list[str] = []
    try:
        mine.append_blocking([event("warm")])
        other.append_blocking([event("o-warm-1"), event("o-warm-2")])  # mine's head stale
        counted = Inject(None, codes=ATTEMPT)
        with counted:
            mine.append_blocking([event("counted")])
        assert counted.count > 20  # the sweep goes through the tail read and the run again
        for at in range(counted.count):
            other.append_blocking([event(f"o{at}-1"), event(f"o{at}-2")])
            inject = Inject(at, codes=ATTEMPT)
            try:
                with inject:
                    mine.append_blocking([event(f"m{at}")])
            except (KeyboardInterrupt, StoreError):
                pass
            mine.append_blocking([event(f"after{at}")])
            other.append_blocking([event(f"o-after{at}")])
            mine.append_blocking([event(f"again{at}")])
            problem = anyio.run(_verified, db)
            if problem:
                failures.append(f"{inject.where}: {problem}")
                break  # one is enough to see: the later writes chain on it
    finally:
        anyio.run(mine.close)
        anyio.run(other.close)
    assert failures == []


async def _verified(db: Path) -> str | None:
    store = SQLiteEventStore(db)
    await store.open()
    try:
        ids = [record.event_id for record in await store.read()]
        try:
            checked = (await store.verify_chain()).events
        except StoreError as broken:
            return str(broken)
        if checked != len(ids) or len(ids) != len(set(ids)):
            return f"the log {ids[-4:]}"
        return None
    finally:
        await store.close()
