"""A second process for test_adv_attacks' mixed writers: runs of concurrent marks, opens and
closes of its own positions through the async Ledger on a shared file."""

from __future__ import annotations

import asyncio
import sys

from ledger.service import Ledger
from ledger.settings import Settings


async def main(db: str) -> None:
    settings = Settings(max_concurrent_positions=1000)
    async with Ledger(db, settings=settings) as ledger:
        for round_no in range(6):
            ids = [f"proc-{round_no}-{i}" for i in range(4)]
            await asyncio.gather(
                *(
                    ledger.open_position(
                        f"P{round_no}{i}USDT",
                        "sell",
                        entry_price=50,
                        leverage=3,
                        qty=2,
                        position_id=pid,
                    )
                    for i, pid in enumerate(ids)
                )
            )
            await asyncio.gather(*(ledger.mark(pid, 40 + k) for k in range(10) for pid in ids))
            await asyncio.gather(
                *(ledger.register_partial_exit(pid, price=45, qty=1) for pid in ids[:2]),
                *(ledger.close_position(pid, price=44) for pid in ids[2:]),
            )
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
