"""The async Ledger: commands in, events appended through one writer, reads from the projection."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextvars import copy_context
from datetime import datetime
from decimal import Decimal, setcontext
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple

import anyio
from anyio.abc import TaskGroup

from ledger.clock import Clock, system_clock
from ledger.codec import ensure_decodable
from ledger.commands import (
    AnyCommand,
    ClosePosition,
    Limits,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordFunding,
    RecordPartialExit,
    funding_key,
)
from ledger.envelope import GENESIS_HASH, Fact, NewEvent, Recorded
from ledger.errors import (
    BookOutOfStep,
    ImportRejected,
    InvalidValue,
    LedgerError,
    OutcomeUnknown,
    SnapshotError,
    StoreError,
    StoreUnavailable,
    UnknownPosition,
)
from ledger.events import (
    AnyEvent,
    PartialExitRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    stream_of,
)
from ledger.output_paths import (
    BACKUP_GLOB,
    check_output,
    database_files,
    is_one_of,
    refuse_own,
    snapshot_file,
)
from ledger.rebuild import fold_log
from ledger.rules import check_command, decide_checked, decide_mark
from ledger.settings import ALL_ACCOUNTS, Settings
from ledger.snapshot_file import (
    file_identity,
    move_aside,
    read_file,
    read_identified,
    write_atomic,
)
from ledger.store.base import EventStore, StoreTransaction, Waiter
from ledger.store.factory import Location, backup_to_sqlite, is_url, make_store
from ledger.store.writer import (
    Completion,
    GroupCommit,
    WouldWait,
    deferred_blocking_completion,
    deferred_completion,
    signalled_here,
)
from ledger.values import (
    LEDGER_CONTEXT,
    MAX_MAGNITUDE,
    MIN_MAGNITUDE,
    Side,
    Source,
    aware_time,
    bounded,
    identifier,
    ledger_context,
    optional_decimal,
    optional_text,
    positive,
    text,
    to_decimal,
    to_micros,
    utc,
)
from projections.book import Book
from projections.pnl import qty_from_notional
from projections.positions import Position
from projections.snapshot import (
    checksum_matches,
    encode_snapshot,
    open_snapshot,
    written_by_ledger,
)
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


class _Job:
    __slots__ = ("decide", "done", "error", "result")

    def __init__(self, decide: Decider, *, blocking: bool) -> None:
        self.decide = decide
        # a job may run where its caller is (GroupCommit.run_now, run_blocking): its future
        # or lock is made only if someone else settles it
        self.done = deferred_blocking_completion() if blocking else deferred_completion()
        self.result: list[Recorded] = []
        self.error: BaseException | None = None

    def outcome(self) -> list[Recorded]:
        if self.error is not None:
            raise self.error
        return self.result


class _Group:
    """What one group's transaction saw and made, kept for after it ends."""

    __slots__ = ("culprit", "reloaded", "tail", "work")

    def __init__(self) -> None:
        self.tail: list[Recorded] = []
        self.work: Book | None = None
        self.culprit: _Job | None = None
        self.reloaded = False


def new_position_id() -> str:
    """`pos_` and 12 random hex digits: the first 12 of a uuid4's hex, as
    `uuid.uuid4().hex[:12]` gives them (all random: the version digit is the 13th), drawn
    from this thread's pool (see _UuidPool)."""
    return "pos_" + _uuids.take()[:12]


# uuid4's version and variant bits set on every byte of a buffer, through bytes.translate
_UUID_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_UUID_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
_POOL_UUIDS = 256  # drawn from os.urandom at once: 4 KiB, a system call per 256 ids


class _UuidPool(threading.local):
    """This thread's supply of random uuid4s as 32 hex digits, as `uuid.uuid4().hex` makes
    them, drawn from os.urandom a few hundred at a time: a system call and a UUID object per
    id were a tenth of a concurrent command's time, and a draw per group still a few
    microseconds of every sequential command's. Never shared: each thread has its own, and a
    forked child starts with a new, empty one (`_fresh_pool_in_child`), so a parent and its
    child never hand out the same ids from one draw."""

    hex = ""
    at = 0

    def take(self) -> str:
        pool, at = self.hex, self.at  # each attribute read once (see take_many)
        if at == len(pool):
            pool, at = _random_uuids(_POOL_UUIDS), 0
            self.hex = pool
        self.at = at + 32
        return pool[at : at + 32]

    def take_many(self, count: int) -> list[str]:
        """`take` count times, the pool read and moved once (a thread-local's attribute costs
        about as much as the rest of an id): a run of marks takes its ids at once. Ids left in
        a pool too short for count are dropped, never handed out twice."""
        pool, at = self.hex, self.at
        end = at + 32 * count
        if end > len(pool):
            pool, at = _random_uuids(max(count, _POOL_UUIDS)), 0
            end = 32 * count
            self.hex = pool
        self.at = end
        return [pool[i : i + 32] for i in range(at, end, 32)]


_uuids = _UuidPool()


def _fresh_pool_in_child() -> None:
    global _uuids
    _uuids = _UuidPool()


os.register_at_fork(after_in_child=_fresh_pool_in_child)


class _EventIds:
    """Event ids for one group's new events: random uuid4s (32 hex digits) from the pool of
    the thread running the group (see _UuidPool)."""

    __slots__ = ("_pool",)

    def __init__(self, expected: int) -> None:
        self._pool = _uuids

    def next(self) -> str:
        return self._pool.take()

    def many(self, count: int) -> list[str]:
        return self._pool.take_many(count)


def _random_uuids(count: int) -> str:
    raw = bytearray(os.urandom(16 * count))
    raw[6::16] = raw[6::16].translate(_UUID_VERSION)
    raw[8::16] = raw[8::16].translate(_UUID_VARIANT)
    return raw.hex()


class Ledger:
    """The position ledger, used as `async with Ledger("data/ledger.db") as ledger:`.

    Every change goes through one write transaction at a time, run by whoever holds the
    store's writer role (the caller itself when nobody else writes, else the store's writer
    thread): jobs queued while a transaction is in flight share the next one (group commit),
    and each is decided against the book after the events other processes appended are
    applied, inside the write lock, all in one call on one thread (DESIGN in
    `ledger/store/base.py` and `ledger/store/writer.py`). Each committed state is published as
    a new book (one reference assignment), so readers on any thread see a committed state.
    """

    def __init__(
        self,
        db_path: str | Path | None = None,
        *,
        snapshot_path: str | Path | None = None,
        settings: Settings | None = None,
        store: EventStore | None = None,
        clock: Clock = system_clock,
        account: str | None = None,
    ) -> None:
        self.settings = settings or Settings()
        # what this ledger writes as, and what its reads default to; ALL_ACCOUNTS ("*") in
        # a read means the whole fleet
        self.account = account or self.settings.account
        if not self.account.strip() or self.account == ALL_ACCOUNTS:
            raise InvalidValue("account", self.account, "must name one account")
        location = db_path or self.settings.db_path
        # a SQLite file, or a postgresql:// URL (see ledger.store.factory)
        self.db_path: Location = location if is_url(location) else Path(location)
        if snapshot_path is None:
            snapshot_path = (
                Path(self.db_path).with_name("positions.json")
                if db_path is not None and not is_url(db_path)
                else self.settings.positions_file
            )
        self.snapshot_path = Path(snapshot_path)
        self.store = store or make_store(
            self.db_path,
            synchronous=self.settings.synchronous,
            busy_timeout_ms=self.settings.busy_timeout_ms,
            clock=clock,
        )
        if not is_url(self.db_path):
            # positions.json written (or a foreign file moved aside) there would take the log
            files = database_files(Path(self.db_path))
            refuse_own(self.snapshot_path, files, option="snapshot_path")
        self._clock = clock
        # a store made here reads the same clock: a command's events may occur at the time
        # its transaction is recorded (see _decide_one)
        self._recorded_is_now = store is None and clock is system_clock
        self._limits = self.settings.limits
        self._book = Book()
        self._task_group: TaskGroup | None = None
        self._jobs: GroupCommit[_Job] | None = None
        self._loop_token: Callable[[Callable[[], None]], None] | None = None
        self._broken: BookOutOfStep | None = None
        self._appended = anyio.Event()
        self._subscribers = 0
        self._snapshot_seq = 0
        self._snapshot_at = time.monotonic()
        self._snapshot_running = False
        self._snapshot_lock = anyio.Lock()
        self.rebuilt_on_start = False
        # what the file looked like when this ledger last wrote or verified it
        self._own_file: tuple[int, int, int, int] | None = None
        self._read_identity: tuple[int, int, int, int] | None = None

    # -- life cycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Ledger:
        await self.store.open()
        try:
            seed_file = await self._load()
            self._task_group = anyio.create_task_group()
            await self._task_group.__aenter__()
        except BaseException:
            await self.store.close()
            raise
        self._loop_token = _loop_caller()
        self._jobs = self.store.group_commit(self._commit_group, max_group=_MAX_GROUP)
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
        jobs, self._jobs = self._jobs, None
        group, self._task_group = self._task_group, None
        try:
            if jobs is not None:
                # the writer thread runs every job queued before this barrier, those waiting
                # behind a caller running its group inline included (not on its queue yet)
                with anyio.CancelScope(shield=True), contextlib.suppress(StoreUnavailable):
                    await self.store.writer.call(jobs.flush)
            if group is not None:
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
        opened = None if raw is None else await _open_snapshot(raw)
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
            found = await anyio.to_thread.run_sync(read_identified, path)
        except OSError as exc:
            if path.exists() and not path.is_file():
                # not a file we could ever have written: left alone; write_snapshot reports it
                log.error("%s is not a regular file: positions.json cannot be written", path)
                return None, None
            return None, f"cannot be read ({exc.strerror or exc})"
        if found is None:
            log.info("no snapshot at %s: building the book from the log", path)
            return None, None
        raw, self._read_identity = found
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
        self._own_file = self._read_identity  # the file as it was read, before the checks
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
                # the original is kept by whichever process still finds it in place, before
                # either writes its snapshot over the path
                where = await self._move_aside("seed", None, unless_changed_from=raw)
                log.info(
                    "%s was imported by another process meanwhile; kept as %s",
                    self.snapshot_path,
                    where,
                )
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
            where or "positions.seed-<stamp>.json by another process sharing the log",
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

        The decider runs holding the store's writer role (on this task's loop when nobody else
        writes, else on the store's writer thread), synchronously, against a fork of the
        book with every committed event applied. It may raise a LedgerError to refuse
        (nothing is appended); any exception it raises fails this job alone, as does one in
        encoding or folding its events; the other jobs of the group commit. Planned events
        with an idempotency key already in the log are not appended again; their stored
        records are returned in their place. A caller cancelled after submitting may still
        have its job committed. The decider may be called more than once for one job (when
        another process committed first, it is decided again on the book with those events):
        only its last call's events are appended, so it must have no effect of its own beyond
        the events it returns. Raises LedgerError, StoreError.
        """
        # a command's own decider (`_CommandDecider`) is checked already (see `_checked`)
        job = _Job(
            decider if type(decider) is _CommandDecider else _checked(decider), blocking=False
        )
        jobs = self._jobs  # self._queue(), its usual case first (every command comes here)
        if jobs is None:
            jobs = self._queue()  # raises
        waiting = jobs.run_now(job)  # None: run and settled already, right here
        if waiting is not None:
            await waiting
        if job.error is not None:  # job.outcome()
            raise job.error
        return job.result

    def transact_blocking(self, decider: Decider) -> list[Recorded]:
        """`transact` from a plain thread: blocks it until the commit is durable.

        The calling thread runs the transaction itself when nobody else writes, else the
        job joins the next group and the caller is woken once: no event loop in between.
        Not from a decider (it holds the writer role), which would wait for itself. Raises
        LedgerError, StoreError.
        """
        jobs = self._jobs  # self._queue(), its usual case first (every manager command)
        if jobs is None:
            jobs = self._queue()  # raises
        if self.store.writer.on_thread:
            raise StoreUnavailable("a decider cannot wait for another write")
        # a command's own decider (`_CommandDecider`) is checked already (see `_checked`)
        job = _Job(
            decider if type(decider) is _CommandDecider else _checked(decider), blocking=True
        )
        jobs.run_blocking(job)
        if job.error is not None:  # job.outcome()
            raise job.error
        return job.result

    def _queue(self) -> GroupCommit[_Job]:
        jobs = self._jobs
        if jobs is None:
            raise StoreUnavailable("the ledger is not open (use `async with Ledger(...)`)")
        return jobs

    async def execute(self, command: AnyCommand) -> list[Recorded]:
        """Check a command against the rules and append its events; raises CommandRejected."""
        return await self.transact(self._decider(command))

    def execute_blocking(self, command: AnyCommand) -> list[Recorded]:
        """`execute` from a plain thread (see `transact_blocking`)."""
        return self.transact_blocking(self._decider(command))

    def _decider(self, command: AnyCommand) -> Decider:
        check_command(command)  # a wrong type is refused here, before it is queued
        return _CommandDecider(command, self._limits)

    def _built_decider(self, command: OpenPosition | RecordPartialExit | ClosePosition) -> Decider:
        """The decider of a command this module's builders made (`open_position`, the
        manager's create, `partial_exit_command`, `close_command`), checked as `execute`
        checks a command, without checking twice what the builder checked already. Private
        to those builders: given a command built any other way it would skip checks that
        only the builders make.

        The builders check every field they set as check_command would (a Decimal through
        to_decimal/positive: finite, within the bounds; text through text/identifier) and
        leave the others at defaults it accepts; only an OpenPosition carries fields they pass
        as given (`_check_built_open`). Whatever check_command refuses is refused here with
        the same error (tests/test_bad_types.py::test_built_commands_are_checked_as_execute_checks).
        Raises InvalidValue.
        """
        if type(command) is OpenPosition:
            _check_built_open(command)
        return _CommandDecider(command, self._limits)

    # -- holding the writer role --------------------------------------------------------

    def _commit_group(self, group: list[_Job]) -> None:
        """One transaction for the group; the live book changes only once it is committed."""
        state = _Group()
        # Settling is the try's last step, and every way out of it settles again: an
        # interrupt at any instruction between the COMMIT and the group settled (the book
        # not yet published, or the Completions not yet set) would otherwise leave a stored
        # group unpublished, or unsettled, which the writer takes for never run and queues
        # again (GroupCommit._untake): run twice. Made before anything is done (an interrupt
        # here: nothing done, and the writer puts the group back, rightly).
        dones = [job.done for job in group]
        try:
            if len(group) == 1 and type(group[0].decide) is _CommandDecider:
                # a group of one command: `_decide_one` while the book is in step (asked on
                # each call: the store may call the unit again, see `_decide_group`)
                job = group[0]
                self.store.run_transaction(
                    lambda tx: (
                        self._decide_one(tx, job, state)
                        if self._broken is None
                        else self._decide_group(tx, group, state)
                    )
                )
            else:
                self.store.run_transaction(lambda tx: self._decide_group(tx, group, state))
            self._publish(state)
            Completion.set_all(dones)
        except WouldWait:  # nothing was decided: the writer thread runs the group again
            raise
        except BaseException as failure:
            try:
                if state.work is not None and self._book is state.work:
                    raise  # published (stored): an error after it, or an interrupt
                culprit = state.culprit
                if isinstance(failure, Exception) or (
                    culprit is not None and not signalled_here(culprit.done)
                ):
                    self._fail_group(group, state, failure)  # a decider's own, its caller's
                    return
                # KeyboardInterrupt, SystemExit of this thread, never another caller's (see
                # DESIGN in ledger/store/writer.py)
                stored = self._stored_anyway(group, state)
                if stored:
                    # it landed after the COMMIT returned (a signal's handler runs right
                    # after a call): the group is stored, so its callers hear their results,
                    # the book is published (tests/test_adv_interrupt_after_commit.py)
                    self._publish(state)
                    raise
                if stored is False and signalled_here():
                    # a signal's, nothing stored: unsettled, the group is put back and run
                    # again by the writer thread (tests/test_leader_interrupts.py)
                    self._fold_tail(state)
                    dones = []
                    raise
                if stored is None:
                    # it may have landed after the COMMIT returned, and the store could not
                    # be asked (another interrupt, the lock held by another writer): no
                    # caller may hear "nothing stored", and write it again
                    unknown = OutcomeUnknown.interrupted(failure, redo="writing it")
                    self._fail_group(group, state, unknown)
                    # the store's head may have taken the group (published whole after its
                    # COMMIT), and no tail read would bring it into the book: the next
                    # command reloads the book from the log
                    self._broken = BookOutOfStep(f"{unknown}; the book reloads from the log")
                    raise
                self._fail_group(group, state, failure)
                raise
            finally:
                Completion.set_all(dones)

    def _publish(self, state: _Group) -> None:
        """The live book after a group's transaction committed."""
        assert state.work is not None
        self._book = state.work  # publish: one assignment, readers see all or nothing
        if state.reloaded:
            self._broken = None
            log.warning("the book was reloaded from the log at seq %d", self._book.last_seq)
        self._after_commit()

    def _stored_anyway(self, group: list[_Job], state: _Group) -> bool | None:
        """Whether a group whose transaction raised an interrupt (no Exception: a
        KeyboardInterrupt or SystemExit of this thread, not a decider's) is stored all the
        same (`EventStore.stored_as_staged`: an interrupt that landed after the COMMIT
        returned); None when that cannot be told. The tail that asking read (the store's
        head takes it) is folded as the group's: into its book when stored, else with the
        failed transaction's tail."""
        staged = [record for job in group for record in job.result]
        if not staged or state.work is None:
            return False
        stored, seen = self.store.stored_as_staged(staged)
        if not stored:
            state.tail = [*state.tail, *seen]  # folded by _fail_group or _fold_tail
            return stored
        if seen:  # others' events committed after the group's (apply skips the group's own)
            try:
                state.work = self._fold(state.work, seen, [])
            except BookOutOfStep:  # the next command reloads the book (see _fold)
                log.error("%s", self._broken)
        return True

    def _decide_group(self, tx: StoreTransaction, group: list[_Job], state: _Group) -> None:
        """Decide each job against a fork of the book, in its own guard: any Exception of one
        job (its decider, encoding or staging its events, folding them) fails it alone.

        Runs of mark commands are decided, staged and folded together (`_decide_marks`): a
        mark command's decision reads only whether its position is open, which no mark
        changes, so each mark of a run is decided on the fork as it was before the run, the
        run's events are staged in one call and folded in one (`Book.apply_facts`: a run of
        marks on one position is folded once, as a rebuild folds them), before the next other
        job is decided. Should the run's staging or fold fail, nothing of it stays, and its
        jobs and every later one of the group are decided again one at a time, each staged and
        folded at once, so the job whose events cannot be stored or folded still fails alone.
        """
        for job in group:  # the store may call this again, on a fresh tx: from scratch
            job.result, job.error = [], None
        state.culprit, state.reloaded = None, False
        state.tail = tail = tx.tail
        base = self._book if self._broken is None else self._reloaded(tx, state)
        now = self._clock()  # the caller's clock, outside the ledger's context
        ids = _EventIds(len(group))
        loaded: set[str] = set()  # streams whose version this transaction knows
        accepted: list[Recorded] = []

        def decide_all() -> None:
            # `with ledger_context():` once for the group, in a copy of this thread's context
            # variables, left in C however the group's decisions end: no interrupt leaves the
            # caller's thread in the ledger's context (see _decide_one). A decider from
            # `_checked` enters its own.
            setcontext(LEDGER_CONTEXT.copy())
            work = self._fold(base, tail, []) if tail else base.successor()
            # runs of marks only where there are others to share with; never again in this
            # group once a run could not be staged or folded (one job at a time from there)
            together = len(group) > 1
            i, count = 0, len(group)
            while i < count:
                job = group[i]
                if together and _decides_a_mark(job.decide):
                    end = i + 1
                    while end < count and _decides_a_mark(group[end].decide):
                        end += 1
                    if end - i > 1:
                        run = group[i:end]
                        records = self._decide_marks(tx, work, run, state, now, ids, loaded)
                        if records is not None:
                            accepted.extend(records)
                            i = end
                            continue
                        # nothing of the run stayed staged; work may hold part of it
                        work = self._fold(base, tx.tail, accepted)
                        together = False
                i += 1
                mark = tx.savepoint()
                folding = False
                try:
                    records = self._stage_job(tx, work, job, now, ids, loaded)
                    folding = True
                    # a record already in the log (a planned key found stored) or staged by an
                    # earlier job is at or below work.last_seq: apply passes over it
                    work.apply_all(records)
                except Exception as refused:  # handed back to the caller, not swallowed
                    tx.rollback_to(mark)
                    job.result = []
                    job.error = (
                        refused
                        if isinstance(refused, LedgerError) or not folding
                        else StoreError(f"cannot apply these events, nothing stored: {refused!r}")
                    )
                    if folding:  # the fork took part of this job's events: build it again
                        work = self._fold(base, tx.tail, accepted)
                    continue
                except BaseException:
                    state.culprit = job
                    raise
                accepted.extend(records)
                job.result = records
                job.error = None  # decided again after a run of marks failed together
            state.work = work

        copy_context().run(decide_all)

    def _decide_one(self, tx: StoreTransaction, job: _Job, state: _Group) -> None:
        """`_decide_group` of a group of one command (`_CommandDecider`), on a book in step:
        what the loop there does for such a group, step for step and guard for guard (the
        same time taken before deciding, the same ids and staging, a failure of the job
        rolled back to its savepoint and its fork folded again), without the bookkeeping a
        group of several needs (runs of marks, the versions and ids the jobs share, the
        events accepted so far). The sequential command's path: most groups are one job
        (tests/test_group_commit.py::test_a_lone_command_fails_alone_as_in_a_group).

        `with ledger_context():` without its copy of LEDGER_CONTEXT (1.8 us a command): the
        decision runs in a copy of this thread's context variables (the decimal context is
        one), LEDGER_CONTEXT itself made current there. Context.run leaves the copy in C
        however the decision ends, so no interrupt at any instruction leaves the caller's
        thread in LEDGER_CONTEXT, whose precision a bot's `getcontext().prec = 6` would then
        set for every fold and rule of the ledger (tests/test_adv_decimal_context.py).
        Nothing the decision runs (rules, fold, staging) sets anything on the current context
        but its flags, which the rules' and folds' own calls (LEDGER_ARITHMETIC) set on
        LEDGER_CONTEXT already, nor any other context variable."""
        copy_context().run(self._decide_one_as_ledger, tx, job, state)

    def _decide_one_as_ledger(self, tx: StoreTransaction, job: _Job, state: _Group) -> None:
        """`_decide_one`, in the copy of the context variables it runs this in."""
        job.result, job.error = [], None  # the store may call this again: from scratch
        state.culprit, state.reloaded = None, False
        state.tail = tail = tx.tail
        base = self._book
        work = self._fold(base, tail, []) if tail else base.successor()
        # the same system clock as the store's: the events occur when the transaction is
        # recorded (one read of the clock, its microseconds computed once)
        now = tx.recorded_at if self._recorded_is_now else self._clock()
        decider = job.decide
        assert type(decider) is _CommandDecider  # see _decide_group
        mark = tx.savepoint()
        folding = False
        setcontext(LEDGER_CONTEXT)  # after the clock (a caller's): the decision's alone
        try:
            fresh = []
            for event in decider.events(work):
                stream = stream_of(event)
                if type(event) is PositionOpened:
                    # a position the book has no events of: its stream is new, which
                    # the store may take without reading it (proven before the COMMIT)
                    tx.assume_new((stream,))
                else:  # a command writes one or two streams (each loaded once)
                    tx.load_versions((stream,))
                fresh.append(
                    NewEvent(stream=stream, event=event, event_id=_uuids.take(), occurred_at=now)
                )
            try:  # _staged, inlined (one frame fewer on every command)
                records = tx.stage(fresh)
            except LedgerError:
                raise
            except Exception as bad:
                raise StoreError(f"cannot store these events: {bad!r}") from bad
            folding = True
            work.apply_all(records)
        except Exception as refused:  # handed back to the caller, not swallowed
            tx.rollback_to(mark)
            job.error = (
                refused
                if isinstance(refused, LedgerError) or not folding
                else StoreError(f"cannot apply these events, nothing stored: {refused!r}")
            )
            if folding:  # the fork took part of this job's events: build it again
                work = self._fold(base, tx.tail, [])
        except BaseException:
            state.culprit = job
            raise
        else:
            job.result = records
        state.work = work

    def _decide_marks(
        self,
        tx: StoreTransaction,
        work: Book,
        run: list[_Job],
        state: _Group,
        now: datetime,
        ids: _EventIds,
        loaded: set[str],
    ) -> list[Recorded] | None:
        """Decide a run of mark commands on work as it is, stage their events in one call and
        fold them in one; the records. A job whose decision fails fails alone. None when the
        staging or the fold failed: nothing of the run is staged then, and work may hold part
        of it (the caller decides the run again one job at a time)."""
        start = tx.savepoint()
        made: list[PositionMarked] = []
        decided: list[_Job] = []  # each with its one event in made
        for job in run:
            decider = job.decide
            assert type(decider) is _CommandDecider  # see _decides_a_mark
            try:
                # decider.events(work) of a MarkPosition (exactly, see _decides_a_mark): its
                # one event, shown to decode (a mark is checked by _plain_mark), without the
                # dispatch on the command's and the event's type for each mark of the run
                event = decide_mark(work, decider.command)  # type: ignore[arg-type]
                if not _plain_mark(event):
                    ensure_decodable(event)
            except Exception as refused:  # handed back to the caller, not swallowed
                job.result = []
                job.error = refused
                continue
            except BaseException:
                state.culprit = job
                raise
            made.append(event)
            decided.append(job)
        if not made:
            return []
        unknown: set[str] = set()
        fresh: list[NewEvent] = []
        for event, event_id in zip(made, ids.many(len(made)), strict=True):
            stream = event.position_id  # a mark's stream is its position (see stream_of)
            if stream not in loaded:
                unknown.add(stream)
            fresh.append(NewEvent(stream=stream, event=event, event_id=event_id, occurred_at=now))
        try:
            if unknown:
                tx.load_versions(unknown)
                loaded.update(unknown)
            records = tx.stage(fresh)  # all or nothing
        except Exception:
            tx.rollback_to(start)
            return None
        if not _fold_waiting(work, records, now):
            tx.rollback_to(start)
            return None
        for job, record in zip(decided, records, strict=True):
            job.result = [record]
            job.error = None  # decided again after a run of marks failed together
        return records

    def _stage_job(
        self,
        tx: StoreTransaction,
        work: Book,
        job: _Job,
        now: datetime,
        ids: _EventIds,
        loaded: set[str],
    ) -> list[Recorded]:
        decider = job.decide
        if type(decider) is _CommandDecider:  # a command: new events, no keys, now
            fresh = []
            for event in decider.events(work):
                stream = stream_of(event)
                if stream not in loaded:  # a command writes one or two streams
                    if type(event) is PositionOpened:  # a new stream (see _decide_one)
                        tx.assume_new((stream,))
                    else:
                        tx.load_versions((stream,))
                    loaded.add(stream)
                fresh.append(
                    NewEvent(stream=stream, event=event, event_id=ids.next(), occurred_at=now)
                )
            return self._staged(tx, fresh)
        planned = decider(work)  # a list (see _checked)
        keyed = [plan.key for plan in planned if plan.key is not None]
        existing = tx.find_existing(keyed) if keyed else {}
        fresh = [
            NewEvent(
                stream=stream_of(plan.event),
                event=plan.event,
                event_id=plan.key or ids.next(),
                occurred_at=plan.occurred_at or now,
            )
            for plan in planned
            if plan.key is None or plan.key not in existing
        ]
        # a version loaded once is known for the rest of the transaction (a rollback_to
        # only moves it back)
        unknown = {new.stream for new in fresh if new.stream not in loaded}
        if unknown:
            tx.load_versions(unknown)
            loaded.update(unknown)
        staged = self._staged(tx, fresh)
        if not existing:
            return staged
        new_records = iter(staged)
        return [
            existing[plan.key]
            if plan.key is not None and plan.key in existing
            else next(new_records)
            for plan in planned
        ]

    @staticmethod
    def _staged(tx: StoreTransaction, fresh: list[NewEvent]) -> list[Recorded]:
        try:
            return tx.stage(fresh)
        except LedgerError:
            raise
        except Exception as bad:
            raise StoreError(f"cannot store these events: {bad!r}") from bad

    def _fold(self, base: Book, tail: list[Recorded], accepted: list[Recorded]) -> Book:
        """A successor of base with committed events applied; raises BookOutOfStep when
        the book cannot take them (the ledger then refuses commands until it reloads)."""
        work = base.successor()
        try:
            work.apply_all(tail)
        except Exception as exc:
            self._broken = BookOutOfStep(
                f"the book cannot take events committed to the log (seq {tail[0].seq}-"
                f"{tail[-1].seq}): {exc!r}; commands are refused until it reloads"
            )
            raise self._broken from exc
        work.apply_all(accepted)  # each of these was folded once already on this fork
        return work

    def _fail_group(self, group: list[_Job], state: _Group, failure: BaseException) -> None:
        """The transaction rolled back: every caller hears an error, none hears "stored"."""
        if isinstance(failure, LedgerError):
            error: BaseException = failure
        elif state.culprit is not None:
            error = StoreError(
                "rolled back, nothing stored: another command of the same transaction"
                f" raised {failure!r}"
            )
        else:
            error = StoreError(f"append failed, nothing of this group was stored: {failure!r}")
        for job in group:
            job.result = []
            if job is state.culprit:
                job.error = failure  # its own exception, in its caller
            elif job.error is None:
                job.error = error
        if isinstance(error, OutcomeUnknown):
            log.error("a group's commit: %s", error)
        else:
            log.error("append failed, nothing of this group was stored: %s", error)
        self._fold_tail(state)

    def _fold_tail(self, state: _Group) -> None:
        """After a transaction that stored nothing: the events of other processes it read."""
        if state.tail and self._broken is None:
            try:  # they did commit
                self._book = self._fold(self._book, state.tail, [])
            except BookOutOfStep:
                log.error("%s", self._broken)

    def _reloaded(self, tx: StoreTransaction, state: _Group) -> Book:
        """The book rebuilt from the whole log, under the write lock (after the live book could
        not take committed events); raises BookOutOfStep while that still fails."""
        try:
            book = Book()
            book.apply_all(tx.committed_after(0))
        except Exception as exc:
            raise BookOutOfStep(f"{self._broken}; reloading from the log failed: {exc!r}") from exc
        state.reloaded = True
        return book

    def _after_commit(self) -> None:
        """Wake subscribers and start a due snapshot, on the event loop, only when needed."""
        call = self._loop_token
        if call is None:
            return
        if self._subscribers:
            call(self._wake_subscribers)
        if self._snapshot_running:
            return
        # a snapshot is due every snapshot_every_events events, or once the last one is
        # snapshot_every_seconds old with events behind it
        settings = self.settings
        behind = self._book.last_seq - self._snapshot_seq
        if behind >= settings.snapshot_every_events or (
            behind and time.monotonic() - self._snapshot_at >= settings.snapshot_every_seconds
        ):
            call(self._start_background_snapshot)

    def _wake_subscribers(self) -> None:
        self._appended.set()
        self._appended = anyio.Event()

    # -- snapshots ----------------------------------------------------------------------

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
            # a published book is never changed again: a state the log really had
            book = self._book
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
            position_id=new_position_id() if position_id is None else position_id,
            symbol=symbol,
            side=Side.parse(side),
            qty=_qty(qty, notional, entry, "qty", "notional"),
            entry_price=entry,
            leverage=leverage,
            fee=to_decimal("fee", fee),
            # optional_decimal of each, without a call for the usual None
            confidence=None if confidence is None else to_decimal("confidence", confidence),
            open_reason=open_reason,
            atr=None if atr is None else to_decimal("atr", atr),
            adx=None if adx is None else to_decimal("adx", adx),
            volatility=None if volatility is None else to_decimal("volatility", volatility),
            real_initial_margin=None
            if real_initial_margin is None
            else to_decimal("real_initial_margin", real_initial_margin),
            account=self.account,
        )
        await self.transact(self._built_decider(command))
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
        command = partial_exit_command(
            position_id,
            price=price,
            qty=qty,
            notional=notional,
            realized_pnl=realized_pnl,
            fee=fee,
            reason=reason,
            rule=rule,
        )
        await self.transact(self._built_decider(command))
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
        command = close_command(
            position_id, reason=reason, price=price, realized_pnl=realized_pnl, fee=fee
        )
        await self.transact(self._built_decider(command))
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
        command = mark_command(
            position_id, price, unrealized_pnl=unrealized_pnl, initial_margin=initial_margin
        )
        # `execute` without its check_command: mark_command checked every field it sets as
        # check_command would, and left the others at defaults it accepts (tests/
        # test_bad_types.py::test_every_mark_command_builds_passes_check_command). Marks are
        # most commands, many at once: this path is what 500 concurrent ones cost.
        # (and _queue, outcome and _position inlined)
        jobs = self._jobs
        if jobs is None:
            jobs = self._queue()  # raises
        job = _Job(_CommandDecider(command, self._limits), blocking=False)
        waiting = jobs.run_now(job)
        if waiting is not None:
            await waiting
        if job.error is not None:
            raise job.error
        position = self._book.get(position_id)
        if position is None:
            raise UnknownPosition(position_id)
        return position

    async def record_funding(
        self, position_id: str, amount: Number, *, execution_id: str
    ) -> Position:
        """Record a funding payment (positive received, negative paid) on a position.

        Idempotent by execution_id, as the sync's funding is, and under the same key: the
        same payment recorded twice, or by the bot and then by the sync, counts once, also
        after the position closed (funding settled while it was open may be reported after
        the close: it amends the closed position). Raises UnknownPosition, InvalidValue.
        """
        command = RecordFunding(
            position_id=identifier("position_id", position_id),
            amount=to_decimal("amount", amount),
            execution_id=identifier("execution_id", execution_id),
            source=Source.BOT,
        )
        check_command(command)
        limits = self._limits
        key = funding_key(command.execution_id)

        def plan(book: Book) -> list[Plan]:
            return [Plan(event, key=key) for event in decide_checked(book, command, limits)]

        await self.transact(plan)
        return self._position(command.position_id)

    async def observe_balance(self, total: Number, available: Number) -> None:
        """Record the account balance; raises InvalidValue."""
        await self.execute(
            ObserveBalance(
                total=to_decimal("total", total),
                available=to_decimal("available", available),
                account=self.account,
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

    def _which(self, account: str | None) -> str | None:
        """None (every account) for ALL_ACCOUNTS, this ledger's own account by default."""
        chosen = account or self.account
        return None if chosen == ALL_ACCOUNTS else chosen

    def get_position_for_symbol(
        self, symbol: str, side: Side | str | None = None, *, account: str | None = None
    ) -> Position | None:
        """An open position on symbol (and side) of this ledger's account (or the one given)."""
        return self._book.open_for(
            symbol, None if side is None else Side.parse(side), account=self._which(account)
        )

    def has_position_for_symbol(self, symbol: str, side: Side | str | None = None) -> bool:
        return self.get_position_for_symbol(symbol, side) is not None

    def active_positions(self, account: str | None = None) -> list[Position]:
        """Open positions of this ledger's account, of another, or of all ("*")."""
        which = self._which(account)
        return [p for p in self._book.open.values() if which is None or p.account == which]

    def closed_positions(self, account: str | None = None) -> list[Position]:
        which = self._which(account)
        return [p for p in self._book.closed.values() if which is None or p.account == which]

    def session_summary(self, account: str | None = None) -> SessionSummary:
        """The summary of this ledger's account, of another, or of the fleet ("*")."""
        return self._book.summary(self._which(account))

    # -- reads from the log ---------------------------------------------------------------

    async def history(self, position_id: str) -> list[Recorded]:
        """Every stored event of one position, in order."""
        return await self.store.read(stream=position_id)

    async def as_of(self, *, seq: int | None = None, time: datetime | None = None) -> Book:
        """The book as it stood at a seq or an occurred_at time, folded from the log alone.

        A naive time is UTC, as everywhere; raises InvalidValue for what is not a time.
        """
        if time is not None:
            time = aware_time("time", time)
        return await fold_log(self.store, to_seq=seq, until=time)

    async def refresh(self) -> int:
        """Apply what other processes appended since; returns how many events came in.

        The writer thread reads them under the write lock (an empty transaction), so the
        live book stays one committed state at a time.
        """
        before = self._book.last_seq
        await self.transact(lambda book: [])
        return self._book.last_seq - before

    async def subscribe(
        self, from_seq: int = 0, *, poll_interval: float = 0.25
    ) -> AsyncIterator[Recorded]:
        """Every event after from_seq: first from the log, then live as they are committed.

        Appends in this process wake the subscriber at once; appends by other processes wake
        it through the store (PostgreSQL: LISTEN/NOTIFY) or are picked up within
        poll_interval (the backstop everywhere). Reading is on the subscriber's own task, so a
        slow or failing subscriber never holds up an append.
        """
        seq = from_seq
        self._subscribers += 1
        try:
            async with self.store.follow() as waiter:
                while True:
                    appended = self._appended
                    async for page in self.store.iterate(after_seq=seq):
                        for record in page:
                            yield record
                            seq = record.seq
                    await _first_wake(appended, waiter, poll_interval)
        finally:
            self._subscribers -= 1

    async def backup(self, to: str | Path | None = None) -> Path:
        """A consistent SQLite copy of the log (the portable audit file), keeping the newest N."""
        folder = Path(to or self.settings.backup_dir)
        folder.mkdir(parents=True, exist_ok=True)
        stamp = self._clock().strftime("%Y%m%dT%H%M%S%fZ")
        target = folder / f"ledger-{stamp}.db"
        # a PostgreSQL ledger has no file here: only the snapshot must not be overwritten
        db_files = [] if is_url(self.db_path) else database_files(Path(self.db_path))
        own = [*db_files, snapshot_file(self.snapshot_path)]
        check_output(target, own, option="the backup")
        await backup_to_sqlite(self.store, target)
        # retention never deletes the live database, whatever it is called and wherever it is
        kept = [p for p in sorted(folder.glob(BACKUP_GLOB)) if not is_one_of(p, own)]
        for old in kept[: -self.settings.backup_retention]:
            old.unlink()
        return target


async def _open_snapshot(raw: bytes) -> tuple[tuple[int, str], Book | None] | None:
    """open_snapshot with its checksum hashed in one worker thread while another decodes:
    hashlib lets go of the GIL, and at 1M events hashing the file takes about as long as
    decoding it. Off the event loop either way (tens of ms at that size)."""
    matches: list[bool] = []

    async def check() -> None:
        matches.append(await anyio.to_thread.run_sync(checksum_matches, raw))

    async with anyio.create_task_group() as group:
        group.start_soon(check)
        opened = await anyio.to_thread.run_sync(lambda: open_snapshot(raw, checked=True))
    return opened if matches[0] else None


def _snapshot_error(path: Path, exc: OSError) -> SnapshotError:
    """The OS error of a failed positions.json write, in one line that names the file."""
    reason = exc.strerror or type(exc).__name__
    return SnapshotError(f"cannot write {path}: {reason}")


# -- commands built from caller values (shared by the async and the blocking API) -----------


def partial_exit_command(
    position_id: str,
    *,
    price: Number,
    qty: Number | None = None,
    notional: Number | None = None,
    realized_pnl: Number | None = None,
    fee: Number = 0,
    reason: str = "",
    rule: str | None = None,
) -> RecordPartialExit:
    """A partial exit; raises InvalidValue."""
    return RecordPartialExit(
        position_id=identifier("position_id", position_id),
        qty=None if qty is None else positive("qty", qty),
        notional=None if notional is None else positive("exit_size", notional),
        price=positive("price", price),
        realized_pnl=optional_decimal("realized_pnl", realized_pnl),
        fee=to_decimal("fee", fee),
        reason=text("reason", reason),
        rule=optional_text("rule", rule),
    )


def close_command(
    position_id: str,
    *,
    reason: str = "",
    price: Number | None = None,
    realized_pnl: Number | None = None,
    fee: Number = 0,
) -> ClosePosition:
    """A close; raises InvalidValue."""
    return ClosePosition(
        position_id=identifier("position_id", position_id),
        price=optional_decimal("price", price),
        realized_pnl=optional_decimal("realized_pnl", realized_pnl),
        fee=to_decimal("fee", fee),
        reason=text("reason", reason),
    )


def mark_command(
    position_id: str,
    price: Number,
    *,
    unrealized_pnl: Number | None = None,
    initial_margin: Number | None = None,
) -> MarkPosition:
    """A new mark price; raises InvalidValue."""
    if (  # the usual mark, a Decimal price alone: what the checks below accept, in one test
        type(price) is Decimal
        and unrealized_pnl is None
        and initial_margin is None
        and type(position_id) is str
        and position_id  # identifier: not empty, nor only whitespace (what strip() removes)
        and not position_id.isspace()
        and price.is_finite()  # to_decimal; positive and bounded: 0 < 1e-12 <= price <= 1e15
        and MIN_MAGNITUDE <= price <= MAX_MAGNITUDE
    ):
        return MarkPosition(position_id=position_id, mark_price=price)
    return MarkPosition(
        position_id=identifier("position_id", position_id),
        mark_price=positive("price", price),
        unrealized_pnl=optional_decimal("unrealized_pnl", unrealized_pnl),
        initial_margin=optional_decimal("initial_margin", initial_margin),
    )


def _check_built_open(command: OpenPosition) -> None:
    """check_command of an OpenPosition from `open_position` or the manager's create. Their
    builders check entry_price, fee and the optional numbers (to_decimal/positive), give a
    Side and leave source, position_idx and enforce_limits at their defaults; they pass
    position_id, symbol, leverage, open_reason and account as given, and a qty derived from
    a notional unbounded. Those of exactly the type check_command accepts as it is, qty within
    the bounds: the command passes check_command. Anything else takes check_command itself,
    which decides and names the field (its first refusal, in field order, as before). Raises
    InvalidValue."""
    qty = command.qty
    if (
        type(command.position_id) is str
        and type(command.symbol) is str
        and type(qty) is Decimal
        and qty.is_finite()
        and type(command.leverage) is int
        and type(command.open_reason) is str
        and type(command.account) is str
    ):
        bounded("qty", qty)  # the one field check_command could still refuse
    else:
        check_command(command)


def _loop_caller() -> Callable[[Callable[[], None]], None] | None:
    """A way to run a callback on the current event loop from whichever thread commits."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # another async backend: subscribers poll, snapshots use the timer
        return None

    def call(fn: Callable[[], None]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed
            loop.call_soon_threadsafe(fn)

    return call


def _checked(decider: Decider) -> Decider:
    """The decider run in the ledger's decimal context, each planned event shown to decode
    (ledger.codec.ensure_decodable) before the writer stages it, its key a non-empty str and
    its time a datetime (naive is UTC): a job that would append an undecodable body, or an
    envelope whose hash would not match the row stored (an int key is stored as text), fails
    alone with InvalidValue, and the log stays readable. A command's own decider
    (`_CommandDecider`) does all of that itself and is returned as it is."""
    if type(decider) is _CommandDecider:
        return decider

    def run(book: Book) -> Sequence[Plan]:
        with ledger_context():
            planned = list(decider(book))
        return [_checked_plan(plan) for plan in planned]

    return run


def _decides_a_mark(decider: Decider) -> bool:
    """A mark command's decider: its decision reads only whether the position is open."""
    return type(decider) is _CommandDecider and type(decider.command) is MarkPosition


def _fold_waiting(work: Book, waiting: list[Recorded], now: datetime) -> bool:
    """Fold staged marks into the group's fork, as a rebuild folds them; False (work may
    hold part of them) when the book cannot take them."""
    now_us = to_micros(now)
    facts: list[Fact] = [
        (r.seq, now_us if r.occurred_at is now else to_micros(r.occurred_at), r.event)
        for r in waiting
    ]
    try:
        work.apply_facts(facts, last_hash=waiting[-1].hash)
    except Exception:
        return False
    return True


# The exponents a number within the commands' bounds has (values.bounded: zero or 1e-12 to
# 1e15 in magnitude), inside those the codec lets an event carry (tests/test_plain_marks.py)
_PLAIN_LOW, _PLAIN_HIGH = -12, 15


def _plain_mark(event: AnyEvent) -> bool:
    """Whether a mark reads back as written without the decoder's round trip
    (`ensure_decodable`: a sixth of what a concurrent mark cost the writer).

    Only a mark of exactly the types its struct declares: a `str` id, a `Decimal` price, each
    other number None or a `Decimal`, each finite and within the commands' bounds, a `Source`
    member, no Bybit openTime. msgspec writes exactly those as their text and reads them back
    equal; a subclass of any (which msgspec refuses to encode), a number out of range, an
    openTime, anything else takes the round trip, which refuses it with InvalidValue as
    before. The id needs no more: a mark is decided only for an open position of the book
    (`rules._open_position`), so it is equal, code point for code point, to an id a stored
    event carries.
    """
    if type(event) is not PositionMarked:
        return False
    price = event.mark_price
    if (
        event.unrealized_pnl is None  # the usual mark, a price alone: one number to look at
        and event.contracts is None
        and event.initial_margin is None
        and type(price) is Decimal
        and type(event.position_id) is str
        and type(event.source) is Source
        and event.exchange_opened_ms is None
    ):
        return price.is_finite() and (not price or _PLAIN_LOW <= price.adjusted() <= _PLAIN_HIGH)
    if (
        type(event.position_id) is not str
        or type(event.mark_price) is not Decimal  # the one number it must have
        or type(event.source) is not Source
        or event.exchange_opened_ms is not None
    ):
        return False
    for number in (event.mark_price, event.unrealized_pnl, event.contracts, event.initial_margin):
        if number is not None and (
            type(number) is not Decimal
            or not number.is_finite()
            or (number and not _PLAIN_LOW <= number.adjusted() <= _PLAIN_HIGH)
        ):
            return False
    return True


# An int within this magnitude is written and read back as the same int by the codec (JSON
# numbers read as int64); a larger one takes the decoder's round trip
_PLAIN_INT = 2**53


def _plain_number(value: object) -> bool:
    """Exactly a Decimal, finite, zero or within the commands' bounds (see _plain_event)."""
    return (
        type(value) is Decimal
        and value.is_finite()
        and (not value or _PLAIN_LOW <= value.adjusted() <= _PLAIN_HIGH)
    )


def _plain_numbers(*values: object) -> bool:
    """`_plain_number` of each, in one call (an event's required numbers: a call each cost
    about as much as the checks)."""
    for value in values:
        if (
            type(value) is not Decimal
            or not value.is_finite()
            or (value and not _PLAIN_LOW <= value.adjusted() <= _PLAIN_HIGH)
        ):
            return False
    return True


def _plain_int(value: object) -> bool:
    """Exactly an int (never a bool) within 2**53 (see _plain_event)."""
    return type(value) is int and -_PLAIN_INT < value < _PLAIN_INT


# Each of these reads every field of its event once, in straight lines: a loop over the
# fields cost about as much as the round trip it saves (tests/test_plain_marks.py checks
# that every field of each event is looked at)


def _plain_opened(event: PositionOpened) -> bool:
    position_id, symbol, reason, account = (
        event.position_id,
        event.symbol,
        event.open_reason,
        event.account,
    )
    margin, confidence, atr, adx, volatility = (
        event.real_initial_margin,
        event.confidence,
        event.atr,
        event.adx,
        event.volatility,
    )
    return (
        type(position_id) is str
        and type(symbol) is str
        and type(reason) is str
        and type(account) is str
        and (position_id + symbol + reason + account).isascii()
        and type(event.side) is Side
        and type(event.source) is Source
        and _plain_int(event.leverage)
        and _plain_int(event.position_idx)
        and _plain_numbers(event.qty, event.entry_price, event.fee)
        and (margin is None or _plain_number(margin))
        and (confidence is None or _plain_number(confidence))
        and (atr is None or _plain_number(atr))
        and (adx is None or _plain_number(adx))
        and (volatility is None or _plain_number(volatility))
    )


def _plain_exit(event: PartialExitRecorded | PositionClosed) -> bool:
    """A partial exit's or a close's check: the same fields but their optional text (note:
    the exit's rule, the close's exchange_ref)."""
    position_id, reason = event.position_id, event.reason
    # a close's exchange_ref, else a partial exit's rule (_PLAIN_EVENTS: exactly one of them)
    note = event.exchange_ref if isinstance(event, PositionClosed) else event.rule
    return (
        type(position_id) is str
        and type(reason) is str
        and (note is None or type(note) is str)
        and (position_id + reason + (note or "")).isascii()
        and type(event.source) is Source
        and type(event.pnl_estimated) is bool
        and _plain_numbers(event.qty, event.price, event.realized_pnl, event.fee)
    )


# The events of a position's own commands (`open_position`, `register_partial_exit`,
# `close_position` and the manager's), each with its check (see _plain_event)
_PLAIN_EVENTS: dict[type, Callable[[Any], bool]] = {
    PositionOpened: _plain_opened,
    PartialExitRecorded: _plain_exit,
    PositionClosed: _plain_exit,
}


def _plain_event(event: AnyEvent) -> bool:
    """Whether an event reads back as written without the decoder's round trip
    (`ensure_decodable`), as `_plain_mark` tells it of a mark, for the events of a position's
    own commands: every field exactly a type its struct declares (None only where it
    allows None; a `Side` or `Source` member, never its text; a bool only where a bool is
    declared), each Decimal finite and zero or within the commands' bounds, each int within
    2**53, its text ASCII (msgspec cannot write a lone surrogate; any other text is left to
    the round trip too). msgspec writes exactly those as their text and reads them back
    equal; anything else takes the round trip, which refuses it with InvalidValue as before
    (tests/test_plain_marks.py::test_a_plain_event_is_exactly_one_the_decoder_reads_back)."""
    check = _PLAIN_EVENTS.get(type(event))
    return _plain_mark(event) if check is None else check(event)


class _CommandDecider:
    """The decider of one checked command (`Ledger.execute`): what `_checked` makes of
    `lambda book: [Plan(e) for e in decide(book, command, limits)]`, in one call, the
    command's fields checked once (when it was submitted, see `decide_checked`), every event
    still shown to decode before it is staged. The writer asks for `events` (new events,
    no keys, occurring now: no Plans to make and read back)."""

    __slots__ = ("command", "limits")

    def __init__(self, command: AnyCommand, limits: Limits) -> None:
        self.command = command
        self.limits = limits

    def events(self, book: Book) -> list[AnyEvent]:
        """The command's events, each shown to decode; raises LedgerError."""
        events = decide_checked(book, self.command, self.limits)
        for event in events:
            if not _plain_event(event):
                ensure_decodable(event)
        return events

    def __call__(self, book: Book) -> list[Plan]:
        with ledger_context():
            return [Plan(event) for event in self.events(book)]


async def _first_wake(appended: anyio.Event, waiter: Waiter, timeout: float) -> None:
    """Return at a local append, a commit the store reports, or after timeout."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:

            async def local() -> None:
                await appended.wait()
                group.cancel_scope.cancel()

            async def remote() -> None:
                await waiter.wait(timeout)
                group.cancel_scope.cancel()

            group.start_soon(local)
            group.start_soon(remote)


def _checked_plan(plan: object) -> Plan:
    if not isinstance(plan, Plan):
        raise InvalidValue("plan", plan, f"a decider returns Plans, got {type(plan).__name__}")
    ensure_decodable(plan.event)
    if type(plan) is Plan and plan.key is None and plan.occurred_at is None:
        return plan  # nothing to normalise: the plan as it came
    key = None if plan.key is None else identifier("key", plan.key)
    when = plan.occurred_at
    if when is not None and not isinstance(when, datetime):
        raise InvalidValue("occurred_at", when, f"expected a datetime, got {type(when).__name__}")
    return Plan(plan.event, key, None if when is None else utc(when))


def _qty(
    qty: Number | None, notional: Number | None, entry: Decimal, qty_name: str, notional_name: str
) -> Decimal:
    if (qty is None) == (notional is None):
        raise InvalidValue(qty_name, qty, f"give exactly one of {qty_name} and {notional_name}")
    if qty is not None:
        return positive(qty_name, qty)
    return qty_from_notional(positive(notional_name, notional), entry)
