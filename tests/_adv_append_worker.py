"""A writer for test_adv_append_processes: sequential `EventStore.append`s on an asyncio loop
(each led inline by its task), alternating one event and a long batch of 40, every fourth an
id every worker appends too (an append retried by several processes). Each acknowledgement
is printed (seq, event_id, hash) once `append` returned it."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from decimal import Decimal

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.sqlite import SQLiteEventStore

SHARED_AT = datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC)


def _mark(stream: str, event_id: str, price: Decimal, at: datetime) -> NewEvent:
    event = PositionMarked(position_id=stream, mark_price=price)
    return NewEvent(stream=stream, event=event, event_id=event_id, occurred_at=at)


async def main(db: str, tag: str, rounds: int) -> None:
    store = SQLiteEventStore(db)
    await store.open()
    try:
        print(json.dumps({"ready": tag}), flush=True)
        for i in range(rounds):
            now = datetime.now(UTC)
            if i % 4 == 3:  # the same event, appended by every worker
                batch = [_mark("shared", f"shared-{i}", Decimal(i), SHARED_AT)]
            elif i % 2:
                batch = [
                    _mark(f"{tag}-{j % 3}", f"{tag}-{i}-{j}", Decimal(f"{i}.{j}"), now)
                    for j in range(40)
                ]
            else:
                batch = [_mark(f"{tag}-0", f"{tag}-{i}", Decimal(i), now)]
            records = await store.append(batch)
            acks = [[r.seq, r.event_id, r.hash, r.stream, r.version] for r in records]
            sys.stdout.write(json.dumps(acks) + "\n")
            sys.stdout.flush()
    finally:
        await store.close()
    print(json.dumps({"done": tag}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
