"""Ledger start-up from a valid snapshot plus a 1,000-event tail, beside a full rebuild.

Both open the scale's log (100k events by default, 1M with BENCH_SCALE=full) with a Ledger;
only the opening is timed (each ledger is closed, untimed, before the next round). With the
snapshot, start-up checks its seq, hash and checksum against the log and folds only the tail;
without one, it folds every event and writes the snapshot. Target: >= 20x faster.
"""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
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


async def _hold_open(
    db: Path, snapshot: Path, *, task_status: TaskStatus[tuple[bool, int, anyio.Event]]
) -> None:
    """Open a Ledger and keep it open until told: start-up is timed, closing is not."""
    async with Ledger(db, snapshot_path=snapshot) as ledger:
        close = anyio.Event()
        task_status.started((ledger.rebuilt_on_start, ledger.last_seq, close))
        await close.wait()


class _StartUps:
    """Times `Ledger` start-up alone: each round opens one; the next round's setup (untimed)
    closes the one before, which is when a ledger writes its closing snapshot."""

    def __init__(self, portal: BlockingPortal, db: Path, snapshot: Path) -> None:
        self.portal = portal
        self.db = db
        self.snapshot = snapshot
        self.open: tuple[Future[None], anyio.Event] | None = None

    def start(self) -> tuple[bool, int]:
        future, (rebuilt, last_seq, close) = self.portal.start_task(
            _hold_open, self.db, self.snapshot
        )
        self.open = (future, close)
        return rebuilt, last_seq

    def close(self) -> None:
        if self.open is not None:
            future, close = self.open
            self.portal.call(close.set)
            future.result()
            self.open = None


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
    starts = _StartUps(portal, log_db, snapshot)

    def setup() -> None:
        starts.close()
        snapshot.write_bytes(snapshot_bytes)  # the same snapshot, tail and all, every round

    try:
        rebuilt, last_seq = benchmark.pedantic(
            starts.start, setup=setup, rounds=scale.startup_rounds
        )
    finally:
        starts.close()
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
    starts = _StartUps(portal, log_db, snapshot)

    def setup() -> None:
        starts.close()
        snapshot.unlink(missing_ok=True)  # the previous round wrote one

    try:
        rebuilt, last_seq = benchmark.pedantic(
            starts.start, setup=setup, rounds=scale.startup_rounds
        )
    finally:
        starts.close()
    assert rebuilt and last_seq == scale.log_events
    describe(benchmark, case=_REBUILD, per_round=1, unit="start-ups", events=scale.log_events)
