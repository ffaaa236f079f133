"""Scenarios that need the emulator to behave as Bybit's docs say (research/bybit-v5-facts.md):
a years-old createdTime plus openTime, closed-PnL rows written late or without fees, one order
filled in several rows, USDC perpetuals under settleCoin=USDC, several pushes per order action
a clock ahead of Bybit's (10002), an IP ban (HTTP 403). Through unmodified ccxt, on one
controlled clock; money checked against Bybit's own rows.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from ledger.errors import ExchangeBanned
from ledger.events import FundingRecorded, PnlAmended, PositionClosed, PositionOpened
from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger
from ledger.values import from_millis
from tests.exchange.test_scenarios import START_MS, bench

pytestmark = pytest.mark.anyio
D = Decimal
BTC, LTC, SOL = "BTC/USDT:USDT", "LTC/USDT:USDT", "SOL/USDT:USDT"
BTC_USDC, ETH_USDC = "BTC/USDC:USDC", "ETH/USDC:USDC"
YEARS_AGO_MS = START_MS - 3 * 365 * 24 * 3600 * 1000


async def test_a_flip_on_a_years_old_symbol_books_old_funding_to_the_old_position(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        b.ex.set_created_time(LTC, YEARS_AGO_MS)
        b.ex.open_position(LTC, "buy", "10", "80")
        b.clock.advance(60)
        ((long_id,), _) = await b.run()
        b.clock.advance(3600)
        long_funding = b.ex.pay_funding(LTC, "buy", "-0.007")
        b.clock.advance(60)
        record, short = b.ex.flip_position(LTC, "sell", "10", "81")
        b.clock.advance(3600)
        short_funding = b.ex.pay_funding(LTC, "sell", "0.02")
        b.clock.advance(30)
        (short_id,), closed = await b.run()
        assert closed == [long_id]
        long = b.ledger.get_position(long_id)
        assert long is not None
        assert long.realized_pnl == record.closed_pnl - D(long_funding.exec_fee)
        adopted = b.ledger.get_position(short_id)
        assert adopted is not None and adopted.open_time == from_millis(short.open_ms)
        assert adopted.open_time > from_millis(YEARS_AGO_MS)
        assert adopted.funding == -D(short_funding.exec_fee)  # only its own


async def test_back_to_back_syncs_before_the_record_then_the_record_amends(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, closed_pnl_delay_ms=180_000) as b:
        bot = await b.ledger.open_position(BTC, "buy", entry_price="60000", qty="0.5", leverage=10)
        b.ex.open_position(BTC, "buy", "0.5", "60000")
        b.ex.set_trading_stop(BTC, "buy", take_profit="65000", stop_loss="55000")
        await b.run()
        b.clock.advance(30)
        b.ex.set_mark_price(BTC, "60002")
        await b.run()
        record = b.ex.close_position(BTC, "buy", "60020")  # by hand: flat pushes, no record yet
        for _ in range(4):  # a sync per push, milliseconds apart
            b.clock.advance(0.003)
            assert await b.run() == ([], [])
        assert b.ledger.get_position(bot.position_id).is_open  # type: ignore[union-attr]
        b.clock.advance(61)
        _, closed = await b.run()
        assert closed == [bot.position_id]
        estimated = b.ledger.get_position(bot.position_id)
        assert estimated is not None and estimated.pnl_estimated
        b.clock.advance(180)
        await b.run()  # the record is listed now
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and not position.pnl_estimated
        assert position.realized_pnl == record.closed_pnl
        kinds = [type(r.event) for r in await b.ledger.history(bot.position_id)]
        assert kinds[-2:] == [PositionClosed, PnlAmended]  # both in the history
        await b.verify()


async def test_a_manual_reduce_seen_before_its_record_is_amended(tmp_path: Path) -> None:
    async with bench(tmp_path, closed_pnl_delay_ms=120_000) as b:
        bot = await b.ledger.open_position(SOL, "buy", entry_price="100", qty="1", leverage=10)
        b.ex.open_position(SOL, "buy", "1", "100")
        await b.run()
        b.clock.advance(30)
        record = b.ex.reduce_position(SOL, "buy", "0.5", "100.6")
        b.clock.advance(1)
        await b.run()
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and position.qty == D("0.5")
        assert position.partial_exits[-1].pnl_estimated
        b.clock.advance(150)
        await b.run()
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and position.realized_pnl == record.closed_pnl
        assert position.estimates == ()
        await b.verify()


async def test_a_reduce_filled_in_two_rows_with_one_order_id(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(SOL, "buy", entry_price="100", qty="2", leverage=10)
        b.ex.open_position(SOL, "buy", "2", "100")
        await b.run()
        b.clock.advance(30)
        first = b.ex.reduce_position(SOL, "buy", "0.5", "105")
        parts = b.ex.reduce_in_parts(SOL, "buy", "1.5", "106", parts=2)  # closes the rest
        assert len({r.order_id for r in parts}) == 1
        b.clock.advance(30)
        _, closed = await b.run()
        assert closed == [bot.position_id]
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and not position.pnl_estimated
        assert position.realized_pnl == first.closed_pnl + sum(r.closed_pnl for r in parts)
        assert await b.run() == ([], [])


async def test_usdc_perpetuals_both_ways(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(
            BTC_USDC, "buy", entry_price="60000", qty="0.01", leverage=10
        )
        b.ex.open_position(BTC_USDC, "buy", "0.01", "60000")  # Bybit's BTCPERP
        b.ex.open_position(ETH_USDC, "sell", "0.5", "3000")  # by hand, USDC-settled
        for _ in range(3):  # well past absent_fetches_before_close
            b.clock.advance(61)
            _, closed = await b.run()
            assert closed == []
        assert b.ledger.get_position(bot.position_id).is_open  # type: ignore[union-attr]
        adopted = [e for e in b.appended if isinstance(e, PositionOpened)]
        assert [(e.symbol, e.side.value) for e in adopted] == [(ETH_USDC, "sell")]
        record = b.ex.close_position(BTC_USDC, "buy", "61000")
        b.clock.advance(5)
        _, closed = await b.run()
        assert closed == [bot.position_id]
        assert b.ledger.get_position(bot.position_id).realized_pnl == record.closed_pnl  # type: ignore[union-attr]


async def test_closed_pnl_rows_without_fees_count_the_opening_fee_once(tmp_path: Path) -> None:
    async with bench(tmp_path, closed_pnl_fees=False) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        (fill,) = [e for e in b.ex.state.executions if e.exec_type == "Trade"]
        bot = await b.ledger.open_position(
            BTC, "buy", entry_price="60000", qty="0.01", leverage=10, fee=fill.exec_fee
        )
        await b.run()
        b.clock.advance(600)
        record = b.ex.close_position(BTC, "buy", "63000")
        b.clock.advance(5)
        await b.run()
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and not position.is_open
        # Bybit's closedPnl already carries the opening fee the bot recorded at open
        assert position.realized_pnl == record.closed_pnl
        assert [e for e in b.appended if isinstance(e, FundingRecorded)] == []


async def test_a_clock_one_second_fast_is_corrected_once_through_ccxt(tmp_path: Path) -> None:
    # the emulator's real clock: Bybit's timestamp rule is checked (a custom clock skips it)
    async with BybitEmulator() as ex, Ledger(tmp_path / "l.db") as ledger:
        ex.open_position(BTC, "buy", "0.01", "60000")
        # Bybit 2 s behind this machine: every signature is refused. At exactly 1 s the
        # request's own transit (a millisecond or more on a loaded machine) brings the
        # timestamp back inside Bybit's window, and the test would not see the refusal.
        ex.set_clock_skew(-2000)
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        gateway = ExchangeGateway(client, timeout=5.0)
        try:
            opened, _ = await ExchangeSync().sync_once(ledger, gateway)
        finally:
            await gateway.close()
        assert len(opened) == 1 and gateway.clock_corrected
        assert sum(1 for r in ex.requests if r.path == "/v5/market/time") >= 1


async def test_an_http_403_ban_changes_nothing_and_says_to_wait(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        await b.run()
        head = b.ledger.last_seq
        b.clock.advance(60)
        b.ex.close_position(BTC, "buy", "61000")
        b.ex.inject_fault("http_403", path="/v5/position/list")
        with pytest.raises(ExchangeBanned) as caught:
            await b.run()
        assert caught.value.retry_after >= 600
        assert "403" in str(caught.value) and "10 minutes" in str(caught.value)
        assert b.ledger.last_seq == head and b.ledger.active_positions()
        b.clock.advance(600)
        _, closed = await b.run()  # after the wait, the close is booked
        assert len(closed) == 1
