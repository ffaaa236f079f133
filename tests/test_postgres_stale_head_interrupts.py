"""An interrupt at any instruction of a PostgreSQL transaction after a stale head keeps the
log's chain whole.

When another store (another connection, another process) committed after this store's head,
`PostgresEventStore.run_transaction` reads the tail under the table lock and moves its head
over each record of it, its seq set last, before it runs the unit. A KeyboardInterrupt (a
signal's, raised here by a trace at each instruction of the transaction in turn) landing
between a record's hash and seq set leaves the head behind its log (the tail is read again from
there), never its seq ahead of its hash, which would chain the next append on the old hash and
fail verification. The same for the head of a committed transaction (`_Draft.publish`, which
set the seq first: an interrupt there broke the chain). The SQLite analogue is
tests/test_adv_stale_head_interrupts.py. After each interrupt: the next appends of both stores
are stored once, and the log verifies.
"""

from __future__ import annotations

from functools import partial

import anyio

from ledger.store.base import _Draft
from ledger.store.postgres import PostgresEventStore
from tests._interrupts import no_cyclic_gc, sweep_with_a_stale_head

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

# the transaction, the stale head moved over the tail, the committed head published
TRANSACTION = frozenset({PostgresEventStore.run_transaction.__code__, _Draft.publish.__code__})


def test_an_interrupt_anywhere_in_a_transaction_after_a_stale_head_keeps_the_chain(
    pg_url: str,
) -> None:
    async def opened() -> tuple[PostgresEventStore, PostgresEventStore]:
        mine, other = PostgresEventStore(pg_url), PostgresEventStore(pg_url)
        await mine.open()
        await other.open()
        return mine, other

    mine, other = anyio.run(opened)
    reader = partial(PostgresEventStore, pg_url, read_only=True)
    assert sweep_with_a_stale_head(mine, other, TRANSACTION, at_least=40, reader=reader) == []
