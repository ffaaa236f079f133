"""A process appending long batches (staged column by column, inserted by executemany) to a
SQLite log from two tasks, printing each batch once `append` returned it; killed -9 by
tests/test_adv_long_batch_crash.py. Args: DB RUN."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.base import STAGE_MANY_FROM
from ledger.store.sqlite import SQLiteEventStore


def batch(run: str, task: int, k: int) -> list[NewEvent]:
    n = STAGE_MANY_FROM + (k * 37 + task * 11) % 150  # 32 to 181 events
    at = datetime.now(UTC)
    return [
        NewEvent(
            stream=f"s{i % 4}",  # the same streams in every run: versions read back
            event=PositionMarked(position_id=f"s{i % 4}", mark_price=Decimal(f"{k}.{i}")),
            event_id=f"{run}-{task}-{k}-{i}of{n}",
            occurred_at=at,
        )
        for i in range(n)
    ]


async def main(db: Path, run: str) -> None:
    store = SQLiteEventStore(db)
    await store.open()
    print(json.dumps({"ready": (await store.head()).seq}), flush=True)
    await anyio.to_thread.run_sync(sys.stdin.readline)  # the go: every writer ready, at once

    async def writer(task: int) -> None:
        k = 0
        while True:
            records = await store.append(batch(run, task, k))
            line = [[r.seq, r.event_id, r.hash] for r in records]
            print(json.dumps({"batch": line}), flush=True)
            k += 1
            # a pause: a writer appending back to back holds the write lock nearly all the
            # time, and another process's busy handler (sleeping between tries) never gets it
            await anyio.sleep(0.01)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(writer, 0)
        tasks.start_soon(writer, 1)


if __name__ == "__main__":
    anyio.run(main, Path(sys.argv[1]), sys.argv[2])
