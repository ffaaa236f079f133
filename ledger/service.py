"""The async Ledger: commands in, events appended through one writer, reads from the projection."""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, NamedTuple

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
    ImportRejected,
    InvalidValue,
    LedgerError,
    SnapshotError,
    StoreError,
    StoreUnavailable,
    UnknownPosition,
)
from ledger.events import AnyEvent, stream_of
from ledger.rebuild import fold_log
from ledger.rules import decide
from ledger.settings import Settings
from ledger.snapshot_file import file_identity, move_aside, read_file, write_atomic
from ledger.store.base import EventStore
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side, optional_decimal, positive, to_decimal
from projections.book import Book
from projections.pnl import qty_from_notional
from projections.positions import Position
from projections.snapshot import encode_snapshot, open_snapshot, written_by_ledger
from projections.stats import SessionSummary

if TYPE_CHECKING:
    from ledger.seed_import import ImportPlan

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
        # what the file looked like when this ledger last wrote or verified it
        self._own_file: tuple[int, int, int, int] | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Ledger:
        await self.store.open()
        try:
            seed_file = await self._load()
            send, receive = anyio.create_memory_object_stream[_Job](max_buffer_size=10_000)
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
        except BaseException:
            await self.store.close()
            raise
        self._send = send
        self._task_group.start_soon(self._writer, receive)
        self._task_group.start_soon(self._snapshot_timer)
        if seed_file is not None:
            try:
                await self._import_seed_file(*seed_file)
            except BaseException as exc:
                await self.__aexit__(type(exc), exc, exc.__traceback__)
                raise
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
                except SnapshotError:
                    pass  # logged; positions.json is a cache and the log is intact
                finally:
                    await self.store.close()
        return None

    async def _load(self) -> tuple[ImportPlan, bytes] | None:
        """Snapshot + tail when the snapshot matches the log; otherwise a full rebuild.

        A positions.json this ledger did not write is never overwritten: a seed bot's file
        found beside an empty log is returned to be imported once the writer runs; any other
        one is moved aside under a timestamped name, with a warning saying where.
        """
        raw, unreadable = await self._read_positions_file()
        book: Book | None = None
        opened = None if raw is None else open_snapshot(raw)
        if opened is not None:
            book = await self._trusted_snapshot(*opened)
        self.rebuilt_on_start = book is None
        self._book = await fold_log(self.store, book)
        if unreadable is not None:
            await self._move_aside("unreadable", unreadable)
        elif raw is not None and opened is None:
            seed_file = await self._seed_file(raw)
            if seed_file is not None:
                return seed_file
        if self.rebuilt_on_start:
            await self._snapshot_quietly()
        return None

    async def _read_positions_file(self) -> tuple[bytes | None, str | None]:
        """The file's bytes (None when there is none), or why it cannot be read."""
        path = self.snapshot_path
        try:
            raw = await anyio.to_thread.run_sync(read_file, path)
        except OSError as exc:
            if path.exists() and not path.is_file():
                # not a file we could ever have written: left alone; write_snapshot reports it
                log.error("%s is not a regular file: positions.json cannot be written", path)
                return None, None
            return None, f"cannot be read ({exc.strerror or exc})"
        if raw is None:
            log.info("no snapshot at %s: building the book from the log", path)
        return raw, None

    async def _trusted_snapshot(self, mark: tuple[int, str], book: Book | None) -> Book | None:
        """The book of a positions.json this ledger wrote, if it matches the log."""
        path = self.snapshot_path
        seq, digest = mark
        stored = GENESIS_HASH if seq == 0 else await self.store.hash_at(seq)
        if stored != digest:
            # written by a ledger, but of a history this log does not hold (another log, or
            # a log lost or rolled back): the only record of it may be this file
            await self._move_aside(
                "orphan",
                f"written by a ledger, but its seq {seq} and hash are not in this log's history",
            )
            return None
        self._own_file = await anyio.to_thread.run_sync(file_identity, path)
        if book is None:
            log.warning(
                "snapshot %s was written in another format or projection version: "
                "rebuilding from the log",
                path,
            )
            return None
        self._snapshot_seq = book.last_seq
        return book

    async def _seed_file(self, raw: bytes) -> tuple[ImportPlan, bytes] | None:
        """A seed bot's positions.json: planned for import into an empty log, else moved
        aside (and no import planned)."""
        # imported here: the importer appends through this class
        from ledger.seed_import import plan_import

        try:
            plan = plan_import(raw, self.snapshot_path.name, limits=self._limits)
        except (ImportRejected, RecursionError) as exc:
            why = f"neither an intact snapshot of this ledger nor a seed bot's file ({exc})"
            await self._move_aside("unreadable", why, unless_changed_from=raw)
            return None
        sha = plan.report.file_sha256
        if self._book.last_seq == 0:
            return plan, raw
        if sha in self._book.imported_files:
            where = await self._move_aside("seed", None, unless_changed_from=raw)
            log.info("%s was imported into this log before; kept as %s", sha[:12], where)
        else:
            await self._move_aside(
                "seed",
                f"a seed bot's file, not imported: the log already holds {self._book.last_seq} "
                "events (`ledger import` it into a new log to read it)",
                unless_changed_from=raw,
            )
        return None

    async def _import_seed_file(self, plan: ImportPlan, raw: bytes) -> None:
        """Import a seed bot's positions.json found at start-up (idempotent by its sha256),
        keep the original beside it as positions.seed-<stamp>.json, write our own."""
        from ledger.seed_import import import_seed

        report = plan.report
        try:
            await import_seed(self, plan)
        except ImportRejected:
            # another process sharing the log got there first (checked inside the write
            # transaction): it imported this very file, or appended something else
            if report.file_sha256 in self._book.imported_files:
                log.info("%s was imported by another process meanwhile", self.snapshot_path)
            else:
                await self._move_aside(
                    "seed",
                    "a seed bot's file, not imported: another process appended to the log "
                    "first (`ledger import` it into a new log to read it)",
                    unless_changed_from=raw,
                )
            await self._snapshot_quietly()
            return
        skipped = len(report.unreadable)
        where = await self._move_aside("seed", None, unless_changed_from=raw)
        log.warning(
            "imported the seed bot's %s (sha256 %s): %d open and %d closed positions as seq "
            "%d..%d%s; the original is kept as %s",
            self.snapshot_path,
            report.file_sha256[:16],
            report.open_positions,
            report.closed_positions,
            report.first_seq,
            report.last_seq,
            f"; {skipped} record(s) could not be read (`ledger import --dry-run` lists them)"
            if skipped
            else "",
            where,
        )
        await self._snapshot_quietly()

    async def _move_aside(
        self, kind: str, why: str | None, *, unless_changed_from: bytes | None = None
    ) -> Path | None:
        """Rename positions.json out of the way (WARNING with the reason and the new name,
        when why is given); None when it cannot be moved (it is then left as it is), or when
        it no longer holds unless_changed_from (another process moved it meanwhile)."""
        path = self.snapshot_path
        at = self._clock()

        def move() -> Path | None:
            if unless_changed_from is not None and read_file(path) != unless_changed_from:
                return None
            return move_aside(path, kind, at)

        try:
            moved = await anyio.to_thread.run_sync(move)
        except FileNotFoundError:
            moved = None
        except OSError as exc:
            log.error(
                "%s: %s; it cannot be moved aside (%s), so it is left alone and positions.json "
                "will not be written",
                path,
                why or "not written by this ledger",
                exc,
            )
            return None
        if moved is None:
            log.info("%s was moved or replaced by another process meanwhile", path)
        elif why is not None:
            log.warning("%s: %s; moved it to %s (nothing overwritten)", path, why, moved)
        return moved

    async def _snapshot_quietly(self) -> None:
        """write_snapshot where a failure only costs the cache (it is logged there)."""
        with contextlib.suppress(SnapshotError):
            await self.write_snapshot()

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
            await self._snapshot_quietly()
        finally:
            self._snapshot_running = False

    async def _snapshot_timer(self) -> None:
        while True:
            await anyio.sleep(self.settings.snapshot_every_seconds)
            if self._book.last_seq != self._snapshot_seq:
                self._start_background_snapshot()

    async def write_snapshot(self) -> Path:
        """Write positions.json for the book as it stands now; returns its path.

        A file at that path that this ledger did not write (a seed bot still running, a hand
        edit) is moved aside first, never overwritten. Raises SnapshotError (logged) when the
        file cannot be written; the ledger goes on working without it.
        """
        async with self._snapshot_lock:
            # the live book only ever holds committed events, applied without an await in
            # between, so a copy taken here is a state the log really had
            book = self._book.copy()
            saved_at = self._clock()
            path = self.snapshot_path
            try:
                await anyio.to_thread.run_sync(
                    lambda: self._write_guarded(path, encode_snapshot(book, saved_at))
                )
            except (OSError, SnapshotError) as exc:
                error = exc if isinstance(exc, SnapshotError) else _snapshot_error(path, exc)
                log.error("%s (the log is intact)", error)
                raise error from exc
            self._snapshot_seq = book.last_seq
            self._snapshot_at = time.monotonic()
            return path

    def _write_guarded(self, path: Path, data: bytes) -> None:
        """write_atomic, once the file there is known to be ours (runs in a worker thread)."""
        found = file_identity(path)
        if found is not None and found != self._own_file:
            if not path.is_file():
                raise SnapshotError(f"cannot write {path}: it is not a regular file")
            raw = read_file(path)
            if raw is not None and written_by_ledger(raw) is None:
                moved = move_aside(path, "foreign", self._clock())
                log.warning(
                    "%s was replaced by a file this ledger did not write: moved it to %s "
                    "(nothing overwritten)",
                    path,
                    moved,
                )
        write_atomic(path, data)
        self._own_file = file_identity(path)

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
        return await fold_log(self.store, to_seq=seq, until=time)

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


def _snapshot_error(path: Path, exc: OSError) -> SnapshotError:
    """The OS error of a failed positions.json write, in one line that names the file."""
    reason = exc.strerror or type(exc).__name__
    return SnapshotError(f"cannot write {path}: {reason}")


def _qty(
    qty: Number | None, notional: Number | None, entry: Decimal, qty_name: str, notional_name: str
) -> Decimal:
    if (qty is None) == (notional is None):
        raise InvalidValue(qty_name, qty, f"give exactly one of {qty_name} and {notional_name}")
    if qty is not None:
        return positive(qty_name, qty)
    return qty_from_notional(positive(notional_name, notional), entry)
