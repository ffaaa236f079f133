"""A process for test_adv_interrupt_locks' task attack: a Ledger on a loop in this process's
main thread; tasks make commands (one alone, then three at once) while an interrupt is
injected before each opcode of the write path's lock code in turn (tests/_interrupts.py),
heard by the task running it. After each: a command from another thread and one from a task
must complete (bounded). Prints {"fired": n, "live": ..., "fold": ...} as its last line; a hang
dumps every thread's stack and ends the process (faulthandler).

Run: python -m tests._adv_task_interrupt_worker <dir>
"""

from __future__ import annotations

import asyncio
import faulthandler
import json
import sys
from decimal import Decimal
from pathlib import Path

import anyio

from ledger.commands import OpenPosition
from ledger.service import Ledger, new_position_id
from ledger.settings import Settings
from ledger.values import Side
from tests._interrupts import BOUND, LOCK_CODE, Inject, bounded
from tests._workers import audit_log, book_state

SETTINGS = Settings(
    max_concurrent_positions=100_000, snapshot_every_events=10**9, snapshot_every_seconds=10**6
)


def _open(symbol: str) -> OpenPosition:
    return OpenPosition(
        position_id=new_position_id(),
        symbol=symbol,
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(10),
        leverage=2,
    )


async def attack(folder: Path) -> tuple[int, str]:
    fired = 0
    async with Ledger(folder / "ledger.db", settings=SETTINGS) as led:

        async def command(symbol: str, at: int) -> str | None:
            task = asyncio.current_task()
            assert task is not None
            trace = Inject(at, files=LOCK_CODE, task=task, nops=True)
            sys.settrace(trace)
            try:
                await led.execute(_open(symbol))
            except KeyboardInterrupt:
                assert trace.where is not None
            finally:
                sys.settrace(None)
            return trace.where

        for together in (1, 3):
            for at in range(100_000):
                wheres = [
                    where
                    for where in await asyncio.gather(
                        *(command(f"T{together}-{i}-{at}USDT", at) for i in range(together))
                    )
                    if where is not None
                ]
                if not wheres:
                    break
                fired += 1
                print(
                    json.dumps({"interrupted": wheres, "together": together, "at": at}),
                    file=sys.stderr,
                    flush=True,
                )
                other = f"B{together}-{at}USDT"
                await anyio.to_thread.run_sync(
                    bounded, lambda s=other: led.execute_blocking(_open(s)), f"{wheres}"
                )
                with anyio.fail_after(BOUND):
                    await led.execute(_open(f"A{together}-{at}USDT"))
        live = repr(book_state(led.book))
    return fired, live


def main(folder: Path) -> None:
    faulthandler.dump_traceback_later(200, exit=True)
    fired, live = anyio.run(attack, folder)
    fold = repr(book_state(anyio.run(audit_log, folder / "ledger.db").fold))
    print(json.dumps({"fired": fired, "live": live, "fold": fold}), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
