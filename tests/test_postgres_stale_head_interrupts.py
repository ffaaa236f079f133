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

import anyio

from ledger.errors import StoreError
from ledger.store.base import _Draft
from ledger.store.postgres import PostgresEventStore
from tests._events import lone_mark as event
from tests._interrupts import Inject
from tests.test_write_role_interrupts import no_cyclic_gc

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
    failures: list[str] = []
    try:
        mine.append_blocking([event("warm")])
        other.append_blocking([event("o-warm-1"), event("o-warm-2")])  # mine's head stale
        counted = Inject(None, codes=TRANSACTION)
        with counted:
            mine.append_blocking([event("counted")])
        assert counted.count > 40  # the sweep goes through the tail's records and the rest
        for at in range(counted.count):
            other.append_blocking([event(f"o{at}-1"), event(f"o{at}-2")])
            inject = Inject(at, codes=TRANSACTION)
            try:
                with inject:
                    mine.append_blocking([event(f"m{at}")])
            except (KeyboardInterrupt, StoreError):
                pass
            mine.append_blocking([event(f"after{at}")])
            other.append_blocking([event(f"o-after{at}")])
            mine.append_blocking([event(f"again{at}")])
            problem = anyio.run(_verified, pg_url)
            if problem:
                failures.append(f"{inject.where}: {problem}")
                break  # one is enough to see: the later writes chain on it
    finally:
        anyio.run(mine.close)
        anyio.run(other.close)
    assert failures == []


async def _verified(url: str) -> str | None:
    store = PostgresEventStore(url, read_only=True)
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
