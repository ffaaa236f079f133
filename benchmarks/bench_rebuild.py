"""Full rebuild: every stored event folded into a Book, beside a raw sqlite3 scan of the rows.

The log is the scale's (100k events by default, 1M with BENCH_SCALE=full). Target (issue 9):
the fold (`ledger.rebuild.fold_log`, what start-up runs) takes at most 2x a raw sqlite3 scan
of every column of the same rows in seq order. Two more cases split the cost: the raw scan of
only the columns the fold reads (rows), and the store reading them as the fold does, handed to
a fold that does nothing (`store.fold_pages`: the rows, still encoded, on the store's worker
thread); the report prints the differences as rows / store's read / decode + fold (the fold
decodes a body only as far as it folds it: a mark superseded by the next is never decoded).
The fold's peak
memory is measured in a fresh process (its RSS high-water mark; tracemalloc's peak in a second
run) and kept in extra_info.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anyio.from_thread import BlockingPortal

from benchmarks._data import SELECT_SQL, Benchmark, Compare, Scale, describe, fold
from ledger.store.sqlite import SQLiteEventStore

GROUP = "rebuild"
_RAW = "raw sqlite3 SELECT scan"
_RAW_FACTS = "raw sqlite3 SELECT of the fold's 4 columns"
_FACTS = "store.fold_pages (the fold's rows as it reads them, no decode, no fold)"
FACT_COLUMNS = "seq, occurred_us, schema_version, body"  # what SQLiteEventStore's fold reads
_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def store(log_db: Path, portal: BlockingPortal) -> Iterator[SQLiteEventStore]:
    opened = SQLiteEventStore(log_db, read_only=True)
    portal.call(opened.open)
    try:
        yield opened
    finally:
        portal.call(opened.close)


def _memory(log_db: Path, *, trace: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks._data", "rebuild-memory", str(log_db)]
    if trace:
        command.append("--tracemalloc")
    done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


@pytest.mark.benchmark(group=GROUP)
def test_rebuild_fold(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    store: SQLiteEventStore,
    log_db: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    n = scale.log_events
    book = benchmark.pedantic(lambda: portal.call(fold, store), rounds=scale.rebuild_rounds)
    assert book.last_seq == n
    rss = _memory(log_db, trace=False)
    traced = _memory(log_db, trace=True)
    memory = {
        "peak_rss_mb": round(rss["maxrss_mb"], 1),
        "peak_rss_growth_mb": round(rss["maxrss_mb"] - rss["maxrss_before_mb"], 1),
        "tracemalloc_peak_mb": round(traced["tracemalloc_peak_mb"], 1),
        "book_mb": round(traced["tracemalloc_book_mb"], 1),
    }
    with capsys.disabled():
        print(
            f"\nrebuild of {n:,} events: peak RSS {memory['peak_rss_mb']} MB "
            f"(+{memory['peak_rss_growth_mb']} MB over the imports), tracemalloc peak "
            f"{memory['tracemalloc_peak_mb']} MB, book {memory['book_mb']} MB"
        )
    describe(
        benchmark,
        case=f"fold {n:,} events into a Book",
        per_round=n,
        unit="events",
        compare=[
            Compare(_RAW, max_ratio=2.0, target="<= 2x raw scan", target_id="rebuild"),
            Compare(_FACTS),
        ],
        events=n,
        **memory,
    )


@pytest.mark.benchmark(group=GROUP)
def test_rebuild_decode_only(
    benchmark: Benchmark, portal: BlockingPortal, scale: Scale, store: SQLiteEventStore
) -> None:
    async def count() -> int:
        pages: list[int] = []
        await store.fold_pages(lambda page: pages.append(len(page)))
        return sum(pages)

    total = benchmark.pedantic(lambda: portal.call(count), rounds=scale.rebuild_rounds)
    assert total == scale.log_events
    describe(
        benchmark,
        case=_FACTS,
        per_round=scale.log_events,
        unit="events",
        compare=[Compare(_RAW)],
        events=scale.log_events,
    )


def _scan(benchmark: Benchmark, scale: Scale, log_db: Path, sql: str) -> None:
    conn = sqlite3.connect(f"file:{log_db}?mode=ro", uri=True)

    def scan() -> int:
        cursor = conn.execute(sql)
        count = 0
        while rows := cursor.fetchmany(5000):
            count += len(rows)
        return count

    try:
        count = benchmark.pedantic(scan, rounds=scale.rebuild_rounds)
    finally:
        conn.close()
    assert count == scale.log_events


@pytest.mark.benchmark(group=GROUP)
def test_rebuild_raw_scan_of_the_folds_columns(
    benchmark: Benchmark, scale: Scale, log_db: Path
) -> None:
    _scan(benchmark, scale, log_db, f"SELECT {FACT_COLUMNS} FROM events ORDER BY seq")
    describe(
        benchmark,
        case=_RAW_FACTS,
        per_round=scale.log_events,
        unit="events",
        compare=[Compare(_RAW)],
        events=scale.log_events,
    )


@pytest.mark.benchmark(group=GROUP)
def test_rebuild_raw_scan(benchmark: Benchmark, scale: Scale, log_db: Path) -> None:
    _scan(benchmark, scale, log_db, SELECT_SQL)
    describe(
        benchmark, case=_RAW, per_round=scale.log_events, unit="events", events=scale.log_events
    )
