"""Child processes of the PostgreSQL fleet test: bots writing, a subscriber following.

`python -m tests._pg_fleet bot URL NAME CYCLES ACKS DIR` opens a Ledger on URL and, for each of
its two accounts, runs CYCLES open / partial exit / close cycles, appending "seq event_id" to
ACKS after each acknowledged command. `python -m tests._pg_fleet follow URL OUT DIR` writes
"seq event_id" to OUT for every event `Ledger.subscribe` delivers, until it is terminated.
"""

from __future__ import annotations

import os
import sys
from decimal import Decimal
from pathlib import Path

import anyio

from ledger.commands import AnyCommand, ClosePosition, OpenPosition, RecordPartialExit
from ledger.envelope import Recorded
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import Side


def _settings(folder: Path, name: str) -> Settings:
    return Settings(
        positions_file=str(folder / f"positions-{name}.json"),
        max_concurrent_positions=1,  # per account: each account holds one at a time
        snapshot_every_events=1_000_000,
        snapshot_every_seconds=3600,
    )


def _ack(fd: int, records: list[Recorded]) -> None:
    # one write(2) per command: what a SIGKILL leaves is whole lines the kernel already has
    os.write(fd, "".join(f"{r.seq} {r.event_id}\n" for r in records).encode())


async def bot(url: str, name: str, cycles: int, acks: Path, folder: Path) -> None:
    """Two accounts in one process (a bot trading two exchange sub-accounts)."""
    fd = os.open(acks, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    a_settings, b_settings = _settings(folder, f"{name}-a"), _settings(folder, f"{name}-b")
    async with (
        Ledger(url, snapshot_path=a_settings.positions_file, settings=a_settings,
               account=f"{name}-a") as first,
        Ledger(url, snapshot_path=b_settings.positions_file, settings=b_settings,
               account=f"{name}-b") as second,
    ):  # fmt: skip
        for cycle in range(cycles):
            for ledger in (first, second):
                position_id = f"{ledger.account}-{cycle}"
                # the same market for both accounts: the rules hold per account
                symbol = f"{name.upper()}/USDT:USDT"
                steps: list[AnyCommand] = [
                    OpenPosition(
                        position_id=position_id,
                        symbol=symbol,
                        side=Side.BUY if cycle % 2 else Side.SELL,
                        qty=Decimal("2"),
                        entry_price=Decimal("100"),
                        leverage=5,
                        account=ledger.account,
                    ),
                    RecordPartialExit(
                        position_id=position_id, qty=Decimal("0.5"), price=Decimal("101")
                    ),
                    ClosePosition(position_id=position_id, price=Decimal("99.5")),
                ]
                for command in steps:
                    _ack(fd, await ledger.execute(command))
    os.close(fd)


async def follow(url: str, out: Path, folder: Path) -> None:
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    settings = _settings(folder, "follower")
    async with Ledger(url, snapshot_path=settings.positions_file, settings=settings) as ledger:
        async for record in ledger.subscribe(0, poll_interval=1.0):
            _ack(fd, [record])


def main(argv: list[str]) -> None:
    if argv[0] == "bot":
        url, name, cycles, acks, folder = argv[1:]
        anyio.run(bot, url, name, int(cycles), Path(acks), Path(folder))
    elif argv[0] == "follow":
        url, out, folder = argv[1:]
        anyio.run(follow, url, Path(out), Path(folder))
    else:
        raise SystemExit(f"unknown role {argv[0]!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
