"""Audit reads at scale: each command in a fresh process, beside a raw sqlite3 scan in one.

The log is a copy of the scale's (100k events by default, 1M with BENCH_SCALE=full) that
`ledger verify` has checked (it records the verified point and writes checkpoints every 100k
events beside the log), and that then grew by the scale's tail (1,000 events) as a bot would
keep appending. So every read starts from a checkpoint the log vouches for, folds the tail (or,
for a replay in the middle, at most 100k events past a checkpoint), and checks the chain from
the verified point to the head. Target (issue 9): each within 1.5x the time a fresh Python
process takes to scan every column of every row of the events table.

Beside them, in the same run: the full rebuild in a fresh process (`fold` of every event, what
each of these commands cost before) and `ledger verify`, which stays a full check.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import anyio
import pytest

from benchmarks._data import (
    EPOCH,
    SELECT_SQL,
    Benchmark,
    Compare,
    EventMix,
    Scale,
    TickClock,
    chunks,
    describe,
    take,
)
from ledger.store.sqlite import SQLiteEventStore

GROUP = "audit-reads"
_RAW = "raw sqlite3 scan, fresh process"
_ROOT = Path(__file__).resolve().parents[1]


class AuditLog:
    """The verified, grown log and the points the commands ask about."""

    def __init__(self, path: Path, events: int, middle: int, middle_time: str, position: str):
        self.path = path
        self.events = events
        self.middle = middle
        self.middle_time = middle_time
        self.position = position


def _ledger(*args: str) -> list[str]:
    return [sys.executable, "-m", "ledger.cli", *args]


def _run(command: list[str]) -> None:
    done = subprocess.run(command, cwd=_ROOT, capture_output=True, text=True)
    if done.returncode not in (0, 1):  # verify exits 1 on the mix's rule findings
        raise AssertionError(f"{command} failed: {done.stderr[-2000:]}")


async def _grow(path: Path, scale: Scale, middle: int) -> AuditLog:
    """Append the tail as a bot would; the points the commands ask about."""
    store = SQLiteEventStore(path, synchronous="NORMAL", clock=TickClock())
    await store.open()
    try:
        head = (await store.end()).seq
        start = EPOCH + timedelta(seconds=15 * (head + 10))  # after the log's own events
        for chunk in chunks(take(EventMix(seed=99, start=start), scale.tail_events), 1_000):
            await store.append(chunk)
        end = (await store.end()).seq
        at_middle = (await store.read(after_seq=middle - 1, to_seq=middle))[0].occurred_at
        last = (await store.read(after_seq=end - 1))[0]
        return AuditLog(path, end, middle, at_middle.isoformat(), last.stream)
    finally:
        await store.close()


@pytest.fixture(scope="module")
def audit_log(log_db: Path, scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> AuditLog:
    folder = tmp_path_factory.mktemp("audit")
    path = folder / "ledger.db"
    shutil.copyfile(log_db, path)
    _run(_ledger("verify", "--db", str(path)))  # the verified point, and the checkpoints
    middle = scale.log_events // 2 + 12_345 % max(scale.log_events // 4, 1)
    result: AuditLog = anyio.run(_grow, path, scale, middle)
    return result


def _case(
    benchmark: Benchmark, scale: Scale, audit_log: AuditLog, case: str, command: list[str]
) -> None:
    benchmark.pedantic(_run, args=(command,), rounds=scale.audit_rounds)
    describe(
        benchmark,
        case=case,
        per_round=1,
        unit="runs",
        compare=[Compare(_RAW, max_ratio=1.5, target="<= 1.5x raw scan")],
        events=audit_log.events,
    )


@pytest.mark.benchmark(group=GROUP)
def test_audit_raw_scan(benchmark: Benchmark, scale: Scale, audit_log: AuditLog) -> None:
    script = (
        "import sqlite3, sys\n"
        "conn = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True)\n"
        f"cursor = conn.execute({SELECT_SQL!r})\n"
        "while cursor.fetchmany(5000):\n"
        "    pass\n"
    )
    benchmark.pedantic(
        _run, args=([sys.executable, "-c", script, str(audit_log.path)],), rounds=scale.audit_rounds
    )
    describe(benchmark, case=_RAW, per_round=1, unit="runs", events=audit_log.events)


@pytest.mark.benchmark(group=GROUP)
@pytest.mark.parametrize(
    "name",
    ["stats", "positions --open", "history", "watch --once", "replay --seq", "replay --as-of"],
)
def test_audit_read(benchmark: Benchmark, scale: Scale, audit_log: AuditLog, name: str) -> None:
    db = ["--db", str(audit_log.path)]
    commands = {
        "stats": ("ledger stats", _ledger("stats", *db)),
        "positions --open": ("ledger positions --open", _ledger("positions", "--open", *db)),
        "history": (
            "ledger history (a position of the tail)",
            _ledger("history", audit_log.position, *db),
        ),
        "watch --once": ("ledger watch --once", _ledger("watch", "--once", *db)),
        "replay --seq": (
            f"ledger replay --seq {audit_log.middle:,}",
            _ledger("replay", "--seq", str(audit_log.middle), "--limit", "20", *db),
        ),
        "replay --as-of": (
            "ledger replay --as-of (the middle's time)",
            _ledger("replay", "--as-of", audit_log.middle_time, "--limit", "20", *db),
        ),
    }
    case, command = commands[name]
    _case(benchmark, scale, audit_log, case, command)


@pytest.mark.benchmark(group=GROUP)
def test_audit_full_rebuild(benchmark: Benchmark, scale: Scale, audit_log: AuditLog) -> None:
    command = [sys.executable, "-m", "benchmarks._data", "rebuild-memory", str(audit_log.path)]
    benchmark.pedantic(_run, args=(command,), rounds=scale.audit_rounds)
    describe(
        benchmark,
        case="full rebuild (every event folded), fresh process",
        per_round=1,
        unit="runs",
        compare=[Compare(_RAW)],
        events=audit_log.events,
    )


@pytest.mark.benchmark(group=GROUP)
def test_audit_verify(benchmark: Benchmark, audit_log: AuditLog) -> None:
    benchmark.pedantic(_run, args=(_ledger("verify", "--db", str(audit_log.path)),), rounds=1)
    describe(
        benchmark,
        case="ledger verify (the full check, one round)",
        per_round=1,
        unit="runs",
        compare=[Compare(_RAW)],
        events=audit_log.events,
    )
