"""Append cost beside raw sqlite3 writing the same bytes, and group commit in the Ledger.

append-single: `SQLiteEventStore.append` of one event per call (one commit each) vs stdlib
sqlite3 inserting the same precomputed row with BEGIN IMMEDIATE ... COMMIT, same pragmas.
append-batch: 1,000 events per call vs one executemany of the same rows in one transaction
(target: at least 75% of raw's throughput), beside the staging alone (what the store adds to
raw's work: encoding, chain hashes, records; no database), and 500 Ledger commands issued at
once by 500 tasks (they share commits) vs the same 500 one after another.

The store is async and the benchmark's thread reaches it through an anyio portal: a hand-off to
the loop's thread and back, about 0.3 ms here, that a bot calling from its loop never pays.
Raw sqlite3's rounds are run through the same portal, on the loop's thread: both cases pay the
same hand-off once a round and nothing else differs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

import anyio
import pytest
from anyio.from_thread import BlockingPortal

from benchmarks._data import (
    INSERT_SQL,
    Benchmark,
    Compare,
    EventMix,
    Scale,
    TickClock,
    chunks,
    create_empty_log,
    describe,
    raw_connection,
    staged_rows,
    stager,
    take,
)
from benchmarks.targets import HARNESSES, concurrent_case, harness_alone_case
from ledger.envelope import NewEvent
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.base import Head
from ledger.store.sqlite import SQLiteEventStore, Synchronous

SYNCS: tuple[Synchronous, ...] = ("FULL", "NORMAL")
T = TypeVar("T")


def _time_rounds(
    benchmark: Benchmark,
    one_round: Callable[[list[T]], object],
    batches: Iterator[list[T]],
    rounds: int,
) -> None:
    """Time `rounds` calls of one_round, each on the next batch (handed over untimed)."""

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        return (next(batches),), {}

    benchmark.pedantic(one_round, setup=setup, rounds=rounds)


def _store_case(
    benchmark: Benchmark,
    portal: BlockingPortal,
    path: Path,
    synchronous: Synchronous,
    events: list[NewEvent],
    *,
    per_call: int,
    per_round: int,
    rounds: int,
) -> int:
    """Time `rounds` rounds of `per_round` events appended `per_call` at a time; the count."""
    store = SQLiteEventStore(path, synchronous=synchronous)
    portal.call(store.open)

    async def one_round(batch: list[NewEvent]) -> None:
        for call in chunks(batch, per_call):
            await store.append(call)

    try:
        _time_rounds(
            benchmark, lambda b: portal.call(one_round, b), chunks(events, per_round), rounds
        )
        head = portal.call(store.head)
    finally:
        portal.call(store.close)
    return head.seq


def _raw_case(
    benchmark: Benchmark,
    portal: BlockingPortal,
    path: Path,
    synchronous: Synchronous,
    events: list[NewEvent],
    *,
    per_call: int,
    per_round: int,
    rounds: int,
) -> int:
    """The same rows, precomputed, inserted with stdlib sqlite3: one transaction per call, on
    the loop's thread through the portal, as the store's rounds are."""
    portal.call(create_empty_log, path)
    rows = staged_rows(events, per_commit=per_call)
    conn = portal.call(raw_connection, path, synchronous)

    def one_round(batch: list[tuple[object, ...]]) -> None:
        for call in chunks(batch, per_call):
            conn.execute("BEGIN IMMEDIATE")
            if len(call) == 1:
                conn.execute(INSERT_SQL, call[0])
            else:
                conn.executemany(INSERT_SQL, call)
            conn.execute("COMMIT")

    def count() -> int:
        return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    try:
        _time_rounds(
            benchmark, lambda b: portal.call(one_round, b), chunks(rows, per_round), rounds
        )
        return portal.call(count)
    finally:
        portal.call(conn.close)


def _append_case(
    benchmark: Benchmark,
    portal: BlockingPortal,
    tmp_path: Path,
    synchronous: Synchronous,
    *,
    raw: bool,
    per_call: int,
    per_round: int,
    rounds: int,
) -> None:
    """Time one case on the same seeded events, through the store or raw sqlite3; check that
    whole rounds were stored."""
    events = take(EventMix(seed=7), per_round * rounds)
    case, name = (_raw_case, "raw.db") if raw else (_store_case, "ours.db")
    stored = case(
        benchmark,
        portal,
        tmp_path / name,
        synchronous,
        events,
        per_call=per_call,
        per_round=per_round,
        rounds=rounds,
    )
    assert stored % per_round == 0 and stored > 0


# -- one event per commit ---------------------------------------------------------------------


@pytest.mark.benchmark(group="append-single")
@pytest.mark.parametrize("synchronous", SYNCS)
def test_append_single_store(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    tmp_path: Path,
    synchronous: Synchronous,
) -> None:
    n, rounds = scale.single_ops, scale.single_rounds
    _append_case(
        benchmark, portal, tmp_path, synchronous, raw=False, per_call=1, per_round=n, rounds=rounds
    )
    describe(
        benchmark,
        case=f"store.append x1, {synchronous}",
        per_round=n,
        unit="events",
        compare=[
            Compare(
                f"raw sqlite3 x1, {synchronous}",
                max_ratio=1.3 if synchronous == "FULL" else 5.0,
                target="within 1.3x of raw" if synchronous == "FULL" else ">= 20% of raw",
                target_id=f"append-single-{synchronous.lower()}",
            )
        ],
        durable=f"same rows, indexes, WAL, synchronous={synchronous}, one commit per event",
    )


@pytest.mark.benchmark(group="append-single")
@pytest.mark.parametrize("synchronous", SYNCS)
def test_append_single_raw(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    tmp_path: Path,
    synchronous: Synchronous,
) -> None:
    n, rounds = scale.single_ops, scale.single_rounds
    _append_case(
        benchmark, portal, tmp_path, synchronous, raw=True, per_call=1, per_round=n, rounds=rounds
    )
    describe(benchmark, case=f"raw sqlite3 x1, {synchronous}", per_round=n, unit="events")


# -- batches --------------------------------------------------------------------------------


@pytest.mark.benchmark(group="append-batch")
@pytest.mark.parametrize("synchronous", SYNCS)
def test_append_batch_store(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    tmp_path: Path,
    synchronous: Synchronous,
) -> None:
    n, rounds = scale.batch_size, scale.batch_rounds
    _append_case(
        benchmark, portal, tmp_path, synchronous, raw=False, per_call=n, per_round=n, rounds=rounds
    )
    describe(
        benchmark,
        case=f"store.append x{n:,}, {synchronous}",
        per_round=n,
        unit="events",
        compare=[
            Compare(
                f"raw executemany x{n:,}, {synchronous}",
                max_ratio=1 / 0.75,
                target=">= 75% of raw throughput",
                target_id=f"append-batch-{synchronous.lower()}",
            )
        ],
        durable=f"same rows, indexes, WAL, synchronous={synchronous}, one commit per call",
    )


@pytest.mark.benchmark(group="append-batch")
@pytest.mark.parametrize("synchronous", SYNCS)
def test_append_batch_raw(
    benchmark: Benchmark,
    portal: BlockingPortal,
    scale: Scale,
    tmp_path: Path,
    synchronous: Synchronous,
) -> None:
    n, rounds = scale.batch_size, scale.batch_rounds
    _append_case(
        benchmark, portal, tmp_path, synchronous, raw=True, per_call=n, per_round=n, rounds=rounds
    )
    describe(benchmark, case=f"raw executemany x{n:,}, {synchronous}", per_round=n, unit="events")


@pytest.mark.benchmark(group="append-batch")
def test_append_batch_staging(benchmark: Benchmark, scale: Scale) -> None:
    """What the store does beyond raw's inserts, alone: each round stages one batch (seq,
    version, body, chain hash, row, record) continuing the chain of the one before."""
    n, rounds = scale.batch_size, scale.batch_rounds
    head, clock = Head(), TickClock()

    def one_round(batch: list[NewEvent]) -> None:
        tx = stager(head, clock())
        tx.stage(batch)
        tx.head.publish(head)

    _time_rounds(benchmark, one_round, chunks(take(EventMix(seed=7), n * rounds), n), rounds)
    assert head.seq == n * rounds
    describe(
        benchmark,
        case=f"staging alone x{n:,} (encode, chain hash, records; no database)",
        per_round=n,
        unit="events",
        compare=[Compare(f"raw executemany x{n:,}, NORMAL")],
    )


# -- Ledger commands: group commit ------------------------------------------------------------

_OPEN = 5
# Snapshots are kept out of these rounds: the question is what sharing commits buys.
_QUIET = Settings(snapshot_every_events=10**9, snapshot_every_seconds=10**6)


async def _open_positions(ledger: Ledger) -> list[str]:
    symbols = ["BTC/USDT:USDT", "ETH/USDT:USDT", "SOL/USDT:USDT", "XRP/USDT:USDT", "BNB/USDT:USDT"]
    ids = []
    for symbol in symbols[:_OPEN]:
        position = await ledger.open_position(
            symbol, "buy", entry_price=100, notional=500, leverage=5
        )
        ids.append(position.position_id)
    return ids


def _prices(n: int) -> list[Decimal]:
    return [Decimal(100) + Decimal(i % 997) / 100 for i in range(n)]


# The concurrent round's tasks are started the way a bot starts them. The target is read on
# asyncio's own TaskGroup: the bot this ledger serves is an asyncio program (ccxt's async API
# is asyncio), and asyncio's task costs about 5 µs here. The same round started by an anyio
# task group is measured beside it: anyio 4.12 and later give each task a cancel scope and an
# event, about 20 µs a task here, 2.5 times anyio 4.11's, which `test_task_group_alone` prints.
@pytest.mark.benchmark(group="append-batch")
@pytest.mark.parametrize("mode", ["concurrent-asyncio", "concurrent-anyio", "sequential"])
def test_ledger_commands(
    benchmark: Benchmark, portal: BlockingPortal, scale: Scale, tmp_path: Path, mode: str
) -> None:
    n = scale.commands
    prices = _prices(n)
    with portal.wrap_async_context_manager(Ledger(tmp_path / "ledger.db", settings=_QUIET)) as led:
        ids = portal.call(_open_positions, led)

        async def concurrent_asyncio() -> None:
            async with asyncio.TaskGroup() as tasks:
                for i, price in enumerate(prices):
                    tasks.create_task(led.mark(ids[i % _OPEN], price))

        async def concurrent_anyio() -> None:
            async with anyio.create_task_group() as tasks:
                for i, price in enumerate(prices):
                    tasks.start_soon(led.mark, ids[i % _OPEN], price)

        async def sequential() -> None:
            for i, price in enumerate(prices):
                await led.mark(ids[i % _OPEN], price)

        rounds = {
            "concurrent-asyncio": concurrent_asyncio,
            "concurrent-anyio": concurrent_anyio,
            "sequential": sequential,
        }
        one_round = rounds[mode]
        benchmark.pedantic(lambda: portal.call(one_round), rounds=scale.command_rounds)
        assert (led.last_seq - _OPEN) % n == 0 and led.last_seq > _OPEN
    sequential_case = f"Ledger: {n} sequential commands"
    if mode == "sequential":
        case, compare = sequential_case, []
    elif mode == "concurrent-asyncio":
        case = concurrent_case(n, "asyncio")
        compare = [
            Compare(
                sequential_case,
                max_ratio=0.1,
                target=">= 10x faster",
                target_id="concurrent-vs-sequential",
            )
        ]
    else:
        case = concurrent_case(n, "anyio")
        compare = [Compare(sequential_case, max_ratio=0.1, target=">= 10x faster (anyio's tasks)")]
    describe(benchmark, case=case, per_round=n, unit="commands", compare=compare)


async def _nothing() -> None:
    return None


@pytest.mark.benchmark(group="append-batch")
@pytest.mark.parametrize("harness", list(HARNESSES))
def test_task_group_alone(
    benchmark: Benchmark, portal: BlockingPortal, scale: Scale, harness: str
) -> None:
    """A concurrent round's harness without the ledger: its task group starting as many tasks,
    each returning at once (what the round pays before any command runs)."""
    n = scale.commands

    async def asyncio_round() -> None:
        async with asyncio.TaskGroup() as tasks:
            for _ in range(n):
                tasks.create_task(_nothing())

    async def anyio_round() -> None:
        async with anyio.create_task_group() as tasks:
            for _ in range(n):
                tasks.start_soon(_nothing)

    one_round = asyncio_round if harness == "asyncio" else anyio_round
    benchmark.pedantic(lambda: portal.call(one_round), rounds=scale.command_rounds)
    describe(
        benchmark,
        case=harness_alone_case(n, harness),
        per_round=n,
        unit="tasks",
        compare=[Compare(concurrent_case(n, harness))],
        anyio=version("anyio"),
    )
