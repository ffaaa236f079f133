"""A writer for tests/test_adv_write_path.py's kill -9 test: opens positions w0, w1, ... one
command a transaction as fast as it can, printing each id once its open is acknowledged
(durable), until it is killed."""

from __future__ import annotations

import asyncio
import sys

from ledger.service import Ledger
from ledger.settings import Settings


async def main(db: str) -> None:
    settings = Settings(max_concurrent_positions=10_000, synchronous="FULL")
    async with Ledger(db, settings=settings) as ledger:
        print("ready", flush=True)
        n = 0
        while True:
            position = await ledger.open_position(
                f"W{n}USDT", "buy", entry_price=100, qty=1, leverage=2, position_id=f"w{n}"
            )
            print(position.position_id, flush=True)
            n += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
