"""Bybit's record of a reduce or close the bot booked itself corrects the bot's exact figure.

The bot books an exit's PnL from the prices, exactly; Bybit books the gross PnL rounded to 8
decimals (here a short of 0.0125 BTC from 64000 exited in halves: 3359.4381 * 0.00625 =
20.996488125 gross, booked as 20.99648813). The wallet holds Bybit's figure, so the ledger's
realized PnL must end equal to the sum of Bybit's closed-PnL rows, not half a unit of the
9th decimal apart (the intermittent demo failure).
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from ledger.events import PartialExitRecorded, PnlAmended, PositionClosed
from ledger.exchange.observations import ClosedPnlObservation
from ledger.exchange.reconcile import reconcile
from ledger.values import Side, Source
from tests.exchange.test_reconcile import Log, at, of_type, row, snap

D = Decimal
SECOND = timedelta(seconds=1)


def bybit_row(
    order_id: str, when_min: float, exit_price: str, pnl: str, close_fee: str
) -> ClosedPnlObservation:
    """A closed-PnL row as Bybit writes it: closedPnl net of both fees, 8 decimals."""
    return ClosedPnlObservation(
        symbol="BTC/USDT:USDT",
        market_id="BTCUSDT",
        side=Side.SELL,
        qty=D("0.00625"),
        entry_price=D("64000"),
        exit_price=D(exit_price),
        closed_pnl=D(pnl),
        order_id=order_id,
        at=at(when_min) - SECOND,  # Bybit fills, then the bot records
        open_fee=D("0.22"),
        close_fee=D(close_fee),
    )


# closedPnl = round8(gross) - closeFee - openFee share, worked by hand:
# 20.99648813 - 0.20845193 - 0.22 and 26.49846188 - 0.20542585 - 0.22
REDUCE = bybit_row("o-reduce", 1, "60640.5619", "20.56803620", "0.20845193")
CLOSE = bybit_row("o-close", 2, "59760.2461", "26.07303603", "0.20542585")


def bot_session() -> Log:
    log = Log()
    log.open("pos_btc", side=Side.SELL, qty="0.0125", entry="64000", fee="0.44")
    # the bot's own figures: PnL from the prices, exactly, less the fill's fee
    log.record(
        PartialExitRecorded(
            position_id="pos_btc",
            qty=D("0.00625"),
            price=D("60640.5619"),
            realized_pnl=D("20.996488125") - D("0.20845193"),
            fee=D("0.20845193"),
            reason="partial_exit_50_roe",
            source=Source.BOT,
            rule="partial_exit_50_roe",
        ),
        at(1),
    )
    return log


def test_bybit_rounding_of_a_bot_reduce_is_booked_as_an_amendment() -> None:
    log = bot_session()
    shown = row(side=Side.SELL, qty="0.00625", entry="64000", mark="60640.5619", updated=at(1))
    result = reconcile(log.book, snap(at(1.5), [shown], [REDUCE]), {})
    (amendment,) = of_type(result, PnlAmended)
    assert amendment.position_id == "pos_btc" and amendment.qty == D("0.00625")
    assert amendment.estimated_pnl == D("20.788036195")  # what the bot booked
    assert amendment.realized_pnl == D("20.78803620")  # Bybit's, its opening-fee share added back
    assert amendment.fee == 0 and amendment.exchange_ref == REDUCE.fact_key
    assert not of_type(result, PartialExitRecorded), "the reduce itself is not booked twice"
    log.apply(result.plans, at(1.5))
    again = reconcile(log.book, snap(at(2), [shown], [REDUCE]), {})
    assert not of_type(again, PnlAmended), "a record corrects once"


def test_realized_pnl_ends_equal_to_the_sum_of_bybits_rows() -> None:
    log = bot_session()
    shown = row(side=Side.SELL, qty="0.00625", entry="64000", mark="60640.5619", updated=at(1))
    log.apply(reconcile(log.book, snap(at(1.5), [shown], [REDUCE]), {}).plans, at(1.5))
    log.record(
        PositionClosed(
            position_id="pos_btc",
            qty=D("0.00625"),
            price=D("59760.2461"),
            realized_pnl=D("26.498461875") - D("0.20542585"),
            fee=D("0.20542585"),
            reason="demo: session end",
            source=Source.BOT,
        ),
        at(2),
    )
    result = reconcile(log.book, snap(at(2.5), [], [REDUCE, CLOSE]), {})
    (amendment,) = of_type(result, PnlAmended)  # the reduce was corrected already
    assert amendment.exchange_ref == CLOSE.fact_key
    assert amendment.estimated_pnl == D("26.293036025")
    assert not of_type(result, PositionClosed)
    log.apply(result.plans, at(2.5))
    closed = log.book.closed["pos_btc"]
    # the wallet moved by exactly Bybit's closedPnl of each row (fees included in them)
    assert closed.realized_pnl == D("20.56803620") + D("26.07303603")
    assert closed.exit_price == D("59760.2461") and not closed.pnl_estimated
    assert log.book.summary().total_realized_pnl == D("46.64107223")
    assert not of_type(reconcile(log.book, snap(at(3), [], [REDUCE, CLOSE]), {}), PnlAmended)


def test_a_bot_exit_booked_at_bybits_own_figure_is_left_alone() -> None:
    log = Log()
    log.open("pos_btc", side=Side.SELL, qty="0.0125", entry="64000", fee="0.44")
    log.record(
        PartialExitRecorded(
            position_id="pos_btc",
            qty=D("0.00625"),
            price=D("60640.5619"),
            realized_pnl=D("20.78803620"),
            fee=D("0.20845193"),
            reason="partial_exit_50_roe",
            source=Source.BOT,
        ),
        at(1),
    )
    shown = row(side=Side.SELL, qty="0.00625", entry="64000", mark="60640.5619", updated=at(1))
    assert not of_type(reconcile(log.book, snap(at(1.5), [shown], [REDUCE]), {}), PnlAmended)
