"""Scenarios through unmodified ccxt against the emulator, on one controlled clock.

Each one is a situation a bot trading real money meets (research/bybit-v5-facts.md). Money is
checked against an independent reference computed here from the exchange's own rows (Bybit's
closedPnl and funding figures as the emulator wrote them), never the ledger's PnL code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.audit.verification import verify_log
from ledger.events import FundingRecorded, PositionClosed, PositionIncreased, PositionOpened
from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import from_millis

pytestmark = pytest.mark.anyio
D = Decimal
BTC = "BTC/USDT:USDT"
ETH = "ETH/USDT:USDT"
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


@dataclass
class Clock:
    """One clock for the emulator (ms) and the ledger's sync (datetimes)."""

    ms: int = START_MS

    def __call__(self) -> int:
        return self.ms

    def now(self) -> datetime:
        return from_millis(self.ms)

    def advance(self, seconds: float) -> None:
        self.ms += int(seconds * 1000)


@dataclass
class Bench:
    ex: BybitEmulator
    ledger: Ledger
    gateway: ExchangeGateway
    sync: ExchangeSync
    clock: Clock
    settings: Settings
    path: Path
    appended: list[object] = field(default_factory=list)

    async def run(self) -> tuple[list[str], list[str]]:
        outcome = await self.sync.sync(self.ledger, self.gateway)
        self.appended += [r.event for r in outcome.appended]
        return [p.position_id for p in outcome.newly_opened], outcome.closed_ids

    async def verify(self) -> None:
        """`ledger verify` on the log: chain, the rules in order, positions.json."""
        path = await self.ledger.write_snapshot()
        report = await verify_log(self.ledger.store, path)
        assert report.ok, report.problems

    def restart_sync(self) -> None:
        """A new process: the sync's in-memory state (absence counts, last good sync) is gone."""
        self.sync = ExchangeSync(self.settings, clock=self.clock.now)


@asynccontextmanager
async def bench(tmp_path: Path, **emulator: object) -> AsyncIterator[Bench]:
    clock = Clock()
    settings = Settings(sync_settle_seconds=0)
    async with BybitEmulator(clock=clock, timeout_fault_seconds=5, **emulator) as ex:  # type: ignore[arg-type]
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        gateway = ExchangeGateway(client, timeout=10.0, clock_ms=clock)
        try:
            async with Ledger(tmp_path / "ledger.db", settings=settings, clock=clock.now) as ledger:
                sync = ExchangeSync(settings, clock=clock.now)
                yield Bench(ex, ledger, gateway, sync, clock, settings, tmp_path)
        finally:
            await gateway.close()


def started(at_ms: int) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, tz=UTC)


# -- lifecycles ----------------------------------------------------------------------------------


async def test_a_flip_long_to_short_between_syncs_is_a_close_and_a_fresh_adoption(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        ((long_id,), _) = await b.run()
        b.clock.advance(30)
        record = b.ex.close_position(BTC, "buy", "61000")
        b.clock.advance(1)
        flip_ms = b.clock.ms
        b.ex.open_position(BTC, "sell", "0.02", "61000")
        b.clock.advance(29)
        (short_id,), closed = await b.run()
        assert closed == [long_id]
        long = b.ledger.get_position(long_id)
        assert long is not None and long.realized_pnl == record.closed_pnl
        short = b.ledger.get_position(short_id)
        assert short is not None and short.entry_price == D(61000) and short.qty == D("0.02")
        assert short.open_time >= started(flip_ms)  # never the slot's first-ever createdTime


async def _close_and_reopen(tmp_path: Path, reopen_qty: str) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(BTC, "buy", entry_price="60000", qty="0.01", leverage=10)
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        await b.run()
        b.clock.advance(20)
        record = b.ex.close_position(BTC, "buy", "62000")  # a stop-out...
        b.clock.advance(5)
        b.ex.open_position(BTC, "buy", reopen_qty, "62500")  # ...and a re-entry by hand
        b.clock.advance(35)
        (new_id,), closed = await b.run()
        assert closed == [bot.position_id]
        old = b.ledger.get_position(bot.position_id)
        assert old is not None and not old.is_open
        assert old.realized_pnl == record.closed_pnl  # Bybit's figure, net of its fees
        new = b.ledger.get_position(new_id)
        assert new is not None and new.entry_price == D(62500) and new.qty == D(reopen_qty)
        assert not [e for e in b.appended if isinstance(e, PositionIncreased)]
        assert await b.run() == ([], [])


async def test_a_close_and_reopen_of_the_same_size_between_two_syncs(tmp_path: Path) -> None:
    await _close_and_reopen(tmp_path, "0.01")


async def test_a_close_and_a_larger_reopen_between_two_syncs(tmp_path: Path) -> None:
    await _close_and_reopen(tmp_path, "0.03")


async def test_a_restart_after_a_manual_close_books_bybits_record(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(ETH, "sell", entry_price="3000", qty="1", leverage=5)
        b.ex.open_position(ETH, "sell", "1", "3000")
        await b.run()
        b.clock.advance(60)
        record = b.ex.close_position(ETH, "sell", "2950")  # while the bot was down
        b.clock.advance(600)
        b.restart_sync()
        _, closed = await b.run()
        assert closed == [bot.position_id]
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and position.realized_pnl == record.closed_pnl
        assert not position.pnl_estimated


# -- history ---------------------------------------------------------------------------------------


async def test_funding_settled_before_the_last_close_reaches_the_closed_position(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(BTC, "buy", entry_price="60000", qty="0.01", leverage=10)
        b.ex.open_position(BTC, "buy", "0.01", "60000")
        await b.run()
        b.clock.advance(3600)
        paid = b.ex.pay_funding(BTC, "buy", "-0.42")  # settles...
        b.clock.advance(1)
        record = b.ex.close_position(BTC, "buy", "60500")  # ...just before the close
        b.clock.advance(60)
        _, closed = await b.run()
        assert closed == [bot.position_id]
        b.clock.advance(60)
        assert await b.run() == ([], [])  # nothing is open now: funding was still fetched
        position = b.ledger.get_position(bot.position_id)
        assert position is not None
        funding = [e for e in b.appended if isinstance(e, FundingRecorded)]
        assert [f.execution_id for f in funding] == [paid.exec_id]
        assert position.funding == -D(paid.exec_fee)  # Bybit's execFee: what the account paid
        assert position.realized_pnl == record.closed_pnl - D(paid.exec_fee)


async def test_5100_history_rows_are_read_whole_and_the_window_advances(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(BTC, "buy", entry_price="60000", qty="6", leverage=10)
        b.ex.open_position(BTC, "buy", "6", "60000")
        await b.run()
        records = []
        for k in range(5100):
            b.clock.advance(0.05)
            records.append(b.ex.reduce_position(BTC, "buy", "0.001", str(60000 + k % 50)))
        b.clock.advance(60)
        pages_before = sum(1 for r in b.ex.requests if r.path == "/v5/position/closed-pnl")
        await b.run()
        pages = sum(1 for r in b.ex.requests if r.path == "/v5/position/closed-pnl") - pages_before
        assert pages >= 51  # 100 rows a page, no cap
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and position.qty == D("6") - D("5.1")
        reference = sum((r.closed_pnl for r in records), D(0))
        assert position.realized_pnl == reference
        b.clock.advance(60)
        head = b.ledger.last_seq
        await b.run()  # the next sync starts where this one ended: nothing new
        assert b.ledger.last_seq in (head, head + 1)  # at most a mark


async def test_a_10_day_outage_walks_history_back_window_by_window(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        bot = await b.ledger.open_position(ETH, "buy", entry_price="3000", qty="2", leverage=5)
        b.ex.open_position(ETH, "buy", "2", "3000")
        await b.run()
        b.clock.advance(3600)
        early = b.ex.reduce_position(ETH, "buy", "0.5", "3100")  # day 0: 10 days before
        fundings = []
        for _ in range(30):  # every 8 hours for 10 days
            b.clock.advance(8 * 3600)
            fundings.append(b.ex.pay_funding(ETH, "buy", "-0.05"))
        late = b.ex.close_position(ETH, "buy", "3200")
        b.clock.advance(600)
        _, closed = await b.run()  # the process kept its last good sync from 10 days ago
        assert closed == [bot.position_id]
        position = b.ledger.get_position(bot.position_id)
        assert position is not None and not position.pnl_estimated
        paid = sum((D(f.exec_fee) for f in fundings), D(0))
        assert position.funding == -paid
        assert position.realized_pnl == early.closed_pnl + late.closed_pnl - paid
        windows = [r for r in b.ex.requests if r.path == "/v5/position/closed-pnl"]
        assert len(windows) >= 2  # more than 7 days: at least two windows


async def test_an_adopted_position_on_a_years_old_slot_keeps_only_its_own_history(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        b.ex.open_position(ETH, "sell", "1", "2000")
        b.clock.advance(24 * 3600)
        old = b.ex.close_position(ETH, "sell", "1900")
        b.clock.advance(400 * 24 * 3600)  # the slot's first position was long ago
        b.ex.open_position(ETH, "sell", "1", "3000")
        b.clock.advance(60)
        ((adopted,), _) = await b.run()
        position = b.ledger.get_position(adopted)
        assert position is not None and position.is_open and position.entry_price == D(3000)
        assert position.realized_pnl == 0 and old.closed_pnl != 0
        opened = [e for e in b.appended if isinstance(e, PositionOpened)]
        closes = [e for e in b.appended if isinstance(e, PositionClosed)]
        assert len(opened) == 1 and closes == []
