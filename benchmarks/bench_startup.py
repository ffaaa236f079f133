"""Ledger start-up from a valid snapshot plus a 1,000-event tail, beside a full rebuild.

Both open the scale's log (100k events by default, 1M with BENCH_SCALE=full) with a Ledger and
close it again. With the snapshot, start-up checks its seq and hash against the log and folds
only the tail; without one, it folds every event and writes the snapshot. Target: >= 20x faster.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from benchmarks._data import EPOCH, Benchmark, Compare, Scale, describe, fold
from ledger.service import Ledger
from ledger.store.sqlite import SQLiteEventStore
from projections.snapshot import encode_snapshot

GROUP = "startup"
_REBUILD = "start-up, full rebuild (no snapshot)"


@pytest.fixture(scope="module")
def snapshot_bytes(log_db: Path, scale: Scale, portal: BlockingPortal) -> bytes:
    """positions.json for the book at the log's end less the tail."""

    async def build() -> bytes:
        store = SQLiteEventStore(log_db, read_only=True)
        await store.open()
        try:
            book = await fold(store, to_seq=scale.log_events - scale.tail_events)
        finally:
            await store.close()
        return encode_snapshot(book, EPOCH)

    result: bytes = portal.call(build)
    return result


async def _start(db: Path, snapshot: Path) -> tuple[bool, int]:
    async with Ledger(db, snapshot_path=snapshot) as ledger:
        return ledger.rebuilt_on_start, ledger.last_seq


@pytest.mark.benchmark(group=GROUP)
def test_startup_from_snapshot(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    log_db: Path,
    snapshot_bytes: bytes,
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "positions.json"

    def setup() -> None:
        snapshot.write_bytes(snapshot_bytes)  # the same snapshot, tail and all, every round

    rebuilt, last_seq = benchmark.pedantic(
        lambda: portal.call(_start, log_db, snapshot), setup=setup, rounds=scale.startup_rounds
    )
    assert not rebuilt and last_seq == scale.log_events
    describe(
        benchmark,
        case=f"start-up, snapshot + {scale.tail_events:,}-event tail",
        per_round=1,
        unit="start-ups",
        compare=[Compare(_REBUILD, max_ratio=0.05, target=">= 20x faster")],
        events=scale.log_events,
        snapshot_mb=round(len(snapshot_bytes) / 1e6, 1),
    )


@pytest.mark.benchmark(group=GROUP)
def test_startup_full_rebuild(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    log_db: Path,
    tmp_path: Path,
) -> None:
    snapshot = tmp_path / "positions.json"

    def setup() -> None:
        snapshot.unlink(missing_ok=True)  # the previous round wrote one

    rebuilt, last_seq = benchmark.pedantic(
        lambda: portal.call(_start, log_db, snapshot), setup=setup, rounds=scale.startup_rounds
    )
    assert rebuilt and last_seq == scale.log_events
    describe(benchmark, case=_REBUILD, per_round=1, unit="start-ups", events=scale.log_events)
