"""Sequential commands, one durable commit each: the Ledger, the blocking manager, and the
`eventsourcing` library doing the same work.

Each round runs position life cycles of three commands, one after another: open, a partial
exit, close. Every command is checked against the current state and is one durable commit
(WAL, synchronous=FULL) in all three cases. The question is the write path's fixed cost per
command: the target is at least 1.5x the eventsourcing library's rate through both our APIs.
The eventsourcing case needs the optional `bench` extra (`pip install -e ".[bench]"`); without
it the case is skipped and says so.
"""

from __future__ import annotations

import itertools
from decimal import Decimal
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from benchmarks._data import Benchmark, Compare, Scale, describe
from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings

GROUP = "eventsourcing"
# Snapshots are kept out of the rounds: both sides do commits only.
_QUIET = Settings(
    snapshot_every_events=10**9, snapshot_every_seconds=10**6, max_concurrent_positions=1000
)
_ENTRY, _EXIT, _CLOSE = Decimal(100), Decimal(110), Decimal(105)


def _cycles(scale: Scale) -> int:
    return scale.single_ops  # position life cycles per round: 3 commands each


def _case(scale: Scale, who: str) -> str:
    return f"{who}: {3 * _cycles(scale)} sequential commands"


def _describe(benchmark: Benchmark, scale: Scale, who: str, target_id: str = "") -> None:
    baseline = _case(scale, "eventsourcing")
    compare = [Compare(baseline, max_ratio=1 / 1.5, target=">= 1.5x its rate", target_id=target_id)]
    describe(
        benchmark,
        case=_case(scale, who),
        per_round=3 * _cycles(scale),
        unit="commands",
        compare=compare if target_id else [],
        durable="open / partial exit / close, one commit per command, WAL, synchronous=FULL",
    )


@pytest.mark.benchmark(group=GROUP)
def test_commands_eventsourcing(benchmark: Benchmark, scale: Scale, tmp_path: Path) -> None:
    baseline = pytest.importorskip(
        "benchmarks.eventsourcing_baseline",
        reason="the eventsourcing baseline needs the optional extra: pip install -e '.[bench]'",
    )
    app = baseline.open_app(tmp_path / "eventsourcing.db")
    counter = itertools.count()

    def one_round() -> None:
        for _ in range(_cycles(scale)):
            i = next(counter)
            pid = app.open_position(f"S{i}USDT", Decimal(5), _ENTRY)
            app.partial_exit(pid, Decimal(2), _EXIT)
            app.close_position(pid, _CLOSE, "take_profit")

    try:
        benchmark.pedantic(one_round, rounds=scale.single_rounds)
        assert baseline.stored_events(app) == 3 * _cycles(scale) * scale.single_rounds
    finally:
        app.close()
    _describe(benchmark, scale, "eventsourcing")


@pytest.mark.benchmark(group=GROUP)
def test_commands_ledger(
    benchmark: Benchmark, portal: BlockingPortal, scale: Scale, tmp_path: Path
) -> None:
    counter = itertools.count()
    with portal.wrap_async_context_manager(Ledger(tmp_path / "ledger.db", settings=_QUIET)) as led:

        async def one_round() -> None:
            for _ in range(_cycles(scale)):
                i = next(counter)
                position = await led.open_position(
                    f"S{i}USDT", "buy", entry_price=_ENTRY, qty=5, leverage=5
                )
                pid = position.position_id
                await led.register_partial_exit(pid, qty=2, price=_EXIT)
                await led.close_position(pid, price=_CLOSE, reason="take_profit")

        benchmark.pedantic(lambda: portal.call(one_round), rounds=scale.single_rounds)
        # + the RulesConfigured a ledger under non-default limits records once
        assert led.last_seq == 3 * _cycles(scale) * scale.single_rounds + 1
    _describe(benchmark, scale, "Ledger", "sequential-ledger-vs-eventsourcing")


@pytest.mark.benchmark(group=GROUP)
def test_commands_blocking_manager(benchmark: Benchmark, scale: Scale, tmp_path: Path) -> None:
    counter = itertools.count()
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=_QUIET
    ) as manager:

        def one_round() -> None:
            for _ in range(_cycles(scale)):
                i = next(counter)
                pid = manager.thread_safe_create_position(
                    symbol=f"S{i}USDT",
                    side="buy",
                    entry_price=float(_ENTRY),
                    position_size=500.0,  # USD at entry: qty 5
                    leverage=5,
                )
                assert manager.register_partial_exit(pid, 200.0, float(_EXIT), None, "tp1")
                assert manager.close_position(pid, "take_profit", float(_CLOSE))

        benchmark.pedantic(one_round, rounds=scale.single_rounds)
        assert manager.ledger.last_seq == 3 * _cycles(scale) * scale.single_rounds + 1
    _describe(benchmark, scale, "ThreadSafePositionManager", "sequential-blocking-vs-eventsourcing")
