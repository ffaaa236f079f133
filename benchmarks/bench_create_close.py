"""One create + close with 1k and 10k closed positions in history: the Ledger vs the seed.

The Ledger appends two events to its SQLite log (two durable commits, synchronous=FULL) and
never rewrites history, so its cost should stay flat as history grows; the seed rewrites the
whole positions.json (every closed position) on each of the two changes, so its cost grows
with history. Both start from the same history: the seed's copy is converted from the book
the Ledger folds.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from benchmarks._data import Benchmark, Compare, Scale, describe, fold_file
from benchmarks.seed_baseline import SeedPositionManager, ThreadSafePosition
from ledger.service import Ledger
from projections.positions import Position

GROUP = "create-close"
_HISTORY = ["small", "large"]


def _size(scale: Scale, history: str) -> int:
    small, large = scale.histories
    return small if history == "small" else large


def _ledger_case(n: int) -> str:
    return f"Ledger (SQLite), {n:,} closed"


def _seed_case(n: int) -> str:
    return f"seed (rewrite JSON), {n:,} closed"


def _compare(scale: Scale, case: str) -> list[Compare]:
    small, large = scale.histories
    if case == _ledger_case(small):
        return [Compare(_seed_case(small))]
    if case == _ledger_case(large):
        return [
            Compare(_ledger_case(small), max_ratio=1.5, target="flat as history grows"),
            Compare(_seed_case(large)),
        ]
    if case == _seed_case(large):
        return [Compare(_seed_case(small))]
    return []


def _describe(benchmark: Benchmark, scale: Scale, case: str) -> None:
    """Label a create+close case with its baselines."""
    describe(
        benchmark,
        case=case,
        per_round=1,
        unit="create+close",
        compare=_compare(scale, case),
    )


def _seed_position(position: Position) -> ThreadSafePosition:
    """The seed's float record of a closed position of ours."""

    def num(value: object) -> float | None:
        return None if value is None else float(str(value))

    return ThreadSafePosition(
        position_id=position.position_id,
        symbol=position.symbol,
        side=position.side.value,
        entry_price=float(position.entry_price),
        current_price=float(position.current_price),
        position_size=float(position.position_size),
        leverage=position.leverage,
        unrealized_pnl=float(position.realized_pnl),
        roe_percentage=float(position.roe_percentage),
        open_time=position.open_time.isoformat(),
        close_time=None if position.close_time is None else position.close_time.isoformat(),
        confidence=float(position.confidence or 0),
        open_reason=position.open_reason,
        close_reason=position.close_reason,
        atr=num(position.atr),
        adx=num(position.adx),
        volatility=num(position.volatility),
        real_initial_margin=num(position.real_initial_margin),
        partial_exits=[
            {
                "timestamp": exit.timestamp.isoformat(),
                "size": float(exit.size),
                "price": float(exit.price),
                "realized_pnl": float(exit.realized_pnl),
                "reason": exit.reason,
            }
            for exit in position.partial_exits
        ],
    )


async def _create_close(ledger: Ledger, i: int) -> None:
    position = await ledger.open_position(
        "BENCH/USDT:USDT",
        "buy",
        entry_price=100 + i % 10,
        notional=500,
        leverage=5,
        confidence="0.77",
        open_reason="ML BUY 77% | TF[15m 30m 1h]",
    )
    await ledger.close_position(position.position_id, price=101 + i % 7, reason="take_profit")


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("history", _HISTORY)
def test_create_close_ledger(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    history_db: Callable[[int], Path],
    tmp_path: Path,
    history: str,
) -> None:
    n = _size(scale, history)
    db = tmp_path / "ledger.db"
    shutil.copyfile(history_db(n), db)
    rounds = itertools.count()
    with portal.wrap_async_context_manager(Ledger(db)) as ledger:
        closed_before = len(ledger.closed_positions())
        assert closed_before == n
        benchmark.pedantic(
            lambda: portal.call(_create_close, ledger, next(rounds)),
            rounds=scale.create_close_rounds,
        )
        assert len(ledger.closed_positions()) > closed_before and not ledger.active_positions()
    _describe(benchmark, scale, _ledger_case(n))


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("history", _HISTORY)
def test_create_close_seed(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    history_db: Callable[[int], Path],
    tmp_path: Path,
    history: str,
) -> None:
    n = _size(scale, history)
    book = portal.call(fold_file, history_db(n))
    closed = [_seed_position(p) for p in book.closed.values()]
    assert len(closed) == n
    manager = SeedPositionManager(tmp_path / "positions.json")
    manager.restore(closed)
    rounds = itertools.count()

    def create_close() -> None:
        i = next(rounds)
        position_id = manager.thread_safe_create_position(
            symbol="BENCH/USDT:USDT",
            side="buy",
            entry_price=100.0 + i % 10,
            current_price=100.0 + i % 10,
            position_size=500.0,
            leverage=5,
            unrealized_pnl=0.0,
            roe_percentage=0.0,
            open_time="2025-01-07T16:45:00",
            close_time=None,
            confidence=0.77,
            open_reason="ML BUY 77% | TF[15m 30m 1h]",
            close_reason=None,
        )
        assert manager.close_position(position_id, "take_profit")

    benchmark.pedantic(create_close, rounds=scale.seed_rounds)
    assert manager.get_session_summary()["closed_trades"] > n
    _describe(benchmark, scale, _seed_case(n))
