"""Following the log as other processes commit to it (for `watch`)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from ledger.envelope import Recorded
from ledger.store.base import EventStore


async def follow(
    store: EventStore, *, after_seq: int, poll_interval: float = 0.25
) -> AsyncGenerator[list[Recorded], None]:
    """Pages of new records as other processes commit them, forever.

    Woken by the store when it can tell (PostgreSQL: LISTEN/NOTIFY), else one indexed query
    (seq > last) per poll_interval when idle: next to nothing.
    """
    seq = after_seq
    async with store.follow() as waiter:
        while True:
            got = False
            async for page in store.iterate(after_seq=seq):
                if page:
                    got = True
                    seq = page[-1].seq
                    yield page
            if not got:
                await waiter.wait(poll_interval)
