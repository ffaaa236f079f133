"""One create + close with 1k and 10k closed positions in history: the Ledger vs the seed.

The Ledger appends two events to its SQLite log (two commits) and never rewrites history, so
its cost should stay flat as history grows; the seed rewrites the whole positions.json (every
closed position) on each of the two changes, so its cost grows with history. Both start from
the same history: the seed's copy is converted from the book the Ledger folds.

The Ledger is async: the benchmark's thread reaches it through an anyio portal, a hand-off to
the loop's thread and back (about 0.3 ms here, as much as a whole create+close at NORMAL) that a
bot, calling from its own loop, never pays. Its rounds therefore run 10 create+closes in one
portal call (the ratio is per create+close). `ThreadSafePositionManager`, the seed's drop-in,
is called exactly as the seed is, one create+close a round from the benchmark's thread, with
the seed's arguments: its commits run on the calling thread, no hand-off.

Each comparison is between the same durability (issue 9 §5):
- survives a power loss: the Ledger at synchronous=FULL (an fsync per commit) against the seed
  with an fsync of its JSON and of the folder before and after the rename;
- survives a process crash only: the Ledger at synchronous=NORMAL (WAL, no fsync per commit)
  against the seed as written (temp file + rename, no fsync).
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
from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import Synchronous
from projections.positions import Position

GROUP = "create-close"
_HISTORY = ["small", "large"]
_SYNCS = ["FULL", "NORMAL"]


def _size(scale: Scale, history: str) -> int:
    small, large = scale.histories
    return small if history == "small" else large


# create+closes a Ledger round runs in one portal call: the hand-off is paid once a round
_LEDGER_PER_ROUND = 10


def _ledger_case(n: int, synchronous: str) -> str:
    return f"Ledger (SQLite, {synchronous}), {n:,} closed"


def _manager_case(n: int, synchronous: str) -> str:
    return f"ThreadSafePositionManager (SQLite, {synchronous}), {n:,} closed"


def _seed_case(n: int, *, durable: bool) -> str:
    return f"seed (rewrite JSON{' + fsync' if durable else ''}), {n:,} closed"


_POWER_LOSS = "same durability: both survive a power loss (FULL commit / JSON and folder fsynced)"
_CRASH = "same durability: both survive a process crash only (NORMAL in WAL / rename, no fsync)"


def _compare(scale: Scale, case: str) -> list[Compare]:
    small, large = scale.histories
    compares: list[Compare] = []
    for n in (small, large):
        for name, issues_case in ((_ledger_case, True), (_manager_case, False)):
            # the issue's targets are read on the Ledger; the manager's rows show the same
            # ratio for a seed bot that switched without changing a line
            if case == name(n, "FULL"):
                compares.append(
                    Compare(
                        _seed_case(n, durable=True),
                        max_ratio=0.001 if n == large else None,
                        target=_POWER_LOSS,
                        target_id="create-close-vs-seed" if n == large and issues_case else "",
                    )
                )
            if case == name(n, "NORMAL"):
                compares.append(
                    Compare(
                        _seed_case(n, durable=False),
                        max_ratio=0.001 if n == large else None,
                        target=_CRASH,
                        target_id=(
                            "create-close-vs-seed-as-written" if n == large and issues_case else ""
                        ),
                    )
                )
    if case == _ledger_case(large, "FULL"):
        compares.append(
            Compare(_ledger_case(small, "FULL"), max_ratio=1.5, target="flat as history grows")
        )
    for durable in (False, True):
        if case == _seed_case(large, durable=durable):
            compares.append(Compare(_seed_case(small, durable=durable)))
    return compares


def _describe(benchmark: Benchmark, scale: Scale, case: str, per_round: int = 1) -> None:
    """Label a create+close case with its baselines."""
    describe(
        benchmark,
        case=case,
        per_round=per_round,
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
@pytest.mark.parametrize("synchronous", _SYNCS)
@pytest.mark.parametrize("history", _HISTORY)
def test_create_close_ledger(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    history_db: Callable[[int], Path],
    tmp_path: Path,
    history: str,
    synchronous: Synchronous,
) -> None:
    n = _size(scale, history)
    db = tmp_path / "ledger.db"
    shutil.copyfile(history_db(n), db)
    counter = itertools.count()
    per_round = min(_LEDGER_PER_ROUND, scale.create_close_rounds)
    ledger_ = Ledger(db, settings=Settings(synchronous=synchronous))
    with portal.wrap_async_context_manager(ledger_) as ledger:
        closed_before = len(ledger.closed_positions())
        assert closed_before == n

        async def one_round() -> None:
            for _ in range(per_round):
                await _create_close(ledger, next(counter))

        benchmark.pedantic(
            lambda: portal.call(one_round), rounds=scale.create_close_rounds // per_round
        )
        assert len(ledger.closed_positions()) > closed_before and not ledger.active_positions()
    _describe(benchmark, scale, _ledger_case(n, synchronous), per_round)


def _seed_open(i: int) -> dict[str, object]:
    """The seed bot's arguments to thread_safe_create_position for round i."""
    return {
        "symbol": "BENCH/USDT:USDT",
        "side": "buy",
        "entry_price": 100.0 + i % 10,
        "current_price": 100.0 + i % 10,
        "position_size": 500.0,
        "leverage": 5,
        "unrealized_pnl": 0.0,
        "roe_percentage": 0.0,
        "open_time": "2025-01-07T16:45:00",
        "close_time": None,
        "confidence": 0.77,
        "open_reason": "ML BUY 77% | TF[15m 30m 1h]",
        "close_reason": None,
    }


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("synchronous", _SYNCS)
@pytest.mark.parametrize("history", _HISTORY)
def test_create_close_manager(
    benchmark: Benchmark,
    scale: Scale,
    history_db: Callable[[int], Path],
    tmp_path: Path,
    history: str,
    synchronous: Synchronous,
) -> None:
    """The seed's drop-in, called as the seed is: the same arguments, the benchmark's thread."""
    n = _size(scale, history)
    db = tmp_path / "ledger.db"
    shutil.copyfile(history_db(n), db)
    rounds = itertools.count()
    settings = Settings(synchronous=synchronous)
    with ThreadSafePositionManager(tmp_path / "positions.json", db_path=db, settings=settings) as m:
        assert m.exact.get_session_summary().closed_trades == n

        def create_close() -> None:
            position_id = m.thread_safe_create_position(**_seed_open(next(rounds)))
            assert m.close_position(position_id, "take_profit")

        benchmark.pedantic(create_close, rounds=scale.create_close_rounds)
        assert m.exact.get_session_summary().closed_trades > n and not m.get_active_positions()
    _describe(benchmark, scale, _manager_case(n, synchronous))


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize("durable", [False, True], ids=["as-written", "fsync"])
@pytest.mark.parametrize("history", _HISTORY)
def test_create_close_seed(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    history_db: Callable[[int], Path],
    tmp_path: Path,
    history: str,
    durable: bool,
) -> None:
    n = _size(scale, history)
    book = portal.call(fold_file, history_db(n))
    closed = [_seed_position(p) for p in book.closed.values()]
    assert len(closed) == n
    manager = SeedPositionManager(tmp_path / "positions.json", durable=durable)
    manager.restore(closed)
    rounds = itertools.count()

    def create_close() -> None:
        position_id = manager.thread_safe_create_position(**_seed_open(next(rounds)))
        assert manager.close_position(position_id, "take_profit")

    benchmark.pedantic(create_close, rounds=scale.seed_rounds)
    assert manager.get_session_summary()["closed_trades"] > n
    _describe(benchmark, scale, _seed_case(n, durable=durable))
