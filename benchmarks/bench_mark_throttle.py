"""How many mark events a position writes a day under the mark throttle's defaults.

A live ticker stream (Bybit's `tickers.{symbol}`, pushed every 100 ms for derivatives) moves
the mark almost every push. The exit rules see every mark; the log keeps one only when
`mark_worth_logging` says so (at most one per `mark_min_interval_seconds`, sooner on a move
above `mark_min_move_pct`). Seeded random walks at several daily volatilities, one day each.

    python -m benchmarks.bench_mark_throttle     # prints the README figure
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

from ledger.exchange.reconcile import ReconcilePolicy, mark_worth_logging
from ledger.settings import Settings
from ledger.values import Side
from projections.positions import Position

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _position(price: Decimal) -> Position:
    return Position(
        position_id="p",
        symbol="BTC/USDT:USDT",
        side=Side.BUY,
        entry_price=price,
        current_price=price,
        position_size=price,
        leverage=10,
        unrealized_pnl=Decimal(0),
        roe_percentage=Decimal(0),
        open_time=T0,
        qty=Decimal(1),
        initial_qty=Decimal(1),
    )


def marks_logged_per_day(
    daily_vol: float, *, push_ms: int = 100, policy: ReconcilePolicy | None = None, seed: int = 7
) -> tuple[int, int]:
    """(marks pushed, marks logged) over one day of a random walk with this daily volatility."""
    settings = Settings()
    policy = policy or ReconcilePolicy(
        mark_interval=timedelta(seconds=settings.mark_min_interval_seconds),
        mark_move=Decimal(str(settings.mark_min_move_pct)) / 100,
    )
    rng = random.Random(seed)
    pushes = int(DAY / timedelta(milliseconds=push_ms))
    sigma = daily_vol / math.sqrt(pushes)
    price = 60000.0
    position = _position(Decimal("60000.0"))
    logged = 0
    step = timedelta(milliseconds=push_ms)
    now = T0
    for _ in range(pushes):
        now += step
        price *= math.exp(rng.gauss(0.0, sigma))
        mark = Decimal(f"{price:.1f}")  # BTCUSDT's tick
        if mark_worth_logging(position, mark, now, policy):
            logged += 1
            position = msgspec.structs.replace(position, current_price=mark, marked_at=now)
    return pushes, logged


def test_the_throttle_bounds_a_live_stream_smoke() -> None:
    pushed, logged = marks_logged_per_day(0.03, push_ms=10_000)
    assert pushed == 8640 and 0 < logged <= pushed


def main() -> None:
    print("| daily volatility | marks pushed (100 ms) | marks logged a day (defaults) |")
    print("|---|---|---|")
    for vol in (0.01, 0.03, 0.10):
        pushed, logged = marks_logged_per_day(vol)
        print(f"| {vol:.0%} | {pushed:,} | {logged:,} |")


if __name__ == "__main__":
    main()
