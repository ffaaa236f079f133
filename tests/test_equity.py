"""The equity curve (what `ledger plot` draws): corrections after a close reach it, and it is
drawn for one account or for the whole fleet."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.audit.equity import equity_curve
from ledger.envelope import NewEvent
from ledger.events import (
    AnyEvent,
    FundingRecorded,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionOpened,
    stream_of,
)
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from tests.strategies import T0

pytestmark = pytest.mark.anyio


def _opened(position_id: str, account: str, fee: str) -> PositionOpened:
    return PositionOpened(
        position_id=position_id,
        symbol="SOL/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(2),
        entry_price=Decimal(100),
        leverage=5,
        fee=Decimal(fee),
        account=account,
    )


# two accounts; botA's position is closed on an estimate, then Bybit's closed-PnL record
# amends it and a funding row settled while it was open arrives after the close
EVENTS: list[AnyEvent] = [
    _opened("a1", "botA", "0.11"),
    _opened("b1", "botB", "0.07"),
    FundingRecorded(position_id="a1", amount=Decimal("-0.013"), execution_id="f0"),
    PartialExitRecorded(
        position_id="b1",
        qty=Decimal(1),
        price=Decimal(99),
        realized_pnl=Decimal("-1.05"),
        fee=Decimal("0.05"),
    ),
    PositionClosed(
        position_id="a1",
        qty=Decimal(2),
        price=Decimal(103),
        realized_pnl=Decimal("5.89"),
        fee=Decimal("0.11"),
        pnl_estimated=True,
    ),
    PnlAmended(
        position_id="a1",
        qty=Decimal(2),
        price=Decimal("102.9"),
        realized_pnl=Decimal("5.67"),
        estimated_pnl=Decimal("5.89"),
        fee=Decimal("0.13"),
        exchange_ref="closed-pnl-1",
    ),
    FundingRecorded(position_id="a1", amount=Decimal("-0.021"), execution_id="f1"),
    PositionClosed(
        position_id="b1",
        qty=Decimal(1),
        price=Decimal(104),
        realized_pnl=Decimal("3.95"),
        fee=Decimal("0.05"),
    ),
]

# written out by hand from the events above: opening fees are paid, funding is added, an
# amendment replaces the estimate
BOT_A = Decimal("-0.11") + Decimal("-0.013") + Decimal("5.67") + Decimal("-0.021")
BOT_B = Decimal("-0.07") + Decimal("-1.05") + Decimal("3.95")


async def _write(path: Path) -> SQLiteEventStore:
    store = SQLiteEventStore(path)
    await store.open()
    await store.append(
        [
            NewEvent(
                stream=stream_of(event),
                event=event,
                event_id=f"e{i}",
                occurred_at=T0 + timedelta(minutes=i),
            )
            for i, event in enumerate(EVENTS)
        ]
    )
    return store


async def write_log(path: Path) -> None:
    """The log of EVENTS in a SQLite file (for the CLI's tests)."""
    store = await _write(path)
    await store.close()


async def test_the_curve_keeps_corrections_that_arrive_after_a_close(db_path: Path) -> None:
    store = await _write(db_path)
    try:
        curve = await equity_curve(store)
    finally:
        await store.close()
    assert Decimal("8.356") == BOT_A + BOT_B  # the reference itself, added up once more
    assert curve.points[-1].equity == BOT_A + BOT_B
    assert curve.points[-1].equity == curve.book.summary().total_realized_pnl
    # the amendment and the late funding are points of their own, at their own times
    times = [p.at for p in curve.points]
    assert T0 + timedelta(minutes=5) in times and T0 + timedelta(minutes=6) in times
    assert [c.position_id for c in curve.closes] == ["a1", "b1"]


async def test_the_curve_of_one_account_holds_its_own_cash_flows_only(db_path: Path) -> None:
    store = await _write(db_path)
    try:
        a = await equity_curve(store, account="botA")
        b = await equity_curve(store, account="botB")
        nobody = await equity_curve(store, account="nobody")
    finally:
        await store.close()
    assert a.points[-1].equity == BOT_A
    assert b.points[-1].equity == BOT_B
    assert [c.position_id for c in a.closes] == ["a1"]
    assert [c.position_id for c in b.closes] == ["b1"]
    # botB's partial exit at minute 3 is no point of botA's curve
    assert T0 + timedelta(minutes=3) not in [p.at for p in a.points]
    assert nobody.points == [] and nobody.closes == []
