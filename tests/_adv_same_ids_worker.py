"""A process of tests/test_adv_same_ids_race.py: on one SQLite file with another such
process, opens positions p0, p1, ... by the ids it is given (the other process opens the same
ids, on other symbols), each as one command, as soon as both are ready; reports per id
whether its open was acknowledged or refused."""

from __future__ import annotations

import asyncio
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from ledger.errors import InvalidValue
from ledger.service import Ledger
from ledger.settings import Settings

SETTINGS = Settings(
    max_concurrent_positions=100_000,
    synchronous="NORMAL",
    snapshot_every_events=10**9,
    snapshot_every_seconds=10**6,
)


async def _run(db: str, name: str, count: int, start: Barrier) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    async with Ledger(db, settings=SETTINGS) as ledger:
        start.wait(30)
        # A from p0 up, B from the last down: the two meet somewhere, mid-run
        for n in range(count) if name == "A" else reversed(range(count)):
            position_id = f"p{n}"
            try:
                await ledger.open_position(
                    f"{name}{n}USDT",
                    "buy",
                    entry_price=100,
                    qty=1,
                    leverage=2,
                    position_id=position_id,
                )
            except InvalidValue as refused:
                outcomes[position_id] = f"refused: {refused}"
            else:
                outcomes[position_id] = "opened"
    return outcomes


def race(db: str, name: str, count: int, start: Barrier, out: Queue[object]) -> None:
    try:
        out.put((name, asyncio.run(_run(db, name, count, start))))
    except BaseException as exc:  # handed to the test
        out.put((name, repr(exc)))
