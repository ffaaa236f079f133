"""The main job behind scripts/run: a bot session against the local Bybit emulator, left in ./data.

The bot opens positions on the exchange and records them; someone opens one "by hand", which
the sync adopts; prices move and the ROE rules take partial exits; funding is paid; faults are
injected and survived; one position is closed on the exchange behind the bot's back and picked
up with Bybit's realized PnL; the bot closes the rest. The ledger is left for `ledger stats`.
"""

from __future__ import annotations

import argparse
import logging
import random
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import anyio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from ledger.envelope import Recorded
from ledger.events import (
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionOpened,
)
from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import BybitEmulator, FaultKind
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.exit_rules import ExitOrder
from ledger.exchange.service import Backoff, BotService, ExitFill
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from projections.positions import Position
from projections.stats import SessionSummary

# (symbol, side, entry price, qty, leverage, drift of the price per step in basis points)
BOT_TRADES = (
    ("SOL/USDT:USDT", "buy", Decimal("100.50"), Decimal("5"), 5, 60),
    ("BTC/USDT:USDT", "sell", Decimal(64000), Decimal("0.0125"), 10, -25),
    ("ETH/USDT:USDT", "buy", Decimal(3200), Decimal("0.2"), 5, -10),
)
BY_HAND = ("DOGE/USDT:USDT", "sell", Decimal("0.16"), Decimal(2000), 5)
FAULTS: dict[int, FaultKind] = {
    4: "http_503",
    7: "rate_limit",
    10: "malformed_json",
    13: "missing_fields",
    16: "http_500",
}
TAKER_FEE = Decimal("0.00055")
TICK = Decimal("0.0001")
SYNC_WAIT = 15.0


def positions_table(positions: list[Position]) -> Table:
    table = Table(title="Open positions")
    for column in ("symbol", "side", "qty", "entry", "mark", "uPnL", "ROE %", "realized", "source"):
        table.add_column(column, justify="left" if column in ("symbol", "side") else "right")
    for p in positions:
        table.add_row(
            p.symbol,
            p.side.value,
            f"{p.qty.normalize():f}",
            f"{p.entry_price.normalize():f}",
            f"{p.current_price.normalize():f}",
            f"{p.unrealized_pnl:.2f}",
            f"{p.roe_percentage:.1f}",
            f"{p.realized_pnl:.2f}",
            p.source.value,
        )
    return table


def summary_table(summary: SessionSummary) -> Table:
    table = Table(title="Session summary")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name in (
        "active_positions", "closed_trades", "wins", "losses", "win_rate", "used_margin",
        "unrealized_pnl", "total_realized_pnl", "total_pnl", "total_fees", "total_funding",
        "profit_factor", "average_win", "average_loss", "expectancy", "max_drawdown",
        "balance", "available_balance",
    ):  # fmt: skip
        value = getattr(summary, name)
        if isinstance(value, Decimal):
            value = value.quantize(TICK if name == "win_rate" else Decimal("0.01"))
        table.add_row(name, "-" if value is None else str(value))
    return table


def describe(record: Recorded) -> str | None:
    """One line for the session log; marks are left to the live table."""
    event = record.event
    head = f"{record.occurred_at:%H:%M:%S} #{record.seq}"
    if isinstance(event, PositionOpened):
        who = "adopted from the exchange" if event.source.value == "exchange" else "opened by bot"
        what = f"{event.side.value} {event.qty} {event.symbol} at {event.entry_price}"
        return f"{head} {who}: {what}"
    if isinstance(event, PartialExitRecorded):
        what = f"{event.qty} at {event.price}, realized {event.realized_pnl:.2f}"
        return f"{head} partial exit {event.reason}: {what}"
    if isinstance(event, FundingRecorded):
        return f"{head} funding {event.amount:+} on {event.position_id}"
    if isinstance(event, PositionClosed):
        how = "estimated" if event.pnl_estimated else f"by {event.source.value}"
        return f"{head} closed {event.position_id} at {event.price} ({how}): {event.reason}"
    if isinstance(event, BalanceObserved):
        return f"{head} balance {event.total:.2f} (available {event.available:.2f})"
    return None


class Session:
    """The bot's side of the demo: places on the exchange and records in the ledger."""

    def __init__(self, ex: BybitEmulator, ledger: Ledger, service: BotService) -> None:
        self.ex = ex
        self.ledger = ledger
        self.service = service

    async def synced(self) -> None:
        """Ask for a sync and wait until one has completed after the request."""
        sync = self.service.sync
        target = sync.syncs_ok + sync.syncs_failed + 1
        self.service.request_sync()
        with anyio.fail_after(SYNC_WAIT):
            await self.service.wait_for(lambda s: s.sync.syncs_ok + s.sync.syncs_failed >= target)

    async def until(self, condition: Callable[[], bool]) -> None:
        with anyio.fail_after(SYNC_WAIT):
            while not condition():
                await self.synced()

    async def open(
        self, symbol: str, side: str, price: Decimal, qty: Decimal, leverage: int
    ) -> None:
        # Placing and recording hold the sync's lock, so a sync in between never mistakes the
        # bot's own order for a position opened by hand.
        async with self.service.sync.lock:
            self.ex.open_position(symbol, side, qty, price, leverage=leverage)
            await self.ledger.open_position(
                symbol, side, qty=qty, entry_price=price, leverage=leverage,
                fee=qty * price * TAKER_FEE, open_reason="demo: ML signal",
            )  # fmt: skip

    async def close(self, position: Position, reason: str) -> None:
        async with self.service.sync.lock:
            record = self.ex.close_position(
                position.symbol, position.side.value, position.current_price
            )
            await self.ledger.close_position(
                position.position_id,
                price=record.avg_exit_price,
                fee=record.close_fee,
                reason=reason,
            )


async def run_session(
    data_dir: Path, *, seed: int, steps: int, console: Console, settings: Settings | None = None
) -> SessionSummary:
    """Run the bot session; returns the final session summary."""
    rng = random.Random(seed)
    settings = settings or load_settings(
        db_path=str(data_dir / "ledger.db"),
        positions_file=str(data_dir / "positions.json"),
        backup_dir=str(data_dir / "backups"),
        position_sync_interval=0.5,
    )
    async with (
        BybitEmulator(taker_fee_rate=TAKER_FEE) as ex,
        Ledger(
            settings.db_path, snapshot_path=settings.positions_file, settings=settings
        ) as ledger,
    ):
        for leftover in ledger.active_positions():  # from an earlier run on another emulator
            await ledger.close_position(leftover.position_id, reason="demo restart")
        ex.set_balance(10_000)
        client = make_ccxt_client(ex, pro=True)
        client.enableRateLimit = False  # ccxt paces real Bybit; the emulator needs no pacing

        async def reduce_on_exchange(position: Position, order: ExitOrder) -> ExitFill:
            record = ex.reduce_position(
                position.symbol,
                position.side.value,
                order.qty,
                ex.state.mark_price(position.symbol),
            )
            # realized PnL is computed from the prices less this fee: the opening fee was
            # recorded when the bot opened
            return ExitFill(qty=record.qty, price=record.avg_exit_price, fee=record.close_fee)

        service = BotService(
            ledger,
            ExchangeGateway(client),
            settings=settings,
            live=True,
            exit_executor=reduce_on_exchange,
            backoff=Backoff(base=0.05, cap=0.5),
        )
        bot = Session(ex, ledger, service)
        start_seq = ledger.last_seq
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(service.run)

            async def session_log() -> None:
                async for record in ledger.subscribe(from_seq=start_seq):
                    line = describe(record)
                    if line is not None:
                        console.print(line, highlight=False)

            tasks.start_soon(session_log)
            with Live(console=console, auto_refresh=False, transient=True) as live:

                def show(note: str) -> None:
                    live.update(
                        Group(positions_table(ledger.active_positions()), note), refresh=True
                    )

                await bot.synced()
                for symbol, side, price, qty, leverage, _ in BOT_TRADES:
                    await bot.open(symbol, side, price, qty, leverage)
                    ex.set_mark_price(symbol, price)
                symbol, side, price, qty, leverage = BY_HAND
                ex.open_position(symbol, side, qty, price, leverage=leverage)
                ex.set_mark_price(symbol, price)
                await bot.until(lambda: ledger.has_position_for_symbol(BY_HAND[0]))
                drifts = {trade[0]: trade[5] for trade in BOT_TRADES} | {BY_HAND[0]: -15}
                marks = {trade[0]: trade[2] for trade in BOT_TRADES} | {BY_HAND[0]: BY_HAND[2]}
                for step in range(steps):
                    for symbol in marks:
                        move = Decimal(rng.randint(-80, 80) + drifts[symbol]) / Decimal(10_000)
                        marks[symbol] = (marks[symbol] * (1 + move)).quantize(TICK)
                        ex.set_mark_price(symbol, marks[symbol])
                    if step in FAULTS:
                        ex.inject_fault(FAULTS[step], count=2, path="/v5/position/list")
                        console.print(
                            f"[yellow]fault injected: {FAULTS[step]} x2 on /v5/position/list[/]"
                        )
                    if step == steps // 3:
                        for position in ledger.active_positions():
                            ex.pay_funding(position.symbol, position.side.value, Decimal("-0.05"))
                    if step == steps // 2:
                        ex.close_position("ETH/USDT:USDT", "buy", marks["ETH/USDT:USDT"])
                        console.print("[yellow]ETH long closed by hand on the exchange[/]")
                        await bot.until(lambda: not ledger.has_position_for_symbol("ETH/USDT:USDT"))
                    await bot.synced()
                    sync = service.sync
                    show(
                        f"step {step + 1}/{steps}: seq {ledger.last_seq}, "
                        f"syncs ok {sync.syncs_ok}, failed {sync.syncs_failed}"
                    )
                ex.close_position(BY_HAND[0], BY_HAND[1], marks[BY_HAND[0]])
                await bot.until(lambda: not ledger.has_position_for_symbol(BY_HAND[0]))
                for position in ledger.active_positions():
                    await bot.close(position, "demo: session end")
                await bot.synced()
            service.stop()
            tasks.cancel_scope.cancel()
        summary = ledger.session_summary()
        failed = service.sync.syncs_failed
    console.print(summary_table(summary))
    console.print(
        f"exchange syncs: {service.sync.syncs_ok} ok, {failed} failed and recovered; "
        f"ledger: {settings.db_path} (seq {ledger.last_seq}); snapshot: {settings.positions_file}"
    )
    console.print(
        f"next: ledger stats --db {settings.db_path}   ledger verify --db {settings.db_path}"
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger demo", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder for the ledger (default ./data)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for the price walk")
    parser.add_argument("--steps", type=int, default=24, help="price steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    anyio.run(lambda: run_session(args.data, seed=args.seed, steps=args.steps, console=Console()))
    return 0
