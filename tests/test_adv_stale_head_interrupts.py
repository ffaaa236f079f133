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

from functools import partial
from pathlib import Path

import anyio

from ledger.store.sqlite import SQLiteEventStore
from tests._interrupts import no_cyclic_gc, sweep_with_a_stale_head

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
    reader = partial(SQLiteEventStore, db)
    assert sweep_with_a_stale_head(mine, other, ATTEMPT, at_least=20, reader=reader) == []
