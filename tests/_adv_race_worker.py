"""A spawned process for tests/test_adv_write_path.py: its own Ledger on a shared file,
released with the others by a barrier, racing them through the write path; it writes what
each of its calls was told (the test holds that against the log)."""

from __future__ import annotations

import faulthandler
import json
from multiprocessing.synchronize import Barrier
from typing import Any

import anyio

from ledger.errors import (
    ExitExceedsPosition,
    PositionAlreadyClosed,
    TooManyOpenPositions,
)
from ledger.service import Ledger
from ledger.settings import Settings

LIMIT = 7  # open positions at most, across all the racing processes
ATTEMPTS = 6  # opens, exits and payments each process tries
SHARED = "shared"  # the position every process exits from


async def _main(db: str, index: int, start: Barrier, out: str) -> None:
    told: dict[str, Any] = {"opened": [], "too_many": 0, "exited": 0, "refused_exit": 0}
    async with Ledger(db, settings=Settings(max_concurrent_positions=LIMIT)) as ledger:
        start.wait()
        for k in range(ATTEMPTS):
            # an exit of 1 from the shared position and a payment every process records
            # under the same execution id, interleaved with the others
            try:
                await ledger.register_partial_exit(SHARED, price=110, qty=1, reason=f"w{index}")
                told["exited"] += 1
            except (ExitExceedsPosition, PositionAlreadyClosed):
                told["refused_exit"] += 1
            await ledger.record_funding(SHARED, "0.25", execution_id=f"pay-{k}")
        start.wait()  # the shared position is closed by now: opens only, under the limit
        for k in range(ATTEMPTS):
            try:
                position = await ledger.open_position(
                    f"W{index}K{k}USDT", "buy", entry_price=100, qty=1, leverage=2
                )
                told["opened"].append(position.position_id)
            except TooManyOpenPositions:
                told["too_many"] += 1
    with open(out, "w", encoding="utf-8") as file:
        json.dump(told, file)


def race(db: str, index: int, start: Barrier, out: str) -> None:
    faulthandler.dump_traceback_later(100)  # a stuck worker shows where it is stuck
    try:
        anyio.run(_main, db, index, start, out)
    except BaseException:
        start.abort()
        raise
