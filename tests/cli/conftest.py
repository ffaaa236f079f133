"""A ledger with a known history, built through the Ledger API, and a way to run `ledger` on it.

The history (times UTC, 2025-01-07), with the figures every golden check derives from:
  16:45 open  pos_sol  buy  SOL  notional 500 @ 100 (qty 5) x5
  17:00 mark  pos_sol  @ 105
  17:05 open  pos_btc  sell BTC  qty 0.01 @ 50000 x10, fee 0.5
  17:15 exit  pos_sol  notional 150 @ 110            -> +15
  17:30 mark  pos_btc  @ 49500
  17:45 exit  pos_sol  notional 150 @ 120            -> +30
  18:00 funding pos_sol -0.25
  18:00 close pos_btc  @ 49000, fee 0.5              -> +9.5 (position: 9.0, a win)
  18:10 open  pos_eth  buy  ETH  qty 0.1 @ 3000 x3
  18:30 close pos_eth  @ 2900 "stop loss"            -> -10 (a loss)
  18:40 mark  pos_sol  @ 115                          -> unrealized 2 x 15 = 30
  18:50 balance 1000 / 800
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import msgspec
import pytest

from ledger.commands import RecordFunding
from ledger.envelope import NewEvent
from ledger.events import (
    AnyEvent,
    PartialExitRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side

ROOT = Path(__file__).resolve().parents[2]
DAY = datetime(2025, 1, 7, tzinfo=UTC)


def at(hhmm: str) -> datetime:
    hours, minutes = hhmm.split(":")
    return DAY.replace(hour=int(hours), minute=int(minutes))


class SetClock:
    """A clock the test moves by hand, so every event has a known occurred_at."""

    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Known:
    """Where the ledger lives and the figures its history implies."""

    dir: Path
    db: Path
    snapshot: Path
    times: dict[str, datetime]
    seqs: dict[str, int]
    expected: dict[str, Decimal]
    live_summary: dict[str, object] = field(default_factory=dict)
    head_seq: int = 0


# the scenario's inputs
SOL_ENTRY, SOL_NOTIONAL, SOL_EXIT = Decimal(100), Decimal(500), Decimal(150)
SOL_EXIT_PRICES = (Decimal(110), Decimal(120))
SOL_MARKS = (Decimal(105), Decimal(115))
FUNDING = Decimal("-0.25")
BTC_ENTRY, BTC_QTY, BTC_EXIT, BTC_FEE = (
    Decimal(50000),
    Decimal("0.01"),
    Decimal(49000),
    Decimal("0.5"),
)
ETH_ENTRY, ETH_QTY, ETH_EXIT = Decimal(3000), Decimal("0.1"), Decimal(2900)


def expected_figures() -> dict[str, Decimal]:
    """The head's figures, by hand from the inputs."""
    sol_qty = SOL_NOTIONAL / SOL_ENTRY
    exit_qty = SOL_EXIT / SOL_ENTRY
    sol_exits = [exit_qty * (p - SOL_ENTRY) for p in SOL_EXIT_PRICES]
    sol_left = sol_qty - 2 * exit_qty
    btc_close = BTC_QTY * (BTC_ENTRY - BTC_EXIT) - BTC_FEE
    btc_total = btc_close - BTC_FEE  # the open fee
    eth_total = ETH_QTY * (ETH_EXIT - ETH_ENTRY)
    sol_realized = sum(sol_exits, Decimal(0)) + FUNDING
    unrealized = sol_left * (SOL_MARKS[1] - SOL_ENTRY)
    closed_realized = btc_total + eth_total
    return {
        "sol_exit_1": sol_exits[0],
        "sol_exit_2": sol_exits[1],
        "sol_left": sol_left,
        "sol_realized": sol_realized,
        "btc_close": btc_close,
        "btc_total": btc_total,
        "eth_total": eth_total,
        "closed_realized": closed_realized,
        "total_realized": closed_realized + sol_realized,
        "unrealized": unrealized,
        "total_pnl": closed_realized + sol_realized + unrealized,
        "fees": 2 * BTC_FEE,
        "funding": FUNDING,
        "wins": Decimal(int(btc_total > 0) + int(eth_total > 0)),
        "losses": Decimal(int(btc_total <= 0) + int(eth_total <= 0)),
    }


async def build_known(directory: Path) -> Known:
    clock = SetClock()
    db = directory / "ledger.db"
    known = Known(
        dir=directory,
        db=db,
        snapshot=directory / "positions.json",
        times={},
        seqs={},
        expected=expected_figures(),
    )

    def step(name: str, hhmm: str, ledger: Ledger) -> None:
        known.times[name] = at(hhmm)
        clock.now = at(hhmm)

    async with Ledger(db, settings=Settings(), clock=clock) as ledger:

        def done(name: str) -> None:
            known.seqs[name] = ledger.last_seq

        step("open_sol", "16:45", ledger)
        await ledger.open_position(
            "SOL/USDT:USDT",
            "buy",
            entry_price=SOL_ENTRY,
            leverage=5,
            notional=SOL_NOTIONAL,
            open_reason="ML BUY 77%",
            position_id="pos_sol",
        )
        done("open_sol")
        step("mark_sol_1", "17:00", ledger)
        await ledger.mark("pos_sol", SOL_MARKS[0])
        done("mark_sol_1")
        step("open_btc", "17:05", ledger)
        await ledger.open_position(
            "BTC/USDT:USDT",
            "sell",
            entry_price=BTC_ENTRY,
            leverage=10,
            qty=BTC_QTY,
            fee=BTC_FEE,
            position_id="pos_btc",
        )
        done("open_btc")
        step("exit_sol_1", "17:15", ledger)
        await ledger.register_partial_exit(
            "pos_sol", price=SOL_EXIT_PRICES[0], notional=SOL_EXIT, reason="partial_exit_50_roe"
        )
        done("exit_sol_1")
        step("mark_btc", "17:30", ledger)
        await ledger.mark("pos_btc", 49500)
        done("mark_btc")
        step("exit_sol_2", "17:45", ledger)
        await ledger.register_partial_exit(
            "pos_sol", price=SOL_EXIT_PRICES[1], notional=SOL_EXIT, reason="partial_exit_100_roe"
        )
        done("exit_sol_2")
        step("funding", "18:00", ledger)
        await ledger.execute(
            RecordFunding(position_id="pos_sol", amount=FUNDING, execution_id="funding-1")
        )
        done("funding")
        step("close_btc", "18:00", ledger)
        await ledger.close_position("pos_btc", price=BTC_EXIT, fee=BTC_FEE, reason="take profit")
        done("close_btc")
        step("open_eth", "18:10", ledger)
        await ledger.open_position(
            "ETH/USDT:USDT",
            "buy",
            entry_price=ETH_ENTRY,
            leverage=3,
            qty=ETH_QTY,
            position_id="pos_eth",
        )
        done("open_eth")
        step("close_eth", "18:30", ledger)
        await ledger.close_position("pos_eth", price=ETH_EXIT, reason="stop loss")
        done("close_eth")
        step("mark_sol_2", "18:40", ledger)
        await ledger.mark("pos_sol", SOL_MARKS[1])
        done("mark_sol_2")
        step("balance", "18:50", ledger)
        await ledger.observe_balance(1000, 800)
        done("balance")
        known.head_seq = ledger.last_seq
        known.live_summary = msgspec.json.decode(msgspec.json.encode(ledger.session_summary()))
        clock.now = at("19:00")
    return known


@pytest.fixture
def known(tmp_path: Path) -> Known:
    return anyio.run(build_known, tmp_path)


RunCli = Callable[..., subprocess.CompletedProcess[str]]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for `ledger` children: this project importable, no stray settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSITION_LEDGER_")}
    env["PYTHONPATH"] = str(ROOT)
    env["COLUMNS"] = "200"
    env.update(extra or {})
    return env


def run_ledger(
    *args: str | Path,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *map(str, args)],
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def cli(tmp_path: Path) -> RunCli:
    """run `ledger ARGS...` as a subprocess in tmp_path."""

    def run(
        *args: str | Path, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return run_ledger(*args, cwd=tmp_path, env=env, timeout=timeout)

    return run


# -- a large log, appended straight through the store ------------------------------------------


def _position_events(n: int) -> list[AnyEvent]:
    """Five events of position n: open, two marks, a partial exit, a close."""
    pid = f"pos_{n:07d}"
    side = Side.BUY if n % 2 == 0 else Side.SELL
    entry = Decimal(100 + n % 50)
    qty = Decimal(2)
    sign = 1 if side is Side.BUY else -1
    up = entry + 1
    down = entry - 1
    exit_price = up if n % 3 else down
    return [
        PositionOpened(
            position_id=pid,
            symbol=SYMBOLS[n % len(SYMBOLS)],
            side=side,
            qty=qty,
            entry_price=entry,
            leverage=5,
            open_reason="generated",
        ),
        PositionMarked(position_id=pid, mark_price=up),
        PositionMarked(position_id=pid, mark_price=down),
        PartialExitRecorded(
            position_id=pid, qty=Decimal(1), price=up, realized_pnl=sign * (up - entry)
        ),
        PositionClosed(
            position_id=pid,
            qty=Decimal(1),
            price=exit_price,
            realized_pnl=sign * (exit_price - entry),
            reason="generated",
        ),
    ]


SYMBOLS = ("SOL/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT", "XRP/USDT:USDT")
EVENTS_PER_POSITION = 5


async def build_large_log(db: Path, positions: int, *, batch_positions: int = 2000) -> int:
    """A log of positions x 5 events, one second apart, appended in large batches."""
    store = SQLiteEventStore(db, synchronous="NORMAL")
    await store.open()
    try:
        seq = 0
        for start in range(0, positions, batch_positions):
            batch: list[NewEvent] = []
            for n in range(start, min(positions, start + batch_positions)):
                for event in _position_events(n):
                    batch.append(
                        NewEvent(
                            stream=stream_of(event),
                            event=event,
                            event_id=f"gen-{seq}",
                            occurred_at=DAY + timedelta(seconds=seq),
                        )
                    )
                    seq += 1
            await store.append(batch)
        return seq
    finally:
        await store.close()
