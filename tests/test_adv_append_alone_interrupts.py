"""An interrupt at any instruction of a lone append run inline keeps the log's chain whole.

A task's single append on its loop takes `SQLiteEventStore._append_alone` (one flat frame:
BEGIN, its insert proving the head, COMMIT, the head published). A KeyboardInterrupt (a
signal's, raised here by a trace at each instruction in turn, in the main thread's loop) that
lands between its COMMIT and the head published whole left the head's seq ahead of its hash:
the next append chained on the old hash, and the log failed verification (what ac0f29c fixed
in `run_transaction`). After each interrupt: the log verifies, the event is stored at most
once, a caller told it failed with a StoreError finds nothing of it stored, and the next
appends are stored and verify.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio

from ledger.errors import StoreError
from ledger.store.sqlite import SQLiteEventStore
from tests._events import lone_mark as event
from tests._interrupts import Inject, no_cyclic_gc

__all__ = ["no_cyclic_gc"]  # the autouse fixture Inject needs (see Inject.__enter__)

APPEND_ALONE = frozenset({SQLiteEventStore._append_alone.__code__})


def test_an_interrupt_anywhere_in_a_lone_append_keeps_the_chain(tmp_path: Path) -> None:
    async def main() -> list[str]:
        store = SQLiteEventStore(tmp_path / "ledger.db")
        await store.open()
        failures: list[str] = []
        try:
            await store.append([event("warm")])
            task = asyncio.current_task()
            assert task is not None
            counted = Inject(None, codes=APPEND_ALONE, task=task)
            with counted:
                await store.append([event("counted")])
            assert counted.count > 30  # the sweep goes through the lone append
            for at in range(counted.count):
                inject = Inject(at, codes=APPEND_ALONE, task=task)
                heard: object
                try:
                    with inject:
                        heard = await store.append([event(f"a{at}")])
                except (KeyboardInterrupt, StoreError) as exc:
                    heard = exc
                await store.append([event(f"after{at}")])
                ids = [record.event_id for record in await store.read()]
                try:
                    verified = (await store.verify_chain()).events == len(ids)
                except StoreError as broken:
                    verified = False
                    failures.append(f"{inject.where}: {broken}")
                if not verified or len(ids) != len(set(ids)):
                    failures.append(f"{inject.where}: the log {ids[-4:]}")
                elif isinstance(heard, StoreError) and f"a{at}" in ids:
                    failures.append(f"{inject.where}: stored, the caller heard {heard!r}")
                if failures:
                    break  # one is enough to see: the later ones chain on it
        finally:
            await store.close()
        return failures

    assert anyio.run(main) == []
