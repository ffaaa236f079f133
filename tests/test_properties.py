"""Properties of the folds over random valid histories.

rebuild == incremental == snapshot + tail; as_of(seq) == fold of the prefix; the snapshot
round-trips exactly; the statistics equal sums recomputed over the positions themselves.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import CommandRejected
from ledger.events import PositionMarked
from ledger.service import Ledger
from ledger.store.memory import MemoryEventStore
from ledger.values import to_micros
from projections.book import Book, fold_records
from projections.snapshot import decode_snapshot, encode_snapshot
from projections.stats import SymbolStats
from tests.strategies import T0, Action, Stamper, command_for, histories, run_history

SAVED_AT = T0 + timedelta(days=1)
FAST = settings(max_examples=60, deadline=None)


def snapshot_bytes(book: Book) -> bytes:
    return encode_snapshot(book, SAVED_AT)


def state(book: Book) -> tuple[object, ...]:
    """Everything a book holds, compared by value."""
    return (
        book.open,
        book.closed,
        book.acc,
        book.balance,
        book.available,
        book.imported_files,
        book.last_seq,
        book.last_hash,
        book.summary(),
    )


@FAST
@given(history=histories, data=st.data())
def test_rebuild_equals_incremental_equals_snapshot_plus_tail(
    history: list[Action], data: st.DataObject
) -> None:
    run = run_history(history)
    records = run.records
    rebuilt = fold_records(records)
    assert rebuilt.skipped == []  # a valid history places every event

    cut = data.draw(st.integers(0, len(records)), label="cut")
    resumed = decode_snapshot(snapshot_bytes(fold_records(records[:cut])))
    resumed.apply_all(records[cut:])

    assert state(rebuilt) == state(run.incremental) == state(resumed)
    assert snapshot_bytes(rebuilt) == snapshot_bytes(run.incremental) == snapshot_bytes(resumed)


@FAST
@given(history=histories, data=st.data())
def test_applying_a_record_twice_changes_nothing(
    history: list[Action], data: st.DataObject
) -> None:
    records = run_history(history).records
    cut = data.draw(st.integers(0, len(records)), label="cut")
    book = fold_records(records)
    book.apply_all(records[:cut])  # replays of what is already in (a reader catching up)
    assert snapshot_bytes(book) == snapshot_bytes(fold_records(records))


@FAST
@given(history=histories, data=st.data())
def test_folding_facts_equals_applying_records(history: list[Action], data: st.DataObject) -> None:
    """The rebuild's fast path (marks folded lazily, no envelope) builds the same book."""
    records = run_history(history).records
    # marks for positions the book does not hold are skipped by both, at the same seqs
    ghost = PositionMarked(position_id="ghost", mark_price=Decimal(1))
    at = data.draw(st.integers(0, len(records)), label="ghost at")
    stamper = Stamper()
    records = stamper.stamp_all(
        [r.event for r in records[:at]] + [ghost] + [r.event for r in records[at:]]
    )
    cut = data.draw(st.integers(0, len(records)), label="cut")
    again = data.draw(st.integers(0, cut), label="replayed from")
    applied = fold_records(records)
    fast = fold_records(records[:cut])
    facts = [(r.seq, to_micros(r.occurred_at), r.event) for r in records[again:]]
    fast.apply_facts(facts, last_hash=records[-1].hash)
    assert state(fast) == state(applied)
    assert fast.skipped == applied.skipped
    assert snapshot_bytes(fast) == snapshot_bytes(applied)


@FAST
@given(history=histories)
def test_snapshot_round_trip_is_exact(history: list[Action]) -> None:
    book = run_history(history).incremental
    encoded = snapshot_bytes(book)
    restored = decode_snapshot(encoded)
    assert snapshot_bytes(restored) == encoded
    assert state(restored) == state(book)
    # exact Decimals, not floats: the restored figures have the same digits
    for position_id, position in book.open.items():
        assert str(restored.open[position_id].realized_pnl) == str(position.realized_pnl)
        assert str(restored.open[position_id].qty) == str(position.qty)


@FAST
@given(history=histories)
def test_stats_equal_sums_over_positions(history: list[Action]) -> None:
    book = run_history(history).incremental
    summary = book.summary()
    closed = list(book.closed.values())
    everything = [*book.open.values(), *closed]

    assert summary.closed_trades == len(closed)
    assert summary.wins == sum(1 for p in closed if p.realized_pnl > 0)
    assert summary.losses == sum(1 for p in closed if p.realized_pnl <= 0)
    assert summary.closed_realized_pnl == sum((p.realized_pnl for p in closed), Decimal(0))
    assert summary.total_realized_pnl == sum((p.realized_pnl for p in everything), Decimal(0))
    assert summary.unrealized_pnl == sum((p.unrealized_pnl for p in book.open.values()), Decimal(0))
    assert summary.total_pnl == summary.total_realized_pnl + summary.unrealized_pnl
    assert summary.total_fees == sum((p.fees for p in everything), Decimal(0))
    assert summary.total_funding == sum((p.funding for p in everything), Decimal(0))
    assert summary.active_positions == len(book.open)

    expected: dict[str, SymbolStats] = {}
    for position in closed:
        figures = expected.setdefault(position.symbol, SymbolStats())
        figures.closed_trades += 1
        figures.wins += position.realized_pnl > 0
        figures.losses += position.realized_pnl <= 0
        figures.realized_pnl += position.realized_pnl
        figures.fees += position.fees
        figures.funding += position.funding
    assert summary.per_symbol == dict(sorted(expected.items()))

    wins = [p.realized_pnl for p in closed if p.realized_pnl > 0]
    losses = [p.realized_pnl for p in closed if p.realized_pnl <= 0]
    gross_loss = sum(losses, Decimal(0))
    expected_factor = sum(wins, Decimal(0)) / -gross_loss if gross_loss else None
    assert summary.profit_factor == expected_factor


@FAST
@given(history=histories)
def test_max_drawdown_is_the_deepest_fall_of_realized_equity(history: list[Action]) -> None:
    run = run_history(history)
    equity = peak = deepest = Decimal(0)
    for record in run.records:
        before = fold_records(r for r in run.records if r.seq < record.seq)
        after = fold_records(r for r in run.records if r.seq <= record.seq)
        equity += after.summary().total_realized_pnl - before.summary().total_realized_pnl
        peak = max(peak, equity)
        deepest = max(deepest, peak - equity)
    assert run.incremental.summary().max_drawdown == deepest


class _Ticks:
    """A clock that moves one second per reading, so every commit has its own time."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@FAST
@given(history=histories, data=st.data())
def test_ledger_as_of_equals_fold_of_the_prefix(history: list[Action], data: st.DataObject) -> None:
    async def scenario(folder: Path) -> None:
        clock = _Ticks()
        store = MemoryEventStore(clock=clock)
        async with Ledger(store=store, snapshot_path=folder / "positions.json", clock=clock) as led:
            for serial, action in enumerate(history):
                command = command_for(action, led.book, serial)
                if command is None:
                    continue
                try:
                    await led.execute(command)
                except CommandRejected:
                    continue
            records = await store.read()
            assert [r.seq for r in records] == list(range(1, len(records) + 1))
            assert snapshot_bytes(led.book) == snapshot_bytes(fold_records(records))

            seq = data.draw(st.integers(0, len(records)), label="seq")
            as_of = await led.as_of(seq=seq)
            assert snapshot_bytes(as_of) == snapshot_bytes(fold_records(records[:seq]))

            if records:
                moment = data.draw(st.sampled_from([r.occurred_at for r in records]), label="t")
                by_time = await led.as_of(time=moment)
                prefix = [r for r in records if r.occurred_at <= moment]
                assert snapshot_bytes(by_time) == snapshot_bytes(fold_records(prefix))

    for folder in _temporary_folder():
        anyio.run(scenario, folder)


def _temporary_folder() -> Iterator[Path]:
    # hypothesis runs many examples per test, so a per-test tmp_path would be shared
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)
