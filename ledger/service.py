"""The async Ledger: commands in, events appended through one writer, reads from the projection."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import NamedTuple

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ledger.clock import Clock, system_clock
from ledger.commands import (
    AnyCommand,
    ClosePosition,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordPartialExit,
)
from ledger.envelope import GENESIS_HASH, NewEvent, Recorded
from ledger.errors import (
    InvalidValue,
    LedgerError,
    SnapshotError,
    StoreError,
    StoreUnavailable,
    UnknownPosition,
)
from ledger.events import AnyEvent, stream_of
from ledger.rules import decide
from ledger.settings import Settings
from ledger.snapshot_file import read_file, write_atomic
from ledger.store.base import EventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side, optional_decimal, positive, to_decimal
from projections.book import Book
from projections.pnl import qty_from_notional
from projections.positions import Position
from projections.snapshot import decode_snapshot, encode_snapshot
from projections.stats import SessionSummary

log = logging.getLogger("ledger")

Number = Decimal | int | float | str


class Plan(NamedTuple):
    """An event a decider wants appended.

    key: an idempotency key when the caller has a meaningful one (an exchange execution id,
    an import's file hash); occurred_at: when it happened, if not now (imports, exchange times).
    """

    event: AnyEvent
    key: str | None = None
    occurred_at: datetime | None = None


Decider = Callable[[Book], Sequence[Plan]]

_MAX_GROUP = 1000


@dataclass
class _Job:
    decide: Decider
    done: anyio.Event = field(default_factory=anyio.Event)
    result: list[Recorded] = field(default_factory=list)
    error: BaseException | None = None


def new_position_id() -> str:
    return f"pos_{uuid.uuid4().hex[:12]}"


class Ledger:
    """The position ledger, used as `async with Ledger("data/ledger.db") as ledger:`.

    Every change goes through one writer task: jobs queued while a transaction is in flight
    share the next one (group commit), and each is decided against the book after the events
    other processes appended are applied, inside the write lock.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        snapshot_path: str | Path | None = None,
        settings: Settings | None = None,
        store: EventStore | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.settings = settings or Settings()
        self.db_path = Path(db_path or self.settings.db_path)
        if snapshot_path is None:
            snapshot_path = (
                self.db_path.with_name("positions.json")
                if db_path is not None
                else self.settings.positions_file
            )
        self.snapshot_path = Path(snapshot_path)
        self.store = store or SQLiteEventStore(
            self.db_path,
            synchronous=self.settings.synchronous,
            busy_timeout_ms=self.settings.busy_timeout_ms,
            clock=clock,
        )
        self._clock = clock
        self._limits = self.settings.limits
        self._book = Book()
        self._task_group: TaskGroup | None = None
        self._send: MemoryObjectSendStream[_Job] | None = None
        self._writer_done = anyio.Event()
        self._appended = anyio.Event()
        self._snapshot_seq = 0
        self._snapshot_at = time.monotonic()
        self._snapshot_running = False
        self._snapshot_lock = anyio.Lock()
        self.rebuilt_on_start = False

    # -- life cycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Ledger:
        await self.store.open()
        try:
            await self._load()
            send, receive = anyio.create_memory_object_stream[_Job](max_buffer_size=10_000)
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
        except BaseException:
            await self.store.close()
            raise
        self._send = send
        self._task_group.start_soon(self._writer, receive)
        self._task_group.start_soon(self._snapshot_timer)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        if self._send is not None:
            await self._send.aclose()
            self._send = None
        group, self._task_group = self._task_group, None
        try:
            if group is not None:
                # the writer drains the jobs already queued, then ends with the stream
                with anyio.CancelScope(shield=True):
                    await self._writer_done.wait()
                group.cancel_scope.cancel()
                # the body's own exception goes on as it is, not wrapped in an ExceptionGroup
                await group.__aexit__(None, None, None)
        finally:
            with anyio.CancelScope(shield=True):
                try:
                    if self._book.last_seq != self._snapshot_seq:
                        await self.write_snapshot()
                finally:
                    await self.store.close()
        return None

    async def _load(self) -> None:
        """Snapshot + tail when the snapshot matches the log; otherwise a full rebuild."""
        book = await self._trusted_snapshot()
        self.rebuilt_on_start = book is None
        if book is None:
            book = Book()
        async for page in self.store.iterate(after_seq=book.last_seq):
            book.apply_all(page)
        self._book = book
        if self.rebuilt_on_start:
            await self.write_snapshot()

    async def _trusted_snapshot(self) -> Book | None:
        raw = await anyio.to_thread.run_sync(read_file, self.snapshot_path)
        if raw is None:
            log.info("no snapshot at %s: building the book from the log", self.snapshot_path)
            return None
        try:
            book = decode_snapshot(raw)
        except SnapshotError as exc:
            log.warning(
                "ignoring snapshot %s (%s): rebuilding from the log", self.snapshot_path, exc
            )
            return None
        stored = GENESIS_HASH if book.last_seq == 0 else await self.store.hash_at(book.last_seq)
        if stored != book.last_hash:
            log.warning(
                "snapshot %s does not match the log at seq %d: rebuilding from the log",
                self.snapshot_path,
                book.last_seq,
            )
            return None
        self._snapshot_seq = book.last_seq
        return book

    # -- the writer ---------------------------------------------------------------------

    async def transact(self, decider: Decider) -> list[Recorded]:
        """Decide against the current book inside the write transaction, then append.

        The decider may raise a LedgerError to refuse (nothing is appended). Planned events
        with an idempotency key already in the log are not appended again; their stored
        records are returned in their place. A caller cancelled after submitting may still
        have its job committed. Raises LedgerError, StoreError.
        """
        if self._send is None:
            raise StoreUnavailable("the ledger is not open (use `async with Ledger(...)`)")
        job = _Job(decider)
        await self._send.send(job)
        await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    async def execute(self, command: AnyCommand) -> list[Recorded]:
        """Check a command against the rules and append its events; raises CommandRejected."""
        limits = self._limits
        return await self.transact(lambda book: [Plan(e) for e in decide(book, command, limits)])

    async def _writer(self, receive: MemoryObjectReceiveStream[_Job]) -> None:
        try:
            await self._write_loop(receive)
        finally:
            self._writer_done.set()

    async def _write_loop(self, receive: MemoryObjectReceiveStream[_Job]) -> None:
        async with receive:
            async for first in receive:
                group = [first]
                while len(group) < _MAX_GROUP:
                    try:
                        group.append(receive.receive_nowait())
                    except (anyio.WouldBlock, anyio.EndOfStream):
                        break
                with anyio.CancelScope(shield=True):
                    await self._commit_group(group)
                self._appended.set()
                self._appended = anyio.Event()
                await self._snapshot_if_due()

    async def _commit_group(self, group: list[_Job]) -> None:
        """Decide every job against a fork of the book inside one write transaction; the
        live book sees the events only once they are committed."""
        tail: list[Recorded] = []
        staged: list[Recorded] = []
        try:
            async with self.store.write() as tx:
                tail = tx.tail
                work = self._book.fork()
                work.apply_all(tail)
                now = self._clock()
                for job in group:
                    try:
                        planned = list(job.decide(work))
                    except Exception as refused:  # handed back to the caller, not swallowed
                        job.error = refused
                        continue
                    keyed = [plan.key for plan in planned if plan.key is not None]
                    existing = await tx.find_existing(keyed) if keyed else {}
                    fresh = [
                        NewEvent(
                            stream=stream_of(plan.event),
                            event=plan.event,
                            event_id=plan.key or uuid.uuid4().hex,
                            occurred_at=plan.occurred_at or now,
                        )
                        for plan in planned
                        if plan.key is None or plan.key not in existing
                    ]
                    await tx.load_versions(new.stream for new in fresh)
                    try:
                        new_records = iter(tx.stage(fresh))
                    except Exception as bad:  # this job alone fails; the others commit
                        job.error = StoreError(f"cannot store these events: {bad!r}")
                        continue
                    records = [
                        existing[plan.key]
                        if plan.key is not None and plan.key in existing
                        else next(new_records)
                        for plan in planned
                    ]
                    appended = [r for r in records if r.seq > work.last_seq]
                    work.apply_all(appended)
                    staged.extend(appended)
                    job.result = records
        except Exception as failure:
            error = failure if isinstance(failure, LedgerError) else StoreError(repr(failure))
            for job in group:
                if job.error is None:
                    job.error = error
                    job.result = []
            log.error("append failed, nothing of this group was stored: %s", error)
            self._book.apply_all(tail)  # other processes' events did commit
        else:
            self._book.apply_all(tail)
            self._book.apply_all(staged)
        finally:
            for job in group:
                job.done.set()

    # -- snapshots ----------------------------------------------------------------------

    async def _snapshot_if_due(self) -> None:
        behind = self._book.last_seq - self._snapshot_seq
        overdue = time.monotonic() - self._snapshot_at >= self.settings.snapshot_every_seconds
        if behind >= self.settings.snapshot_every_events or (behind and overdue):
            self._start_background_snapshot()

    def _start_background_snapshot(self) -> None:
        if self._snapshot_running or self._task_group is None:
            return
        self._snapshot_running = True
        self._task_group.start_soon(self._background_snapshot)

    async def _background_snapshot(self) -> None:
        try:
            await self.write_snapshot()
        except OSError as exc:
            log.error("snapshot to %s failed: %s (the log is intact)", self.snapshot_path, exc)
        finally:
            self._snapshot_running = False

    async def _snapshot_timer(self) -> None:
        while True:
            await anyio.sleep(self.settings.snapshot_every_seconds)
            if self._book.last_seq != self._snapshot_seq:
                self._start_background_snapshot()

    async def write_snapshot(self) -> Path:
        """Write positions.json for the book as it stands now; returns its path."""
        async with self._snapshot_lock:
            # the live book only ever holds committed events, applied without an await in
            # between, so a copy taken here is a state the log really had
            book = self._book.copy()
            saved_at = self._clock()
            path = self.snapshot_path
            await anyio.to_thread.run_sync(
                lambda: write_atomic(path, encode_snapshot(book, saved_at))
            )
            self._snapshot_seq = book.last_seq
            self._snapshot_at = time.monotonic()
            return path

    # -- commands -----------------------------------------------------------------------

    async def open_position(
        self,
        symbol: str,
        side: Side | str,
        *,
        entry_price: Number,
        leverage: int,
        qty: Number | None = None,
        notional: Number | None = None,
        fee: Number = 0,
        confidence: Number | None = None,
        open_reason: str = "",
        atr: Number | None = None,
        adx: Number | None = None,
        volatility: Number | None = None,
        real_initial_margin: Number | None = None,
        position_id: str | None = None,
    ) -> Position:
        """Open a position sized by qty or by notional (USD at the entry price).

        Raises InvalidValue, LeverageOutOfRange, DuplicatePosition, TooManyOpenPositions.
        """
        entry = positive("entry_price", entry_price)
        command = OpenPosition(
            position_id=position_id or new_position_id(),
            symbol=symbol,
            side=Side.parse(side),
            qty=_qty(qty, notional, entry, "qty", "notional"),
            entry_price=entry,
            leverage=leverage,
            fee=to_decimal("fee", fee),
            confidence=optional_decimal("confidence", confidence),
            open_reason=open_reason,
            atr=optional_decimal("atr", atr),
            adx=optional_decimal("adx", adx),
            volatility=optional_decimal("volatility", volatility),
            real_initial_margin=optional_decimal("real_initial_margin", real_initial_margin),
        )
        await self.execute(command)
        return self._position(command.position_id)

    async def register_partial_exit(
        self,
        position_id: str,
        *,
        price: Number,
        qty: Number | None = None,
        notional: Number | None = None,
        realized_pnl: Number | None = None,
        fee: Number = 0,
        reason: str = "",
        rule: str | None = None,
    ) -> Position:
        """Exit part of a position, sized by qty or by notional at the entry price.

        Without realized_pnl it is computed from the prices, less the fee. Exiting all that is
        left closes the position. Raises UnknownPosition, PositionAlreadyClosed,
        ExitExceedsPosition, InvalidValue.
        """
        await self.execute(
            RecordPartialExit(
                position_id=position_id,
                qty=None if qty is None else positive("qty", qty),
                notional=None if notional is None else positive("exit_size", notional),
                price=positive("price", price),
                realized_pnl=optional_decimal("realized_pnl", realized_pnl),
                fee=to_decimal("fee", fee),
                reason=reason,
                rule=rule,
            )
        )
        return self._position(position_id)

    async def close_position(
        self,
        position_id: str,
        *,
        reason: str = "",
        price: Number | None = None,
        realized_pnl: Number | None = None,
        fee: Number = 0,
    ) -> Position:
        """Close what is left, at price (default: the last mark).

        Raises UnknownPosition, PositionAlreadyClosed, InvalidValue.
        """
        await self.execute(
            ClosePosition(
                position_id=position_id,
                price=optional_decimal("price", price),
                realized_pnl=optional_decimal("realized_pnl", realized_pnl),
                fee=to_decimal("fee", fee),
                reason=reason,
            )
        )
        return self._position(position_id)

    async def mark(
        self,
        position_id: str,
        price: Number,
        *,
        unrealized_pnl: Number | None = None,
        initial_margin: Number | None = None,
    ) -> Position:
        """Record a new mark price; raises UnknownPosition, PositionAlreadyClosed, InvalidValue."""
        await self.execute(
            MarkPosition(
                position_id=position_id,
                mark_price=positive("price", price),
                unrealized_pnl=optional_decimal("unrealized_pnl", unrealized_pnl),
                initial_margin=optional_decimal("initial_margin", initial_margin),
            )
        )
        return self._position(position_id)

    async def observe_balance(self, total: Number, available: Number) -> None:
        """Record the account balance; raises InvalidValue."""
        await self.execute(
            ObserveBalance(
                total=to_decimal("total", total), available=to_decimal("available", available)
            )
        )

    def _position(self, position_id: str) -> Position:
        position = self._book.get(position_id)
        if position is None:
            raise UnknownPosition(position_id)
        return position

    # -- reads: from the projection, never the database ---------------------------------

    @property
    def last_seq(self) -> int:
        return self._book.last_seq

    @property
    def book(self) -> Book:
        """The live book (read-only by convention; use `book.copy()` to keep a state)."""
        return self._book

    def get_position(self, position_id: str) -> Position | None:
        """An open or closed position by id."""
        return self._book.get(position_id)

    def get_position_for_symbol(
        self, symbol: str, side: Side | str | None = None
    ) -> Position | None:
        return self._book.open_for(symbol, None if side is None else Side.parse(side))

    def has_position_for_symbol(self, symbol: str, side: Side | str | None = None) -> bool:
        return self.get_position_for_symbol(symbol, side) is not None

    def active_positions(self) -> list[Position]:
        return list(self._book.open.values())

    def closed_positions(self) -> list[Position]:
        return list(self._book.closed.values())

    def session_summary(self) -> SessionSummary:
        return self._book.summary()

    # -- reads from the log ---------------------------------------------------------------

    async def history(self, position_id: str) -> list[Recorded]:
        """Every stored event of one position, in order."""
        return await self.store.read(stream=position_id)

    async def as_of(self, *, seq: int | None = None, time: datetime | None = None) -> Book:
        """The book as it stood at a seq or an occurred_at time, folded from the log alone."""
        book = Book()
        async for page in self.store.iterate(to_seq=seq, until=time):
            book.apply_all(page)
        return book

    async def refresh(self) -> int:
        """Apply what other processes appended since; returns how many events came in."""
        before = self._book.last_seq
        # pages and the writer's commits may interleave: both are committed prefixes of the
        # log, and apply() skips what the book already has
        async for page in self.store.iterate(after_seq=before):
            self._book.apply_all(page)
        return self._book.last_seq - before

    async def subscribe(
        self, from_seq: int = 0, *, poll_interval: float = 0.25
    ) -> AsyncIterator[Recorded]:
        """Every event after from_seq: first from the log, then live as they are committed.

        Appends in this process wake the subscriber at once; appends by other processes on the
        same database are picked up within poll_interval. Reading is on the subscriber's own
        task, so a slow or failing subscriber never holds up an append.
        """
        seq = from_seq
        while True:
            appended = self._appended
            async for page in self.store.iterate(after_seq=seq):
                for record in page:
                    yield record
                    seq = record.seq
            with anyio.move_on_after(poll_interval):
                await appended.wait()

    async def backup(self, to: str | Path | None = None) -> Path:
        """A consistent copy of the log through SQLite's backup API, keeping the newest N."""
        if not isinstance(self.store, SQLiteEventStore):
            raise StoreUnavailable("backups need the SQLite store")
        folder = Path(to or self.settings.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self._clock().strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / f"ledger-{stamp}.db"
        await self.store.backup_to(target)
        kept = sorted(folder.glob("ledger-*.db"))
        for old in kept[: -self.settings.backup_retention]:
            old.unlink()
        return target


def _qty(
    qty: Number | None, notional: Number | None, entry: Decimal, qty_name: str, notional_name: str
) -> Decimal:
    if (qty is None) == (notional is None):
        raise InvalidValue(qty_name, qty, f"give exactly one of {qty_name} and {notional_name}")
    if qty is not None:
        return positive(qty_name, qty)
    return qty_from_notional(positive(notional_name, notional), entry)
