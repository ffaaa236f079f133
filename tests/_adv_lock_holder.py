"""Another process on the same SQLite file, for tests/test_adv_blocking_storm.py: it writes
real events through its own ThreadSafePositionManager, and holds the write lock for as long
as the test says.

Protocol (one line each way): it prints "ready" once open. For each "open N" read on stdin it
runs one transaction whose decider, on its first call, prints "locked" (BEGIN IMMEDIATE is held
then) and reads one more line ("go") before deciding the open of CHILD{N}USDT; once that is
acknowledged (durable) it prints "acked <position id>". "exit" closes the manager and ends.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from pathlib import Path

from ledger.blocking import ThreadSafePositionManager
from ledger.commands import OpenPosition
from ledger.rules import decide
from ledger.service import Plan
from ledger.settings import Settings
from ledger.values import Side
from projections.book import Book


def main(db: str, snapshot: str) -> None:
    settings = Settings(max_concurrent_positions=1000)
    with ThreadSafePositionManager(Path(snapshot), db_path=Path(db), settings=settings) as manager:
        print("ready", flush=True)
        for line in sys.stdin:
            order = line.split()
            if order == ["exit"]:
                break
            assert order[0] == "open", order
            n = int(order[1])
            command = OpenPosition(
                position_id=f"child{n}",
                symbol=f"CHILD{n}USDT",
                side=Side.BUY,
                qty=Decimal(2),
                entry_price=Decimal(50),
                leverage=3,
                account=manager.account,
            )
            held = [False]

            def plan(
                book: Book, command: OpenPosition = command, held: list[bool] = held
            ) -> list[Plan]:
                if not held[0]:  # the first call only: a second one (a stale head) goes on
                    held[0] = True
                    print("locked", flush=True)
                    assert sys.stdin.readline().strip() == "go"
                return [Plan(e) for e in decide(book, command, settings.limits)]

            manager.ledger.transact_blocking(plan)
            print("acked", command.position_id, flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
