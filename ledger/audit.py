"""Read-only views of a ledger for auditors: books as of a point, histories, verification, exports.

Everything here opens the log read-only and writes nothing: not the database, not positions.json.

Two levels of checking:
- `ChainVerifier(track_versions=False)` (cheap, constant memory, run by the commands that
  trust the log): every row follows the one before it (gapless seq), its hash chains from the
  previous one, and its body decodes. It runs in the same pass as the fold, so a trusted
  read costs one read of the log.
- `verify_log` (the `verify` command): the library's full `ChainVerifier` (adds stream versions),
  the ledger's rules replayed in order (`ledger.audit_rules`), and positions.json against the
  fold at its seq.
"""

from __future__ import annotations

import sqlite3
import typing
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ledger.audit_rules import violations
from ledger.commands import Limits
from ledger.envelope import GENESIS_HASH, Recorded
from ledger.errors import IntegrityError, SnapshotError, StoreUnavailable
from ledger.events import (
    AnyEvent,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.snapshot_file import read_file
from ledger.store.base import ChainVerifier, Head, StagedRow, record_from_row
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import ZERO, to_micros
from projections.book import Book
from projections.positions import Position
from projections.snapshot import decode_snapshot, encode_snapshot

PAGE_SIZE = 5000
Progress = Callable[[int], None]


# -- opening -------------------------------------------------------------------------------


class AuditStore(SQLiteEventStore):
    """The SQLite store opened read-only, with a head that leaves out the stream versions.

    `SQLiteEventStore.head()` groups the whole table by stream to return every stream's
    version, which only a writer needs; on a read-only view that costs memory in proportion to
    the number of positions, at open and at every call. Here the head is seq and hash alone.
    """

    def __init__(self, path: Path, *, busy_timeout_ms: int = 10_000) -> None:
        super().__init__(path, read_only=True, busy_timeout_ms=busy_timeout_ms)

    async def head(self) -> Head:
        try:
            row = await (
                await self._reading().execute(
                    "SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1"
                )
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read {self.path}: {exc}") from exc
        return Head() if row is None else Head(int(row[0]), str(row[1]))


@asynccontextmanager
async def open_read_only(
    db_path: Path, *, busy_timeout_ms: int = 10_000
) -> AsyncIterator[SQLiteEventStore]:
    """The log opened read-only; raises StoreUnavailable (missing, locked, corrupt, foreign)."""
    if db_path.is_dir():
        raise StoreUnavailable(f"{db_path} is a directory, not a ledger database")
    store = AuditStore(db_path, busy_timeout_ms=busy_timeout_ms)
    try:
        await store.open()
    except BaseException:
        # whatever open() got to, close it: a live aiosqlite thread keeps the process alive
        with anyio.CancelScope(shield=True):
            await store.close()
        raise
    try:
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()


# -- the cheap chain check -----------------------------------------------------------------


class Bound(msgspec.Struct, frozen=True, kw_only=True):
    """Where a replay stops: at a seq, at an occurred_at time, or (neither) at the head."""

    seq: int | None = None
    time: datetime | None = None

    def admits(self, row: StagedRow) -> bool:
        if self.seq is not None and row.seq > self.seq:
            return False
        return self.time is None or row.occurred_us <= to_micros(self.time)

    @property
    def is_head(self) -> bool:
        return self.seq is None and self.time is None


HEAD = Bound()


class ScanStats(msgspec.Struct, kw_only=True):
    """What a scan read: rows, how many it chain-checked, and undecodable rows it skipped."""

    rows: int = 0
    checked: int = 0
    last_hash: str = GENESIS_HASH
    undecodable: list[int] = msgspec.field(default_factory=list)


async def scan(
    store: SQLiteEventStore,
    *,
    bound: Bound = HEAD,
    check: bool = True,
    stats: ScanStats | None = None,
    progress: Progress | None = None,
) -> AsyncIterator[Recorded]:
    """Decoded records within bound, in seq order.

    With check, every row of the log (past the bound too) goes through a constant-memory
    ChainVerifier, and the first bad row raises IntegrityError: callers that print only after
    the scan never show figures from a log that fails. Without check, only the bound's rows
    are read and rows that
    do not decode are skipped (listed in stats.undecodable).
    """
    stats = stats if stats is not None else ScanStats()
    chain = ChainVerifier(track_versions=False) if check else None
    time_us = None if bound.time is None else to_micros(bound.time)
    pages = (
        store.iterate_rows(page_size=PAGE_SIZE)
        if check
        else store.iterate_rows(to_seq=bound.seq, until=bound.time, page_size=PAGE_SIZE)
    )
    async for rows in pages:
        for row in rows:
            stats.rows += 1
            inside = (bound.seq is None or row.seq <= bound.seq) and (
                time_us is None or row.occurred_us <= time_us
            )
            if chain is not None:
                record = chain.feed(row)
                stats.checked += 1
                stats.last_hash = row.hash
                if inside:
                    yield record
                continue
            try:
                record = record_from_row(row)
            except IntegrityError:
                stats.undecodable.append(row.seq)
                continue
            yield record
        if progress is not None:
            progress(len(rows))


async def check_chain(store: SQLiteEventStore, *, progress: Progress | None = None) -> ScanStats:
    """The cheap check over the whole log; raises IntegrityError at the first bad row."""
    stats = ScanStats()
    async for _ in scan(store, check=True, stats=stats, progress=progress):
        pass
    return stats


# -- books ---------------------------------------------------------------------------------


class SymbolFilter:
    """Keeps the records of positions on one symbol (and none of the account's)."""

    def __init__(self, symbol: str | None) -> None:
        self.symbol = symbol
        self._streams: set[str] = set()

    def admits(self, record: Recorded) -> bool:
        if self.symbol is None:
            return True
        event = record.event
        if isinstance(event, PositionOpened) and event.symbol == self.symbol:
            self._streams.add(record.stream)
        return record.stream in self._streams


class Replayed(msgspec.Struct, kw_only=True):
    """A book and where it stands: its last event's time, and whether the chain was checked."""

    book: Book
    at: datetime | None
    checked: bool
    from_snapshot: bool = False


async def book_at(
    store: SQLiteEventStore,
    *,
    bound: Bound = HEAD,
    check: bool = True,
    symbol: str | None = None,
    stats: ScanStats | None = None,
) -> Replayed:
    """The book folded from the log alone, up to bound (chain-checked unless check=False)."""
    book = Book()
    last: Recorded | None = None
    only = SymbolFilter(symbol)
    async for record in scan(store, bound=bound, check=check, stats=stats):
        last = record
        if only.admits(record):
            book.apply(record)
    if symbol is not None and last is not None:
        # the book stands where the replay stopped, not at its symbol's last event
        book.last_seq, book.last_hash = last.seq, last.hash
    return Replayed(book=book, at=None if last is None else last.occurred_at, checked=check)


async def load_book(store: SQLiteEventStore, snapshot_path: Path) -> Replayed:
    """The head's book: positions.json + the tail when its seq and hash match the log, else a
    fold of the whole log. Unchecked (a fast start, for `watch` and `--force`); writes nothing.
    """
    book = await trusted_snapshot(store, snapshot_path)
    from_snapshot = book is not None
    if book is None:
        book = Book()
    async for page in store.iterate(after_seq=book.last_seq):
        book.apply_all(page)
    at = None
    if book.last_seq:
        last = await store.read(after_seq=book.last_seq - 1, to_seq=book.last_seq)
        at = last[0].occurred_at if last else None
    return Replayed(book=book, at=at, checked=False, from_snapshot=from_snapshot)


async def trusted_snapshot(store: SQLiteEventStore, snapshot_path: Path) -> Book | None:
    """positions.json's book when its last seq and hash are the log's, else None."""
    raw = await anyio.to_thread.run_sync(read_file, snapshot_path)
    if raw is None:
        return None
    try:
        book = decode_snapshot(raw)
    except SnapshotError:
        return None
    stored = GENESIS_HASH if book.last_seq == 0 else await store.hash_at(book.last_seq)
    return book if stored == book.last_hash else None


# -- history -------------------------------------------------------------------------------


class HistoryRow(msgspec.Struct, kw_only=True):
    """One event of a position, with the position's state right after it."""

    seq: int
    occurred_at: datetime
    kind: str
    price: Decimal | None
    qty: Decimal | None
    running_qty: Decimal
    pnl: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    reason: str
    source: str
    event: AnyEvent


def _price_qty_reason(event: AnyEvent) -> tuple[Decimal | None, Decimal | None, str]:
    if isinstance(event, PositionOpened):
        return event.entry_price, event.qty, event.open_reason
    if isinstance(event, PositionIncreased):
        return event.price, event.qty, ""
    if isinstance(event, PositionMarked):
        return event.mark_price, None, ""
    if isinstance(event, PartialExitRecorded | PositionClosed):
        return event.price, -event.qty, event.reason
    return None, None, ""


async def history(
    store: SQLiteEventStore, position_id: str
) -> tuple[Position | None, list[HistoryRow]]:
    """Every event of one position in order, with running size and realized PnL so far."""
    book = Book()
    rows: list[HistoryRow] = []
    realized = ZERO
    async for page in store.iterate(stream=position_id):
        for record in page:
            book.apply(record)
            position = book.get(position_id)
            if position is None:  # an event the fold could not place (no open before it)
                continue
            price, qty, reason = _price_qty_reason(record.event)
            source = getattr(record.event, "source", "")
            rows.append(
                HistoryRow(
                    seq=record.seq,
                    occurred_at=record.occurred_at,
                    kind=type(record.event).__name__,
                    price=price,
                    qty=qty,
                    running_qty=position.qty,
                    pnl=position.realized_pnl - realized,
                    realized_pnl=position.realized_pnl,
                    unrealized_pnl=position.unrealized_pnl,
                    reason=reason,
                    source=str(source),
                    event=record.event,
                )
            )
            realized = position.realized_pnl
    return book.get(position_id), rows


# -- equity --------------------------------------------------------------------------------


class EquityPoint(msgspec.Struct, frozen=True, array_like=True):
    at: datetime
    equity: Decimal
    peak: Decimal


class ClosePoint(msgspec.Struct, frozen=True, array_like=True):
    at: datetime
    equity: Decimal
    pnl: Decimal
    position_id: str


class EquityCurve(msgspec.Struct, kw_only=True):
    """Realized equity after every realizing event (fees, exits, closes, funding); the book's
    statistics are whole, but it holds only the positions still open."""

    points: list[EquityPoint]
    closes: list[ClosePoint]
    book: Book
    end: datetime | None = None  # the last event's time: the curve runs flat up to it


async def equity_curve(
    store: SQLiteEventStore, *, bound: Bound = HEAD, check: bool = True
) -> EquityCurve:
    book = Book()
    points: list[EquityPoint] = []
    closes: list[ClosePoint] = []
    equity = ZERO
    end: datetime | None = None
    async for record in scan(store, bound=bound, check=check):
        book.apply(record)
        end = record.occurred_at
        acc = book.acc
        if acc.equity != equity:
            equity = acc.equity
            points.append(EquityPoint(record.occurred_at, equity, acc.peak_equity))
        event = record.event
        if isinstance(event, PositionClosed):
            # the curve needs the close, not the position: the book keeps only what is open
            done = book.closed.pop(event.position_id, None)
            if done is not None:
                closes.append(
                    ClosePoint(record.occurred_at, equity, done.realized_pnl, done.position_id)
                )
    return EquityCurve(points=points, closes=closes, book=book, end=end)


# -- exports -------------------------------------------------------------------------------


class Trade(msgspec.Struct, kw_only=True):
    """One closed position, as a row of the trades export."""

    position_id: str
    symbol: str
    side: str
    open_time: datetime
    close_time: datetime
    duration_s: Decimal
    entry_price: Decimal
    exit_price: Decimal
    avg_exit_price: Decimal
    qty: Decimal
    notional: Decimal
    leverage: int
    partial_exits: int
    partial_exit_pnl: Decimal
    close_pnl: Decimal
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    roe_pct: Decimal
    open_reason: str
    close_reason: str
    source: str
    pnl_estimated: bool
    close_seq: int


def trade_of(position: Position, close: PositionClosed, seq: int) -> Trade:
    exits = position.partial_exits
    exited_qty = sum((e.qty for e in exits), ZERO) + close.qty
    exited_value = sum((e.qty * e.price for e in exits), ZERO) + close.qty * close.price
    close_time = position.close_time or position.open_time
    micros = to_micros(close_time) - to_micros(position.open_time)
    return Trade(
        position_id=position.position_id,
        symbol=position.symbol,
        side=position.side.value,
        open_time=position.open_time,
        close_time=close_time,
        duration_s=Decimal(micros) / 1_000_000,
        entry_price=position.entry_price,
        exit_price=close.price,
        avg_exit_price=exited_value / exited_qty if exited_qty else close.price,
        qty=position.initial_qty,
        notional=position.initial_qty * position.entry_price,
        leverage=position.leverage,
        partial_exits=len(exits),
        partial_exit_pnl=sum((e.realized_pnl for e in exits), ZERO),
        close_pnl=close.realized_pnl,
        realized_pnl=position.realized_pnl,
        fees=position.fees,
        funding=position.funding,
        roe_pct=position.roe_percentage,
        open_reason=position.open_reason,
        close_reason=position.close_reason or "",
        source=position.source.value,
        pnl_estimated=position.pnl_estimated,
        close_seq=seq,
    )


async def trades(
    store: SQLiteEventStore,
    *,
    check: bool = False,
    progress: Progress | None = None,
) -> AsyncIterator[Trade]:
    """Closed positions in the order they closed, as the fold closes them.

    Constant memory: a closed position leaves the book as soon as its row is made, so the book
    holds only what is open.
    """
    book = Book()
    async for record in scan(store, check=check, progress=progress):
        book.apply(record)
        event = record.event
        if isinstance(event, PositionClosed):
            position = book.closed.pop(event.position_id, None)
            if position is not None and position.close_time is not None:
                yield trade_of(position, event, record.seq)


EVENT_TYPES: tuple[type[Any], ...] = typing.get_args(AnyEvent)
ENVELOPE_COLUMNS = [
    "seq",
    "occurred_at",
    "recorded_at",
    "stream",
    "version",
    "event_id",
    "type",
    "schema_version",
    "hash",
]
TRADE_COLUMNS = [f.name for f in msgspec.structs.fields(Trade)]


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, as printed everywhere."""
    return moment.isoformat().replace("+00:00", "Z")


def _text(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class EventColumns:
    """The events CSV: the envelope, then the union of every event type's fields (blank where
    a type has no such field). Each type's cells are placed by a map built once."""

    def __init__(self) -> None:
        names: dict[str, int] = {}
        for cls in EVENT_TYPES:
            for field in msgspec.structs.fields(cls):
                names.setdefault(field.name, len(names))
        self.fields = list(names)
        self.header = ENVELOPE_COLUMNS + self.fields
        base = len(ENVELOPE_COLUMNS)
        self._places = {
            cls.__name__: [(f.name, base + names[f.name]) for f in msgspec.structs.fields(cls)]
            for cls in EVENT_TYPES
        }

    def cells(self, record: Recorded) -> list[str]:
        row = [""] * len(self.header)
        kind = type(record.event).__name__
        row[:9] = [
            str(record.seq),
            iso(record.occurred_at),
            iso(record.recorded_at),
            record.stream,
            str(record.version),
            record.event_id,
            kind,
            str(record.schema_version),
            record.hash,
        ]
        # to_builtins turns Decimals, enums and datetimes into their exact text in C
        values = msgspec.to_builtins(record.event)
        for name, place in self._places[kind]:
            row[place] = _text(values[name])
        return row


def trade_cells(trade: Trade) -> list[str]:
    values = msgspec.to_builtins(trade)
    return [_text(values[name]) for name in TRADE_COLUMNS]


# -- verify --------------------------------------------------------------------------------


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    kind: str  # "chain", "rules" or "snapshot"
    what: str


class SnapshotCheck(msgspec.Struct, kw_only=True):
    path: str
    status: str  # "matches", "missing", "mismatch", "not checked"
    last_seq: int | None = None
    detail: str = ""


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    events: int
    streams: int
    last_seq: int
    last_hash: str
    rules_checked: int
    rule_violations: int
    problems: list[Problem]
    snapshot: SnapshotCheck


_MAX_RULE_PROBLEMS = 20
_tree_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Any, float_hook=Decimal)
# what a snapshot may differ in from a fresh encoding of the same book
_UNCOMPARED = ("last_saved", "content_sha256")


def _snapshot_tree(data: bytes) -> dict[str, Any]:
    """positions.json as plain JSON (numbers as exact Decimals), closed positions keyed by id;
    raises msgspec.DecodeError, SnapshotError."""
    tree = _tree_decoder.decode(data)
    if not isinstance(tree, dict):
        raise SnapshotError("positions.json is not a JSON object")
    for name in _UNCOMPARED:
        tree.pop(name, None)
    closed = tree.get("closed_positions")
    if isinstance(closed, list):
        tree["closed_positions"] = {
            str(p.get("position_id")) if isinstance(p, dict) else str(i): p
            for i, p in enumerate(closed)
        }
    return tree


def first_difference(found: object, expected: object, path: str = "") -> str | None:
    """Where two JSON trees differ first, as 'path: file X != log Y', or None."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in expected:
            if key not in found:
                return f"{path}{key}: missing from the file"
            diff = first_difference(found[key], expected[key], f"{path}{key}.")
            if diff is not None:
                return diff
        for key in found:
            if key not in expected:
                return f"{path}{key}: in the file but not in the log"
        return None
    if isinstance(found, list) and isinstance(expected, list):
        if len(found) != len(expected):
            return f"{path.rstrip('.')}: file has {len(found)} items, log {len(expected)}"
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            diff = first_difference(a, b, f"{path}{i}.")
            if diff is not None:
                return diff
        return None
    same = (
        found == expected
        and isinstance(found, bool) == isinstance(expected, bool)
        and (found is None) == (expected is None)
    )
    if same:
        return None
    return f"{path.rstrip('.')}: file {found!r} != log {expected!r}"


class _SnapshotUnderTest:
    """positions.json read leniently: where it claims to be, and the raw bytes to compare."""

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path = path
        self.raw = raw
        self.seq: int | None = None
        self.hash = ""
        self.problem = ""
        try:
            tree = _snapshot_tree(raw)
        except (msgspec.DecodeError, SnapshotError) as exc:
            self.problem = f"positions.json is not a ledger snapshot: {exc}"
            return
        seq, digest = tree.get("last_seq"), tree.get("last_hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
            self.problem = "positions.json has no last_seq / last_hash: not a ledger snapshot"
            return
        self.seq = seq
        self.hash = digest
        self.tree = tree

    def compare(self, book: Book) -> str | None:
        """What differs from the book folded to this snapshot's seq, or None."""
        if book.last_hash != self.hash:
            return f"its last_hash {self.hash[:12]}... is not the log's hash at seq {self.seq}"
        expected = _snapshot_tree(encode_snapshot(book, datetime(1970, 1, 1)))
        diff = first_difference(self.tree, expected)
        if diff is not None:
            return diff
        try:
            decode_snapshot(self.raw)  # the format's own checks: version, content checksum
        except SnapshotError as exc:
            return str(exc)
        return None


async def verify_log(
    store: SQLiteEventStore,
    snapshot_path: Path,
    *,
    limits: Limits | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Chain, seq, stream versions, decoding, the ledger's rules in order, positions.json.

    The chain part stops at the first bad row (what follows cannot be trusted); rule
    violations are all counted, the first few listed. positions.json is compared, field by
    field, with the fold at its own last_seq.
    """
    limits = limits or Limits()
    verifier = ChainVerifier()
    book = Book()
    problems: list[Problem] = []
    violations_count = 0
    checked = 0
    snap = SnapshotCheck(path=str(snapshot_path), status="missing")
    raw = await anyio.to_thread.run_sync(read_file, snapshot_path)
    under_test = None if raw is None else _SnapshotUnderTest(snapshot_path, raw)
    if under_test is not None:
        snap.status = "not checked"
        snap.last_seq = under_test.seq
        if under_test.problem:
            snap.status = "mismatch"
            snap.detail = under_test.problem
            problems.append(Problem(seq=0, kind="snapshot", what=under_test.problem))
            under_test = None
    snap_seq = under_test.seq if under_test is not None else None

    def check_snapshot() -> None:
        assert under_test is not None
        why = under_test.compare(book)
        if why is None:
            snap.status = "matches"
            return
        snap.status = "mismatch"
        snap.detail = why
        what = f"positions.json at seq {under_test.seq}: {why}"
        problems.append(Problem(seq=under_test.seq or 0, kind="snapshot", what=what))

    chain_ok = True
    if snap_seq == 0:
        check_snapshot()
    try:
        async for rows in store.iterate_rows(page_size=PAGE_SIZE):
            for row in rows:
                record = verifier.feed(row)
                why = violations(book, record, limits)
                checked += 1
                if why is not None:
                    violations_count += 1
                    if violations_count <= _MAX_RULE_PROBLEMS:
                        problems.append(Problem(seq=record.seq, kind="rules", what=why))
                book.apply(record)
                if record.seq == snap_seq:
                    check_snapshot()
            if progress is not None:
                progress(len(rows))
    except IntegrityError as exc:
        chain_ok = False
        problems.insert(0, Problem(seq=exc.seq, kind="chain", what=exc.why))
    report = verifier.report()
    if chain_ok and snap_seq is not None and snap_seq > report.last_seq:
        snap.status = "mismatch"
        snap.detail = (
            f"positions.json is at seq {snap_seq} but the log ends at seq {report.last_seq}"
        )
        problems.append(
            Problem(
                seq=report.last_seq + 1,
                kind="snapshot",
                what=f"{snap.detail}: events after seq {report.last_seq} are missing from the log",
            )
        )
    problems.sort(key=lambda p: (p.kind != "chain", p.seq))
    return VerifyReport(
        ok=not problems,
        events=report.events,
        streams=report.streams,
        last_seq=report.last_seq,
        last_hash=report.last_hash,
        rules_checked=checked,
        rule_violations=violations_count,
        problems=problems,
        snapshot=snap,
    )


# -- following the log ---------------------------------------------------------------------


async def follow(
    store: SQLiteEventStore, *, after_seq: int, poll_interval: float = 0.25
) -> AsyncGenerator[list[Recorded], None]:
    """Pages of new records as other processes commit them, forever.

    One indexed query (seq > last) per poll_interval when idle: next to nothing.
    """
    seq = after_seq
    while True:
        got = False
        async for page in store.iterate(after_seq=seq):
            if page:
                got = True
                seq = page[-1].seq
                yield page
        if not got:
            await anyio.sleep(poll_interval)
