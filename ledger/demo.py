"""The main job behind scripts/run: a short bot session on embedded defaults, left in ./data."""

from __future__ import annotations

import argparse
import random
from decimal import Decimal
from pathlib import Path

import anyio
from rich.console import Console
from rich.table import Table

from ledger.service import Ledger
from ledger.settings import load_settings
from projections.positions import Position
from projections.stats import SessionSummary

# (symbol, side, entry price, notional USD, leverage, drift of ROE per step in tenths of %):
# the seed's SOL example among them, and one trade that goes against the bot.
DEMO_TRADES = (
    ("SOL/USDT:USDT", "buy", Decimal("100.50"), Decimal(500), 5, 25),
    ("BTC/USDT:USDT", "sell", Decimal(64000), Decimal(800), 10, 20),
    ("ETH/USDT:USDT", "buy", Decimal(3200), Decimal(600), 5, -12),
    ("XRP/USDT:USDT", "buy", Decimal("0.52"), Decimal(300), 3, 8),
)
# The seed's partial-exit rules: exit a share of what is left when ROE first crosses a level.
ROE_RULES = (
    ("partial_exit_50_roe", Decimal(50), Decimal("0.3")),
    ("partial_exit_100_roe", Decimal(100), Decimal("0.5")),
)
TAKER_FEE = Decimal("0.00055")
CENTS = Decimal("0.0001")


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
            value = (
                value.quantize(Decimal("0.0001"))
                if name == "win_rate"
                else value.quantize(Decimal("0.01"))
            )
        table.add_row(name, "-" if value is None else str(value))
    return table


async def run_session(data_dir: Path, *, seed: int, steps: int, console: Console) -> SessionSummary:
    """Open the demo trades, walk prices, fire ROE exits, close everything; returns the summary."""
    rng = random.Random(seed)
    settings = load_settings(
        db_path=str(data_dir / "ledger.db"), positions_file=str(data_dir / "positions.json")
    )
    async with Ledger(
        settings.db_path, snapshot_path=settings.positions_file, settings=settings
    ) as ledger:
        for leftover in ledger.active_positions():
            await ledger.close_position(leftover.position_id, reason="demo restart")
        await ledger.observe_balance(total=Decimal(10_000), available=Decimal(10_000))
        prices: dict[str, Decimal] = {}
        drifts: dict[str, int] = {}
        for symbol, side, entry, notional, leverage, drift in DEMO_TRADES:
            position = await ledger.open_position(
                symbol,
                side,
                entry_price=entry,
                notional=notional,
                leverage=leverage,
                fee=(notional * TAKER_FEE).quantize(CENTS),
                confidence=Decimal("0.77"),
                open_reason="demo: ML signal",
            )
            prices[position.position_id] = entry
            drifts[position.position_id] = drift
            console.print(f"opened {side} {symbol} {notional} USD at {entry} x{leverage}")
        for _ in range(steps):
            for position in ledger.active_positions():
                pid = position.position_id
                roe_step = Decimal(rng.randint(-40, 40) + drifts[pid]) / Decimal(1000)
                if position.side.value == "sell":
                    roe_step = -roe_step
                price = (prices[pid] * (1 + roe_step / position.leverage)).quantize(CENTS)
                prices[pid] = price
                marked = await ledger.mark(pid, price)
                await _fire_roe_rules(ledger, marked, price, console)
        for position in ledger.active_positions():
            closed = await ledger.close_position(position.position_id, reason="demo: session end")
            console.print(
                f"closed {closed.symbol} at {closed.exit_price}: "
                f"realized {closed.realized_pnl:.2f} USD"
            )
        summary = ledger.session_summary()
    console.print(summary_table(summary))
    console.print(f"ledger: {settings.db_path}   snapshot: {settings.positions_file}")
    return summary


async def _fire_roe_rules(
    ledger: Ledger, marked: Position, price: Decimal, console: Console
) -> None:
    done = {exit.rule for exit in marked.partial_exits}
    for rule, level, share in ROE_RULES:
        if rule not in done and marked.roe_percentage >= level:
            qty = marked.qty * share
            after = await ledger.register_partial_exit(
                marked.position_id,
                qty=qty,
                price=price,
                fee=(qty * price * TAKER_FEE).quantize(CENTS),
                reason=rule,
                rule=rule,
            )
            console.print(
                f"{rule}: {after.symbol} exited {share:.0%} at {price}, "
                f"realized so far {after.realized_pnl:.2f}"
            )
            return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ledger demo", description=__doc__)
    parser.add_argument(
        "--data", type=Path, default=Path("data"), help="folder for the ledger (default ./data)"
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed for the price walk")
    parser.add_argument("--steps", type=int, default=40, help="price steps per position")
    args = parser.parse_args(argv)
    anyio.run(lambda: run_session(args.data, seed=args.seed, steps=args.steps, console=Console()))
    return 0
