"""A stored event the rules would refuse still folds, summarises and snapshots: projections
never raise on a stored event (DESIGN: `apply` folds a stored event and never raises on one).

A raw decider (`Ledger.transact`) can store what `decide` refuses; so can a hand-edited or
forged log. A leverage of 0 made every summary divide by zero: closing the ledger raised
DivisionByZero, and every later start did too. `verify` names the event instead.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.events import AnyEvent, PositionIncreased, PositionOpened
from ledger.service import Decider, Ledger, Plan
from ledger.settings import Settings
from ledger.values import Side, Source
from projections.book import Book

ROOT = Path(__file__).resolve().parents[1]


def opened_with(leverage: int, margin: Decimal | None) -> PositionOpened:
    return PositionOpened(
        position_id=f"pos_lev{leverage}",
        symbol=f"LEV{leverage}USDT",
        side=Side.BUY,
        qty=Decimal(2),
        entry_price=Decimal(100),
        leverage=leverage,
        real_initial_margin=margin,
    )


def planned(*events: AnyEvent) -> Decider:
    def decider(book: Book) -> list[Plan]:
        return [Plan(event) for event in events]

    return decider


@pytest.mark.anyio
@pytest.mark.parametrize("leverage", [0, -3])
async def test_a_stored_leverage_the_rules_refuse_never_breaks_the_book(
    tmp_path: Path, leverage: int
) -> None:
    db = tmp_path / "ledger.db"
    opened = opened_with(leverage, Decimal(40))
    increase = PositionIncreased(
        position_id=opened.position_id,
        qty=Decimal(1),
        price=Decimal(110),
        new_entry_price=Decimal(310) / 3,
        source=Source.BOT,
    )
    async with Ledger(db, settings=Settings()) as ledger:
        await ledger.transact(planned(opened, increase))  # the exchange's margin known
        await ledger.transact(planned(opened_with(leverage - 1, None)))  # and not known
        summary = ledger.session_summary()
        assert summary.active_positions == 2
        await ledger.write_snapshot()
    async with Ledger(db, settings=Settings()) as again:  # the next start works too
        assert again.last_seq == 3
        assert again.session_summary().active_positions == 2
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--db", str(db)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 1
    assert "leverage" in verify.stdout
