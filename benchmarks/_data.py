"""Deterministic benchmark data: scales, seeded event streams, staged rows and cached logs.

Everything here is seeded, so two runs at one scale build byte-identical logs. The logs are
staged straight through `SQLiteEventStore.append` in 10k-event batches with synchronous=NORMAL
(fast to build; the benchmarks that time appends open their own stores).

`python -m benchmarks._data rebuild-memory DB [--tracemalloc]` folds a log into a Book in a
fresh process and prints its memory high-water mark as JSON (used by bench_rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sqlite3
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Protocol, TypeVar

import anyio

from ledger.envelope import NewEvent, Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.rebuild import fold_log
from ledger.store.base import (
    EventStore,
    Head,
    StagedRow,
    StoreTransaction,
)
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.wal import presize_wal, wal_target_bytes
from ledger.values import Side, Source
from projections.book import Book

T = TypeVar("T")


class Benchmark(Protocol):
    """The part of pytest-benchmark's `benchmark` fixture used here (its methods are untyped)."""

    extra_info: dict[str, object]

    def pedantic(
        self,
        target: Callable[..., T],
        args: tuple[object, ...] = (),
        kwargs: Mapping[str, object] | None = None,
        setup: Callable[[], object] | None = None,
        teardown: Callable[..., object] | None = None,
        rounds: int = 1,
        warmup_rounds: int = 0,
        iterations: int = 1,
    ) -> T: ...


@dataclass(frozen=True)
class Compare:
    """Set this case beside another of its group; max_ratio is the target on time ratio."""

    to: str
    max_ratio: float | None = None
    target: str = ""
    target_id: str = ""  # the id of the target in benchmarks.targets, if any


def describe(
    benchmark: Benchmark,
    *,
    case: str,
    per_round: int,
    unit: str,
    compare: Sequence[Compare] = (),
    **extra: object,
) -> None:
    """Label a case for benchmarks.report: its name, what one round does, its baselines."""
    benchmark.extra_info.update(
        case=case,
        per_round=per_round,
        unit=unit,
        compare=[
            {"to": c.to, "max_ratio": c.max_ratio, "target": c.target, "target_id": c.target_id}
            for c in compare
        ],
        scale=current_scale().name,
        # the machine is shared: its load when the case ran, so noisy figures can be read as such
        load_average=round(os.getloadavg()[0], 2),
        **extra,
    )


# -- scales ---------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Scale:
    """Sizes and round counts of one benchmark run (BENCH_SCALE=smoke|default|full)."""

    name: str
    log_events: int  # the log folded by rebuild and started by startup
    tail_events: int  # events after the snapshot in the startup benchmark
    single_ops: int  # 1-event appends per round
    single_rounds: int
    batch_size: int  # events per append in append-batch
    batch_rounds: int
    commands: int  # Ledger commands per round, concurrent vs sequential
    command_rounds: int
    histories: tuple[int, int]  # closed positions already in history (create-close)
    create_close_rounds: int
    seed_rounds: int  # the seed's rewrite is slow at 10k: fewer rounds
    rebuild_rounds: int
    startup_rounds: int
    cold_events: int = 4_500  # the cold start's log (issue 9: 4,500 events, no positions.json)
    cold_rounds: int = 20
    audit_rounds: int = 5  # fresh-process audit commands and their raw-scan baseline


_DEFAULT = Scale(
    name="default",
    log_events=100_000,
    tail_events=1_000,
    single_ops=50,
    single_rounds=20,
    batch_size=1_000,
    batch_rounds=20,
    commands=500,
    command_rounds=10,
    histories=(1_000, 10_000),
    create_close_rounds=200,
    seed_rounds=5,
    rebuild_rounds=5,
    startup_rounds=5,
)

SCALES: dict[str, Scale] = {
    "smoke": Scale(
        name="smoke",
        log_events=2_000,
        tail_events=100,
        single_ops=5,
        single_rounds=1,
        batch_size=100,
        batch_rounds=1,
        commands=20,
        command_rounds=1,
        histories=(10, 100),
        create_close_rounds=1,
        seed_rounds=1,
        rebuild_rounds=1,
        startup_rounds=1,
        cold_events=500,
        cold_rounds=1,
        audit_rounds=1,
    ),
    "default": _DEFAULT,
    # the default sizes with a 1M-event log, folded and started fewer times
    "full": replace(
        _DEFAULT,
        name="full",
        log_events=1_000_000,
        rebuild_rounds=3,
        startup_rounds=3,
        audit_rounds=3,
    ),
}


def current_scale() -> Scale:
    """The scale BENCH_SCALE names (default: "default"); raises ValueError for another name."""
    name = os.environ.get("BENCH_SCALE", "default").strip().lower() or "default"
    try:
        return SCALES[name]
    except KeyError:
        raise ValueError(f"BENCH_SCALE={name!r}: expected one of {', '.join(SCALES)}") from None


# -- seeded events --------------------------------------------------------------------------

EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
_PRICES = {
    "BTC/USDT:USDT": 42_000.0,
    "ETH/USDT:USDT": 2_300.0,
    "SOL/USDT:USDT": 100.0,
    "XRP/USDT:USDT": 0.6,
    "DOGE/USDT:USDT": 0.09,
    "AVAX/USDT:USDT": 35.0,
    "LINK/USDT:USDT": 15.0,
    "ADA/USDT:USDT": 0.5,
    "BNB/USDT:USDT": 310.0,
    "LTC/USDT:USDT": 70.0,
    "DOT/USDT:USDT": 7.0,
    "ARB/USDT:USDT": 1.6,
}
_FEE_RATE = 0.00055
_MONEY = Decimal("0.00000001")


class TickClock:
    """A deterministic clock: each call is `step` later than the one before."""

    def __init__(self, start: datetime = EPOCH, step: timedelta = timedelta(seconds=1)) -> None:
        self._now = start
        self._step = step

    def __call__(self) -> datetime:
        self._now += self._step
        return self._now


@dataclass
class _Open:
    position_id: str
    symbol: str
    side: Side
    qty: float
    entry: float
    price: float
    exits: int = 0


def _price(value: float) -> Decimal:
    return Decimal(f"{value:.6g}")


def _money(value: float) -> Decimal:
    return Decimal(f"{value:.8f}")


def _qty(value: float) -> Decimal:
    return Decimal(f"{value:.6g}")


def _pnl(pos: _Open, qty: float, price: float) -> float:
    move = price - pos.entry if pos.side is Side.BUY else pos.entry - price
    return qty * move


class EventMix:
    """A seeded stream of realistic, rule-abiding events.

    Up to `max_open` positions are open at once (the ledger's default limit is 5); each one
    gets on average `mean_events` events: mostly marks (half with the exchange's figures),
    then partial exits, funding, the odd size increase, and a close. Balance observations
    are interleaved. With `positions=N` exactly N positions are opened and every one is
    closed before the stream ends; without it the stream never ends (use `take`).
    """

    def __init__(
        self,
        seed: int,
        *,
        mean_events: int = 40,
        max_open: int = 5,
        positions: int | None = None,
        start: datetime = EPOCH,
        step: timedelta = timedelta(seconds=15),
    ) -> None:
        self._rng = random.Random(seed)
        self._close_p = 1.0 / mean_events
        self._max_open = max_open
        self._positions_left = positions
        self._time = start
        self._step = step
        self._prices = dict(_PRICES)
        self._open: list[_Open] = []

    def __iter__(self) -> Iterator[NewEvent]:
        rng = self._rng
        while True:
            event = self._next_event(rng)
            if event is None:
                return
            self._time += self._step
            yield NewEvent(
                stream=stream_of(event),
                event=event,
                event_id=f"{rng.getrandbits(128):032x}",
                occurred_at=self._time,
            )

    def _next_event(self, rng: random.Random) -> AnyEvent | None:
        left = self._positions_left
        can_open = left is None or left > 0
        if not self._open and not can_open:
            return None
        if rng.random() < 0.03:
            total = 10_000 + rng.random() * 500
            return BalanceObserved(total=_money(total), available=_money(total * 0.7))
        if can_open and len(self._open) < self._max_open and rng.random() < 0.3:
            return self._opened(rng)
        if not self._open:
            return self._opened(rng)
        pos = rng.choice(self._open)
        pos.price *= 1 + rng.gauss(0, 0.004)
        roll = rng.random()
        if roll < self._close_p:
            return self._closed(pos)
        if roll < self._close_p + 0.03 and pos.exits < 2:
            return self._partly_exited(pos)
        if roll < self._close_p + 0.06:
            amount = (rng.random() - 0.5) * pos.qty * pos.price * 0.0002
            return FundingRecorded(
                position_id=pos.position_id,
                amount=_money(amount),
                execution_id=f"{rng.getrandbits(64):016x}",
            )
        if roll < self._close_p + 0.07:
            return self._increased(pos, rng)
        if rng.random() < 0.5:
            return PositionMarked(position_id=pos.position_id, mark_price=_price(pos.price))
        notional = pos.qty * pos.entry
        return PositionMarked(
            position_id=pos.position_id,
            mark_price=_price(pos.price),
            unrealized_pnl=_money(_pnl(pos, pos.qty, pos.price)),
            contracts=_qty(pos.qty),
            initial_margin=_money(notional / 5),
            source=Source.EXCHANGE,
        )

    def _opened(self, rng: random.Random) -> PositionOpened:
        if self._positions_left is not None:
            self._positions_left -= 1
        symbol = rng.choice(list(self._prices))
        self._prices[symbol] *= 1 + rng.gauss(0, 0.01)
        entry = float(_price(self._prices[symbol]))
        qty = float(_qty(rng.uniform(100, 1_000) / entry))
        side = Side.BUY if rng.random() < 0.55 else Side.SELL
        pos = _Open(f"pos_{rng.getrandbits(48):012x}", symbol, side, qty, entry, entry)
        self._open.append(pos)
        return PositionOpened(
            position_id=pos.position_id,
            symbol=symbol,
            side=side,
            qty=_qty(qty),
            entry_price=_price(entry),
            leverage=rng.choice((3, 5, 5, 10)),
            fee=_money(qty * entry * _FEE_RATE),
            confidence=Decimal(f"0.{rng.randint(55, 95)}"),
            open_reason=f"ML {side.value.upper()} {rng.randint(55, 95)}% | TF[15m 30m 1h]",
            atr=_price(entry * 0.02),
            adx=Decimal(f"{rng.uniform(15, 45):.1f}"),
            volatility=Decimal(f"{rng.uniform(0.01, 0.05):.4f}"),
        )

    def _partly_exited(self, pos: _Open) -> PartialExitRecorded:
        qty = float(_qty(pos.qty * 0.3))
        price = float(_price(pos.price))
        fee = qty * price * _FEE_RATE
        pos.qty = float(_qty(pos.qty - qty))
        pos.exits += 1
        return PartialExitRecorded(
            position_id=pos.position_id,
            qty=_qty(qty),
            price=_price(price),
            realized_pnl=_money(_pnl(pos, qty, price) - fee),
            fee=_money(fee),
            reason=f"partial_exit_{50 * pos.exits}_roe",
            rule="roe_ladder",
        )

    def _increased(self, pos: _Open, rng: random.Random) -> PositionIncreased:
        added = float(_qty(pos.qty * rng.uniform(0.1, 0.5)))
        price = float(_price(pos.price))
        new_entry = float(_price((pos.qty * pos.entry + added * price) / (pos.qty + added)))
        pos.qty = float(_qty(pos.qty + added))
        pos.entry = new_entry
        return PositionIncreased(
            position_id=pos.position_id,
            qty=_qty(added),
            price=_price(price),
            new_entry_price=_price(new_entry),
            fee=_money(added * price * _FEE_RATE),
        )

    def _closed(self, pos: _Open) -> PositionClosed:
        self._open.remove(pos)
        price = float(_price(pos.price))
        fee = pos.qty * price * _FEE_RATE
        return PositionClosed(
            position_id=pos.position_id,
            qty=_qty(pos.qty),
            price=_price(price),
            realized_pnl=_money(_pnl(pos, pos.qty, price) - fee),
            fee=_money(fee),
            reason="take_profit" if _pnl(pos, pos.qty, price) > 0 else "stop_loss",
        )


def take(events: Iterable[T], n: int) -> list[T]:
    """The first n items."""
    out: list[T] = []
    for item in events:
        if len(out) == n:
            break
        out.append(item)
    return out


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# -- rows for the raw sqlite3 baselines -----------------------------------------------------

COLUMNS: tuple[str, ...] = StagedRow.__struct_fields__
INSERT_SQL = f"INSERT INTO events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
SELECT_SQL = f"SELECT {', '.join(COLUMNS)} FROM events ORDER BY seq"


class _Stager(StoreTransaction):
    """Envelope bookkeeping without a database: the exact rows the store would insert."""

    def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        return {}

    def committed_after(self, seq: int) -> list[Recorded]:
        return []


def stager(head: Head, recorded_at: datetime) -> StoreTransaction:
    """A transaction that only stages (no database), continuing from head."""
    return _Stager(head, [], recorded_at)


def staged_rows(events: Sequence[NewEvent], *, per_commit: int) -> list[tuple[object, ...]]:
    """Rows (seq, stream, ..., body, hash) as SQLiteEventStore would write them, one recorded_at
    per commit of `per_commit` events, chained from the genesis hash."""
    head = Head()
    clock = TickClock()
    rows: list[tuple[object, ...]] = []
    for batch in chunks(events, per_commit):
        tx = _Stager(head, [], clock())
        tx.stage(batch)
        tx.head.publish(head)
        # bodies bound as the store binds them, bytearrays (sqlite3 binds a bytes object
        # through its adapter lookup: ~0.8 us a row more, which would handicap the baseline)
        rows.extend((*row[:8], bytearray(row[8]), row[9]) for row in tx.rows)
    return rows


def raw_connection(path: Path, synchronous: str) -> sqlite3.Connection:
    """A stdlib connection in autocommit mode with the store's pragmas (WAL, synchronous),
    its WAL sized as the store sizes its own at FULL (ledger.store.wal), before any round."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA busy_timeout = 10000")
    if synchronous == "FULL":
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        autocheckpoint = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        conn.execute("BEGIN IMMEDIATE")
        presize_wal(f"{Path(path).resolve()}-wal", wal_target_bytes(page_size, autocheckpoint))
        conn.execute("COMMIT")
    return conn


# -- logs -------------------------------------------------------------------------------------


async def create_empty_log(path: Path) -> None:
    """A new, empty ledger database with the store's own schema and pragmas."""
    store = SQLiteEventStore(path)
    await store.open()
    await store.close()


async def build_log(path: Path, events: Iterable[NewEvent], *, batch: int = 10_000) -> int:
    """Stage events into a new log through the store, `batch` per append; returns the count."""
    store = SQLiteEventStore(path, synchronous="NORMAL", clock=TickClock())
    await store.open()
    count = 0
    try:
        for chunk in chunks(events, batch):
            await store.append(chunk)
            count += len(chunk)
    finally:
        await store.close()
    return count


async def fold(store: EventStore, *, to_seq: int | None = None) -> Book:
    """The full rebuild: every stored event, page by page, into a new Book (as start-up does)."""
    return await fold_log(store, to_seq=to_seq)


async def fold_file(path: Path) -> Book:
    """Fold the log at path, opened read-only."""
    store = SQLiteEventStore(path, read_only=True)
    await store.open()
    try:
        return await fold(store)
    finally:
        await store.close()


def _maxrss_mb() -> float:
    """This process's resident-set high-water mark, in MB.

    Linux's VmHWM belongs to the process image; ru_maxrss is not used there because it keeps
    the parent's high-water mark across fork and exec (a child of a large pytest reports it).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    # ru_maxrss is KiB on Linux, bytes on macOS
    unit = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * unit / 1e6


def rebuild_memory(path: Path, *, trace: bool) -> dict[str, float]:
    """Fold the log at path in this process; the memory it took, in MB."""
    before = _maxrss_mb()
    if trace:
        tracemalloc.start()
    started = time.perf_counter()
    book = anyio.run(fold_file, path)
    seconds = time.perf_counter() - started
    result = {
        "events": float(book.last_seq),
        "open": float(len(book.open)),
        "closed": float(len(book.closed)),
        "seconds": seconds,
        "maxrss_before_mb": before,
        "maxrss_mb": _maxrss_mb(),
    }
    if trace:
        current, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        result["tracemalloc_peak_mb"] = peak / 1e6
        result["tracemalloc_book_mb"] = current / 1e6
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks._data")
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("rebuild-memory", help="fold a log, print memory as JSON")
    memory.add_argument("db", type=Path)
    memory.add_argument("--tracemalloc", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(rebuild_memory(args.db, trace=args.tracemalloc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
