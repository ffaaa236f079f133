"""PostgreSQL beside SQLite, in the same run, as ratios (a throwaway server is started).

- sequential commands: one Ledger, open / partial exit / close cycles, one at a time;
- 8 writer processes on one ledger, each running the same cycles (started together by a
  barrier; throughput = all commands / the slowest writer's time);
- the eventsourcing library's application on its PostgreSQL recorder doing the same cycles
  (one save per command; optional `bench` extra: skipped with a message without it);
- subscriber lag: commit to delivery through `Ledger.subscribe` in another Ledger (PostgreSQL:
  LISTEN/NOTIFY; SQLite: polling), p50 and p99;
- one write transaction: a one-event append to a known stream through the store alone
  (no Ledger, no group), p50 and p99, beside the same on SQLite (FULL); on PostgreSQL it is
  two round trips (tests/test_postgres_round_trips.py counts them);
- rebuild: a Ledger starting without a snapshot folds the whole log from PostgreSQL, beside a
  raw psycopg SELECT scan of the same rows (the scale's log: 1M events under BENCH_SCALE=full).

Run alone for the table: `python -m benchmarks.bench_postgres` (BENCH_SCALE as for the rest);
`python -m benchmarks.bench_postgres transactions 1000` runs the one-transaction case alone.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest

from benchmarks._data import EventMix, Scale, build_log, current_scale, take
from ledger.commands import AnyCommand, ClosePosition, OpenPosition, RecordPartialExit
from ledger.envelope import NewEvent
from ledger.events import PositionMarked, PositionOpened
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.factory import copy_log, is_url
from ledger.store.postgres import TABLE, PostgresEventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from tests.conftest import with_schema
from tests.pg_server import Server, running_server

GROUP = "postgres"
WRITERS = 8


def _settings(folder: Path, name: str) -> Settings:
    return Settings(
        positions_file=str(folder / f"positions-{name}.json"),
        max_concurrent_positions=1000,
        snapshot_every_events=10_000_000,
        snapshot_every_seconds=3600,
    )


def _cycle(prefix: str, i: int) -> list[AnyCommand]:
    position_id = f"{prefix}-{i}"
    return [
        OpenPosition(
            position_id=position_id,
            symbol=f"{prefix.upper()}{i}/USDT:USDT",
            side=Side.BUY,
            qty=Decimal(2),
            entry_price=Decimal(100),
            leverage=5,
        ),
        RecordPartialExit(position_id=position_id, qty=Decimal(1), price=Decimal(101)),
        ClosePosition(position_id=position_id, price=Decimal(99)),
    ]


async def _commands(location: str, folder: Path, prefix: str, cycles: int) -> float:
    """Seconds for `cycles` open / partial exit / close cycles, one command at a time."""
    settings = _settings(folder, f"{prefix}-{'pg' if is_url(location) else 'lite'}")
    async with Ledger(location, snapshot_path=settings.positions_file, settings=settings) as ledger:
        started = time.perf_counter()
        for i in range(cycles):
            for command in _cycle(prefix, i):
                await ledger.execute(command)
        return time.perf_counter() - started


def _writer(
    location: str, folder: str, name: str, cycles: int, barrier: Barrier, out: Queue[float]
) -> None:
    async def run() -> float:
        settings = _settings(Path(folder), f"{name}-{'pg' if is_url(location) else 'lite'}")
        snapshot = settings.positions_file
        async with Ledger(location, snapshot_path=snapshot, settings=settings) as ledger:
            barrier.wait()
            started = time.perf_counter()
            for i in range(cycles):
                for command in _cycle(name, i):
                    await ledger.execute(command)
            return time.perf_counter() - started

    out.put(anyio.run(run))


def _concurrent(location: str, folder: Path, cycles: int) -> float:
    """Seconds the slowest of WRITERS processes took for its cycles (started together)."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    out: Queue[float] = context.Queue()
    workers = [
        context.Process(target=_writer, args=(location, str(folder), f"w{n}", cycles, barrier, out))
        for n in range(WRITERS)
    ]
    for worker in workers:
        worker.start()
    try:
        return max(out.get(timeout=600) for _ in workers)
    finally:
        for worker in workers:
            worker.join(timeout=60)


async def _lag(location: str, folder: Path, count: int, poll: float) -> list[float]:
    """Seconds from an append's commit (its return) to delivery in another Ledger."""
    committed: dict[int, float] = {}
    lags: list[float] = []
    target = [0]  # the last seq to wait for, once the writer is done
    seen = [0]
    tag = "pg" if is_url(location) else "lite"
    mine, theirs = _settings(folder, f"lag-writer-{tag}"), _settings(folder, f"lag-reader-{tag}")
    async with (
        Ledger(location, snapshot_path=mine.positions_file, settings=mine) as writer,
        Ledger(location, snapshot_path=theirs.positions_file, settings=theirs) as reader,
    ):
        start = reader.last_seq

        async def follow() -> None:
            async for record in reader.subscribe(start, poll_interval=poll):
                arrived = time.perf_counter()
                while record.seq not in committed:  # delivered before the append returned
                    await anyio.sleep(0)
                lags.append(max(0.0, arrived - committed[record.seq]))
                seen[0] = record.seq
                if target[0] and record.seq >= target[0]:
                    return

        async with anyio.create_task_group() as group:
            group.start_soon(follow)
            for i in range(count):
                # the first command may record the rules too: every record of it counts
                records = await writer.execute(_cycle("lag", i)[0])
                now = time.perf_counter()
                for record in records:
                    committed[record.seq] = now
                await anyio.sleep(0.005)  # spaced: each delivery is measured on its own
            target[0] = max(committed)
            if seen[0] >= target[0]:
                group.cancel_scope.cancel()
    return lags


async def _transactions(location: str, count: int) -> list[float]:
    """Seconds per one-event append (one write transaction), to a stream the store knows."""
    store = PostgresEventStore(location) if is_url(location) else SQLiteEventStore(Path(location))
    await store.open()
    at = datetime.now(UTC)
    opened = PositionOpened(
        position_id="tx",
        symbol="TX/USDT:USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(100),
        leverage=5,
    )
    took: list[float] = []
    try:
        await store.append([NewEvent(stream="tx", event=opened, event_id="tx", occurred_at=at)])
        for i in range(count):
            mark = PositionMarked(position_id="tx", mark_price=Decimal(100 + i % 7))
            new = NewEvent(stream="tx", event=mark, event_id=f"tx-{i}", occurred_at=at)
            started = time.perf_counter()
            await store.append([new])
            took.append(time.perf_counter() - started)
    finally:
        await store.close()
    return took


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _eventsourcing(url: str, schema: str, cycles: int) -> float | None:
    """Seconds for the same cycles through the eventsourcing library's application on its
    PostgreSQL recorder (one save per command), or None when the library is not installed."""
    try:
        import psycopg_pool  # noqa: F401  (eventsourcing.postgres needs it)

        from benchmarks.eventsourcing_baseline import EsPositions
    except ImportError:
        return None
    info = psycopg.conninfo.conninfo_to_dict(url)
    app = EsPositions(
        env={
            "PERSISTENCE_MODULE": "eventsourcing.postgres",
            "POSTGRES_DBNAME": str(info.get("dbname", "postgres")),
            "POSTGRES_HOST": str(info.get("host", "127.0.0.1")),
            "POSTGRES_PORT": str(info.get("port", "5432")),
            "POSTGRES_USER": str(info.get("user", "postgres")),
            "POSTGRES_PASSWORD": str(info.get("password", "")),
            "POSTGRES_SCHEMA": schema,
        }
    )
    try:
        started = time.perf_counter()
        for i in range(cycles):
            position = app.open_position(f"S{i}/USDT:USDT", Decimal(2), Decimal(100))
            app.partial_exit(position, Decimal(1), Decimal(101))
            app.close_position(position, Decimal(99), "bench")
        return time.perf_counter() - started
    finally:
        app.close()


async def _rebuild(url: str, folder: Path) -> float:
    settings = Settings(positions_file=str(folder / "rebuild-positions.json"))
    started = time.perf_counter()
    async with Ledger(url, settings=settings, snapshot_path=folder / "absent.json") as ledger:
        assert ledger.rebuilt_on_start
        return time.perf_counter() - started


def _raw_scan(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    rows = 0
    with psycopg.connect(url) as conn, conn.cursor(name="scan") as cursor:
        cursor.itersize = 5000
        cursor.execute(f"SELECT * FROM {TABLE} ORDER BY seq")
        for _ in cursor:
            rows += 1
    return time.perf_counter() - started, rows


async def _load(url: str, sqlite_log: Path) -> None:
    source = SQLiteEventStore(sqlite_log, read_only=True)
    target = PostgresEventStore(url)
    await source.open()
    await target.open()
    try:
        await copy_log(source, target)
    finally:
        await source.close()
        await target.close()


def _fresh_schema(base_url: str, name: str) -> str:
    with psycopg.connect(base_url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")
        conn.execute(f"CREATE SCHEMA {name}")
    return with_schema(base_url, name)


def measure(server: Server, scale: Scale, folder: Path) -> dict[str, Any]:
    """Every figure of this module, as a dict (ratios are PostgreSQL / SQLite)."""
    base = server.url()
    cycles = max(2, scale.commands // 3)
    per_writer = max(2, scale.commands // (3 * WRITERS) * 2)
    figures: dict[str, Any] = {"scale": scale.name, "commands": cycles * 3}
    # 1. sequential commands
    pg = anyio.run(_commands, _fresh_schema(base, "seq_bench"), folder, "s", cycles)
    pg_sequential = pg
    lite = anyio.run(_commands, str(folder / "seq.db"), folder, "s", cycles)
    figures["sequential"] = {
        "postgres_cmd_s": cycles * 3 / pg,
        "sqlite_cmd_s": cycles * 3 / lite,
        "ratio": lite / pg,
    }
    # 2. 8 writer processes
    total = WRITERS * per_writer * 3
    pg = _concurrent(_fresh_schema(base, "conc_bench"), folder, per_writer)
    lite = _concurrent(str(folder / "conc.db"), folder, per_writer)
    figures["concurrent_8_processes"] = {
        "commands": total,
        "postgres_cmd_s": total / pg,
        "sqlite_cmd_s": total / lite,
        "ratio": lite / pg,
    }
    # 3. the same cycles through the eventsourcing library on PostgreSQL
    _fresh_schema(base, "es_bench")
    es = _eventsourcing(base, "es_bench", cycles)
    if es is None:
        figures["eventsourcing"] = (
            "skipped: the eventsourcing package (or psycopg-pool) is not installed"
        )
    else:
        figures["eventsourcing"] = {
            "postgres_cmd_s": cycles * 3 / es,
            # ours decides each command against the book and chains it; theirs loads the
            # aggregate and saves it, one transaction per command, as a new user writes it
            "ledger_over_eventsourcing": es / pg_sequential,
        }
    # 4. subscriber lag
    count = max(20, min(200, scale.commands))
    pg_lag = anyio.run(_lag, _fresh_schema(base, "lag_bench"), folder, count, 1.0)
    lite_lag = anyio.run(_lag, str(folder / "lag.db"), folder, count, 0.25)
    figures["subscriber_lag_ms"] = {
        "postgres_notify_p50": 1000 * statistics.median(pg_lag),
        "postgres_notify_p99": 1000 * _percentile(pg_lag, 0.99),
        "sqlite_poll_0.25s_p50": 1000 * statistics.median(lite_lag),
        "sqlite_poll_0.25s_p99": 1000 * _percentile(lite_lag, 0.99),
    }
    # 5. one write transaction, through the store alone
    count = max(100, min(1000, scale.commands * 5))
    pg_tx = anyio.run(_transactions, _fresh_schema(base, "tx_bench"), count)
    lite_tx = anyio.run(_transactions, str(folder / "tx.db"), count)
    figures["transaction_ms"] = {
        "transactions": count,
        "postgres_p50": 1000 * statistics.median(pg_tx),
        "postgres_p99": 1000 * _percentile(pg_tx, 0.99),
        "sqlite_p50": 1000 * statistics.median(lite_tx),
        "sqlite_p99": 1000 * _percentile(lite_tx, 0.99),
        "ratio_p50": statistics.median(pg_tx) / statistics.median(lite_tx),
    }
    # 6. rebuild from PostgreSQL vs a raw scan
    log = folder / f"log-{scale.log_events}.db"
    if not log.exists():
        anyio.run(build_log, log, take(EventMix(seed=20240101), scale.log_events))
    url = _fresh_schema(base, "rebuild_bench")
    anyio.run(_load, url, log)
    raw, rows = _raw_scan(url)
    fold = anyio.run(_rebuild, url, folder)
    figures["rebuild"] = {
        "events": rows,
        "fold_s": fold,
        "raw_select_s": raw,
        "ratio_fold_to_raw": fold / raw,
    }
    return figures


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    with running_server() as started:
        yield started


@pytest.mark.benchmark(group=GROUP)
def test_postgres_beside_sqlite(
    benchmark: Any, server: Server, scale: Scale, tmp_path: Path
) -> None:
    figures = benchmark.pedantic(lambda: measure(server, scale, tmp_path), rounds=1)
    benchmark.extra_info.update(figures)
    assert figures["rebuild"]["events"] == scale.log_events
    print(json.dumps(figures, indent=2))


def transactions_only(count: int) -> None:
    """`python -m benchmarks.bench_postgres transactions [N]`: the one-transaction case alone,
    twice, on a fresh server (p50 / p99 in ms)."""
    with running_server() as server, tempfile.TemporaryDirectory() as folder:
        for run in range(2):
            pg = anyio.run(_transactions, _fresh_schema(server.url(), f"tx{run}"), count)
            lite = anyio.run(_transactions, str(Path(folder) / f"tx{run}.db"), count)
            print(
                f"{count} transactions: PostgreSQL p50 {1000 * statistics.median(pg):.2f} "
                f"p99 {1000 * _percentile(pg, 0.99):.2f} ms; SQLite p50 "
                f"{1000 * statistics.median(lite):.2f} p99 {1000 * _percentile(lite, 0.99):.2f} ms"
            )


def main() -> None:
    if sys.argv[1:2] == ["transactions"]:
        transactions_only(int(sys.argv[2]) if len(sys.argv) > 2 else 1000)
        return
    scale = current_scale()
    with running_server() as server, tempfile.TemporaryDirectory() as folder:
        figures = measure(server, scale, Path(folder))
    json.dump(figures, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    main()
