"""Ledger start-up from a valid snapshot plus a 1,000-event tail, beside a full rebuild.

Both open the scale's log (100k events by default, 1M with BENCH_SCALE=full) with a Ledger;
only the opening is timed (each ledger is closed, untimed, before the next round). With the
snapshot, start-up checks its seq, hash and checksum against the log and folds only the tail
(the closed positions' bodies are decoded on first use, which a start-up does not make);
without one, it folds every event and writes the snapshot. Target: >= 25x faster.

The cold start (issue 9): a Ledger opened on a 4,500-event log with no positions.json, beside
a fresh connection scanning and decoding the same rows; start-up also writes positions.json.
"""

from __future__ import annotations

import sqlite3
from concurrent.futures import Future
from pathlib import Path

import anyio
import pytest
from anyio.abc import TaskStatus
from anyio.from_thread import BlockingPortal

from benchmarks._data import (
    EPOCH,
    SELECT_SQL,
    Benchmark,
    Compare,
    EventMix,
    Scale,
    build_log,
    describe,
    fold,
    take,
)
from ledger.codec import decode_event
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
        # a start-up from the snapshot takes tens of ms: more rounds than the rebuild's (same
        # work each round), so its median is not one noisy round on a shared machine
        rebuilt, last_seq = benchmark.pedantic(
            starts.start, setup=setup, rounds=scale.startup_rounds * 4
        )
    finally:
        starts.close()
    assert not rebuilt and last_seq == scale.log_events
    describe(
        benchmark,
        case=f"start-up, snapshot + {scale.tail_events:,}-event tail",
        per_round=1,
        unit="start-ups",
        compare=[Compare(_REBUILD, max_ratio=0.04, target=">= 25x faster", target_id="startup")],
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


# -- cold start: no positions.json, a small log -------------------------------------------

COLD = "cold-start"


@pytest.fixture(scope="module")
def cold_db(data_dir: Path, scale: Scale, portal: BlockingPortal) -> Path:
    """A log of the scale's cold-start size (4,500 events), the benchmark mix."""
    path = data_dir / f"cold-{scale.cold_events}.db"
    if not path.exists():
        portal.call(build_log, path, take(EventMix(seed=4500), scale.cold_events))
    return path


def _raw_case(n: int) -> str:
    return f"raw sqlite3 scan + decode, {n:,} events"


@pytest.mark.benchmark(group=COLD)
def test_cold_start(
    benchmark: Benchmark, portal: BlockingPortal, scale: Scale, cold_db: Path, tmp_path: Path
) -> None:
    snapshot = tmp_path / "positions.json"
    starts = _StartUps(portal, cold_db, snapshot)

    def setup() -> None:
        starts.close()
        snapshot.unlink(missing_ok=True)  # the previous round wrote one

    try:
        rebuilt, last_seq = benchmark.pedantic(starts.start, setup=setup, rounds=scale.cold_rounds)
    finally:
        starts.close()
    n = scale.cold_events
    assert rebuilt and last_seq == n
    describe(
        benchmark,
        case=f"Ledger start-up, {n:,} events, no positions.json",
        per_round=1,
        unit="start-ups",
        compare=[
            Compare(
                _raw_case(n), max_ratio=2.0, target="<= 2x scan + decode", target_id="cold-start"
            )
        ],
        events=n,
    )


@pytest.mark.benchmark(group=COLD)
def test_cold_start_raw_scan_and_decode(benchmark: Benchmark, scale: Scale, cold_db: Path) -> None:
    """The floor: a fresh connection, every row, every body decoded (no envelope, no fold)."""

    def scan_and_decode() -> int:
        conn = sqlite3.connect(f"file:{cold_db}?mode=ro", uri=True)
        try:
            cursor = conn.execute(SELECT_SQL)
            count = 0
            while rows := cursor.fetchmany(5000):
                count += len([decode_event(row[8], row[5]) for row in rows])
            return count
        finally:
            conn.close()

    count = benchmark.pedantic(scan_and_decode, rounds=scale.cold_rounds)
    assert count == scale.cold_events
    n = scale.cold_events
    describe(benchmark, case=_raw_case(n), per_round=1, unit="scans", events=n)
