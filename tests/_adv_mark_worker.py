"""A writer for test_adv_attacks' kill -9: concurrent marks in groups, each acknowledgement
printed (seq, event_id, hash, position, price) once `execute` returned it."""

from __future__ import annotations

import asyncio
import json
import sys
from decimal import Decimal

from ledger.commands import MarkPosition
from ledger.service import Ledger
from ledger.settings import Settings


async def main(db: str) -> None:
    async with Ledger(db, settings=Settings(max_concurrent_positions=100)) as ledger:
        ids = []
        for i in range(4):
            p = await ledger.open_position(
                f"K{i}USDT", "buy", entry_price=100, leverage=2, qty=1, position_id=f"k{i}"
            )
            ids.append(p.position_id)
        print(json.dumps({"ready": ledger.last_seq}), flush=True)
        n = 0

        async def mark(pid: str, price: Decimal) -> None:
            (record,) = await ledger.execute(MarkPosition(position_id=pid, mark_price=price))
            line = [record.seq, record.event_id, record.hash, pid, str(price)]
            sys.stdout.write(json.dumps(line) + "\n")
            sys.stdout.flush()

        while True:
            batch = []
            for _ in range(40):
                n += 1
                batch.append(mark(ids[n % 4], Decimal(100) + Decimal(n) / 1000))
            await asyncio.gather(*batch)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
