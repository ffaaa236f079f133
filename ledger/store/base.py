"""The event store contract every backend honours, and the envelope bookkeeping they share.

DESIGN: one transaction per group, run by whoever holds the writer role
--------------------------------------------------------------------------
A command's cost was hand-offs, not SQLite: one aiosqlite thread hop per statement (BEGIN,
tail, versions, existing ids, INSERT, COMMIT) and an event-loop wake-up around each, about
0.8 ms of a 1.0 ms command against a 0.2 ms fsync. So the write contract is synchronous:

- `run_transaction(unit)` runs a whole transaction as one call on the thread holding the
  store's *writer role* (`ledger.store.writer`): take the write lock (BEGIN IMMEDIATE), read
  the tail other processes wrote (SQLite only once its insert shows there is one: DESIGN of
  `run_transaction` in `ledger/store/sqlite.py`), call `unit(tx)` (which applies the tail,
  decides each job on a fork of the book, stages its rows: encode, chain hash), insert,
  COMMIT. `tx` is used synchronously: `tail`, `find_existing`, `load_versions`, `stage`,
  `savepoint` / `rollback_to` (one job's rows out, the others stay), `committed_after` (a
  reload of the book under the lock). The write connection is used only by the role's
  holder (SQLite: a stdlib `sqlite3` connection; PostgreSQL: a psycopg 3 sync connection,
  which pipelines the statements). Reads and subscriptions keep their async API (aiosqlite
  for SQLite) on their own connection, so they never see a transaction's uncommitted rows.
- Who holds the role (see DESIGN in `ledger/store/writer.py`): the caller itself when
  nobody is writing (no hand-off: a plain thread inline; an asyncio task on its loop after
  one yield, so the tasks scheduled with it join its group, and never waiting for a lock
  there: `WouldWait`); otherwise the store's writer thread, which takes every job queued
  meanwhile as one group (group commit: one transaction, one fsync) with one hand-off each
  way. Each caller is woken once.
- Plain appends do not look their event ids up first (a query per 500 ids was a third of a
  1,000-event append): UNIQUE(event_id) refuses a stored one, and the group is staged again,
  asking (`DuplicateEventId`). The Ledger asks only for the keys its deciders give.
- Nothing is acknowledged before COMMIT returns; a unit that raises, an insert or a COMMIT
  that fails rolls the whole transaction back and every caller of the group hears an error.

Nothing outside `ledger/store/` knows which backend it talks to: the Ledger hands units of
work to `run_transaction` through `group_commit`, and reads through `iterate`.
"""

from __future__ import annotations

import abc
from collections import ChainMap
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from itertools import count, repeat
from operator import attrgetter, floordiv, is_, sub
from typing import TypeVar

import anyio
import msgspec

from ledger.codec import (
    BODY_BUFFER,
    SCHEMA_VERSION,
    FactRow,
    FoldPage,
    decode_current,
    decode_event,
    encode_into,
    event_type,
)
from ledger.envelope import (
    FRESH_SHA256,
    GENESIS_HASH,
    Fact,
    NewEvent,
    Recorded,
    chain_hash,
    encode_header,
)
from ledger.errors import (
    IntegrityError,
    LedgerError,
    OutcomeUnknown,
    StoreError,
    StoreUnavailable,
    VersionConflict,
)
from ledger.store.read_only import ReadOnlyOpen
from ledger.store.writer import (
    Completion,
    GroupCommit,
    Job,
    WouldWait,
    WriterThread,
    deferred_completion,
    signalled_here,
)
from ledger.values import from_micros, to_micros

T = TypeVar("T")
J = TypeVar("J", bound=Job)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)  # as ledger.values.to_micros counts
_MICROSECOND = timedelta(microseconds=1)
# staging a batch this long or longer goes column by column (see StoreTransaction._stage_many):
# where it costs less CPU than the per-event loop, for a 1,000-event mix as for a run of marks
# sharing one time (measured: even at about 32, 10% faster from 48, 10-20% from 100)
STAGE_MANY_FROM = 32
_event_id_of = attrgetter("event_id")
_stream_of = attrgetter("stream")
_event_of = attrgetter("event")
_occurred_of = attrgetter("occurred_at")
_PLAIN = {datetime}
_name_of = attrgetter("__name__")


class StagedRow(msgspec.Struct, frozen=True):
    """One row as it will be inserted: what the hash covers, plus the decoded record."""

    seq: int
    stream: str
    version: int
    event_id: str
    type: str
    schema_version: int
    occurred_us: int
    recorded_us: int
    body: bytes
    hash: str


class ChainReport(msgspec.Struct, frozen=True, kw_only=True):
    """The result of a full verification of the log."""

    events: int
    streams: int
    last_seq: int
    last_hash: str


class Head(msgspec.Struct):
    """The store's view of where the log ends: seq, hash, and every stream's version."""

    seq: int = 0
    hash: str = GENESIS_HASH
    stream_versions: dict[str, int] = msgspec.field(default_factory=dict)

    def copy(self) -> Head:
        return Head(self.seq, self.hash, dict(self.stream_versions))


class _Draft(msgspec.Struct):
    """A transaction's view of the head: its own changes over the store's, in O(1) to start,
    so a commit costs what it writes, not what the log holds. Two plain dicts, not a
    ChainMap: staging asks for a stream's version once per event. Made from a Head as
    `_Draft(head.seq, head.hash, {}, head.stream_versions)`: a Struct, made in C on every
    transaction (no __init__ frame)."""

    seq: int
    hash: str
    own: dict[str, int]  # the streams this transaction staged to: their staged versions
    base: dict[str, int]  # the store's (Head.stream_versions), read-only here

    def known(self, stream: str) -> bool:
        return stream in self.own or stream in self.base

    def version(self, stream: str) -> int:
        """The stream's version as staged so far (0 for a stream not written yet)."""
        version = self.own.get(stream)
        return self.base.get(stream, 0) if version is None else version

    @property
    def stream_versions(self) -> ChainMap[str, int]:
        """Every known stream's version, staged changes over the store's (read-only use)."""
        return ChainMap(self.own, self.base)

    def publish(self, head: Head) -> None:
        """Make the committed changes the store's head, its seq last (as a stale head is
        moved over a tail): an interrupt half-way leaves the head behind its log (the next
        transaction reads the tail from there again), never its seq ahead of the hash the next
        append chains on (tests/test_postgres_stale_head_interrupts.py)."""
        head.stream_versions.update(self.own)
        head.hash = self.hash
        head.seq = self.seq


class ChainVerifier:
    """Checks rows in seq order: no gaps, consecutive stream versions, hashes, decodable bodies.

    track_versions=False skips the stream versions (they need memory per stream; an edited
    version breaks the hash chain anyway) for constant-memory checks of huge logs.
    """

    def __init__(self, *, track_versions: bool = True) -> None:
        self.seq = 0
        self.hash = GENESIS_HASH
        self.stream_versions: dict[str, int] = {}
        self._track_versions = track_versions

    def feed(self, row: StagedRow) -> Recorded:
        """The decoded record; raises IntegrityError at the first row that does not follow."""
        expected_seq = self.seq + 1
        if row.seq != expected_seq:
            raise IntegrityError(
                expected_seq,
                f"seq gap: seq {expected_seq} is missing (the next row is seq {row.seq})",
            )
        if type(row.body) is not bytes:
            # SQLite keeps whatever type a hand edit gives it; the other columns of a wrong
            # type only change the header, so the hash below refuses them
            raise IntegrityError(row.seq, f"body is {type(row.body).__name__}, not bytes")
        if self._track_versions:
            expected_version = self.stream_versions.get(row.stream, 0) + 1
            if row.version != expected_version:
                raise IntegrityError(
                    row.seq,
                    f"stream {row.stream!r} version {row.version}, expected {expected_version}",
                )
        digest = chain_hash(
            self.hash,
            seq=row.seq,
            stream=row.stream,
            version=row.version,
            event_id=row.event_id,
            occurred_us=row.occurred_us,
            recorded_us=row.recorded_us,
            schema_version=row.schema_version,
            body=row.body,
        )
        if digest != row.hash:
            raise IntegrityError(row.seq, "hash mismatch: the row or one before it was altered")
        record = record_from_row(row)
        if event_type(record.event) != row.type:
            raise IntegrityError(
                row.seq, f"type column {row.type!r} != body {event_type(record.event)!r}"
            )
        self.seq = row.seq
        self.hash = row.hash
        if self._track_versions:
            self.stream_versions[row.stream] = row.version
        return record

    def report(self) -> ChainReport:
        return ChainReport(
            events=self.seq,
            streams=len(self.stream_versions),
            last_seq=self.seq,
            last_hash=self.hash,
        )


class DuplicateEventId(StoreError):
    """An inserted event_id is already stored: raised by `run_transaction` (after rolling
    back) when a unit staged an id without asking `find_existing` first."""


def _stage_appends(tx: StoreTransaction, group: list[_PendingAppend], *, ask: bool) -> None:
    """Stage each batch of the group, each all-or-nothing on its own. Without `ask`, ids
    are not looked up first (one query per 500 ids, a third of a batch's cost): new ids are
    the rule, and a stored one makes the insert fail, and the group is staged again asking.
    Each call starts from scratch (a store may call a unit again: see `run_transaction`)."""
    if not ask and len(group) == 1:  # the usual group of one caller: no sets, no lookups
        pending = group[0]
        pending.error, pending.result = None, []
        batch = pending.batch
        expected = pending.expected
        if not expected and len(batch) == 1:  # one event: stage()'s own one-event path
            new = batch[0]
            stream = new.stream
            head = tx.head
            if not tx.versions_complete and stream not in head.own and stream not in head.base:
                tx.load_versions((stream,))
            try:
                pending.result = tx._stage_one(new)
            except Exception as bad:  # this batch alone fails (as below)
                pending.error = StoreError(f"cannot store this batch: {bad!r}")
            return
        if not expected and len(batch) >= STAGE_MANY_FROM:
            # a long batch, staged column by column: its streams read once, here, for both
            # the versions to load and the staging (`_stage_many`), not a set of them first
            of_each = list(map(_stream_of, batch))
            distinct = dict.fromkeys(of_each)
            if not tx.versions_complete:
                known = tx.head.known
                unknown = [stream for stream in distinct if not known(stream)]
                if unknown:
                    tx.load_versions(unknown)
            try:
                staged = tx._stage_many(batch, of_each, distinct)
                # None: an id repeats, or is staged already: stage()'s loop says which
                pending.result = tx.stage(batch) if staged is None else staged
            except Exception as bad:  # this batch alone fails (as below)
                pending.error = StoreError(f"cannot store this batch: {bad!r}")
            return
        if not tx.versions_complete:
            known = tx.head.known
            # each stream asked once (a 1,000-event batch has a few), its events taken in C
            unknown = [st for st in {*map(_stream_of, batch), *expected} if not known(st)]
            if unknown:
                tx.load_versions(unknown)
        try:
            pending.result = tx.stage(batch, expected_versions=expected)
        except VersionConflict as conflict:
            pending.error = conflict
        except Exception as bad:  # this batch alone fails (as below)
            pending.error = StoreError(f"cannot store this batch: {bad!r}")
        return
    for pending in group:
        pending.error, pending.result = None, []
    existing = (
        tx.find_existing([new.event_id for pending in group for new in pending.batch])
        if ask
        else {}
    )
    streams = {new.stream for pending in group for new in pending.batch}
    for pending in group:
        streams.update(pending.expected)
    tx.load_versions(streams)
    for pending in group:
        batch = pending.batch
        fresh = [new for new in batch if new.event_id not in existing] if existing else batch
        try:
            staged = tx.stage(fresh, expected_versions=pending.expected)
        except VersionConflict as conflict:
            pending.error = conflict
            continue
        except Exception as bad:  # this batch alone fails; the others commit
            pending.error = StoreError(f"cannot store this batch: {bad!r}")
            continue
        if existing:
            records = iter(staged)
            pending.result = [existing.get(new.event_id) or next(records) for new in batch]
        else:
            pending.result = staged


def _group_failed(group: list[_PendingAppend], failure: BaseException) -> None:
    """Give each batch of a group whose transaction failed (nothing of it stored) its error:
    the one staging gave it, else the failure (a StoreError unless the ledger's own)."""
    error = (
        failure
        if isinstance(failure, LedgerError)
        else StoreError(f"append failed, nothing of this group was stored: {failure!r}")
    )
    for pending in group:
        pending.error = pending.error or error
        pending.result = []


def _outcome(pending: _PendingAppend) -> list[Recorded]:
    if pending.error is not None:
        raise pending.error
    return pending.result


def record_from_row(row: StagedRow) -> Recorded:
    """Decode a stored row; raises IntegrityError when its body does not decode."""
    try:
        event = decode_event(row.body, row.schema_version)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IntegrityError(row.seq, f"body does not decode: {exc}") from None
    return Recorded(
        seq=row.seq,
        stream=row.stream,
        version=row.version,
        event_id=row.event_id,
        occurred_at=from_micros(row.occurred_us),
        recorded_at=from_micros(row.recorded_us),
        schema_version=row.schema_version,
        event=event,
        hash=row.hash,
    )


def read_filter(
    placeholder: str, *, to_seq: int | None, until: datetime | None, stream: str | None
) -> tuple[str, list[object]]:
    """The WHERE of a read of events after a seq (its first parameter), in the backend's
    placeholder style ("?" or "%s"), and the parameters that follow the seq."""
    where = [f"seq > {placeholder}"]
    extra: list[object] = []
    if to_seq is not None:
        where.append(f"seq <= {placeholder}")
        extra.append(to_seq)
    if until is not None:
        where.append(f"occurred_us <= {placeholder}")
        extra.append(to_micros(until))
    if stream is not None:
        where.append(f"stream = {placeholder}")
        extra.append(stream)
    return " AND ".join(where), extra


def facts_from_rows(rows: Sequence[FactRow]) -> list[Fact]:
    """Decode rows straight into facts; raises IntegrityError naming the first bad body."""
    decode = decode_current
    try:
        return [
            (
                seq,
                occurred_us,
                decode(body) if schema == SCHEMA_VERSION else decode_event(body, schema),
            )
            for seq, occurred_us, schema, body in rows
        ]
    except (msgspec.DecodeError, msgspec.ValidationError):
        pass
    for seq, _, schema, body in rows:  # the rare bad page: find its first bad row
        try:
            decode_event(body, schema)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IntegrityError(seq, f"body does not decode: {exc}") from None
    raise AssertionError("unreachable: a page failed to decode but every row decodes")


# A stored row as the database returns it, in StagedRow's field order.
RowTuple = tuple[int, str, int, str, str, int, int, int, bytes, str]
# A row as staging makes it for the insert (what `StoreTransaction.rows` holds): a RowTuple
# whose body may be a bytearray (see `encode_body`), the same bytes.
InsertTuple = tuple[int, str, int, str, str, int, int, int, bytes | bytearray, str]


def staged_row(row: InsertTuple) -> StagedRow:
    """A row of `StoreTransaction.rows` as a StagedRow (its body as bytes, as stored)."""
    seq, stream, version, event_id, type_, schema, occurred_us, recorded_us, body, digest = row
    return StagedRow(
        seq, stream, version, event_id, type_, schema, occurred_us, recorded_us, bytes(body), digest
    )


def row_tuple(row: StagedRow) -> RowTuple:
    """The row as it is inserted (what `StoreTransaction.rows` holds)."""
    return (
        row.seq,
        row.stream,
        row.version,
        row.event_id,
        row.type,
        row.schema_version,
        row.occurred_us,
        row.recorded_us,
        row.body,
        row.hash,
    )


def records_from_rows(rows: Iterable[RowTuple]) -> list[Recorded]:
    """Decode stored rows straight into records; raises IntegrityError on a bad body.

    The fast path of a rebuild: no StagedRow on the way, and rows committed together (one
    recorded_us) share one recorded_at datetime.
    """
    records: list[Recorded] = []
    last_us = -1
    recorded_at = from_micros(0)
    for seq, stream, version, event_id, _, schema, occurred_us, recorded_us, body, digest in rows:
        try:
            event = decode_event(body, schema)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise IntegrityError(seq, f"body does not decode: {exc}") from None
        if recorded_us != last_us:
            last_us = recorded_us
            recorded_at = from_micros(recorded_us)
        records.append(
            Recorded(
                seq=seq,
                stream=stream,
                version=version,
                event_id=event_id,
                occurred_at=from_micros(occurred_us),
                recorded_at=recorded_at,
                schema_version=schema,
                event=event,
                hash=digest,
            )
        )
    return records


class Savepoint(msgspec.Struct, frozen=True):
    """Where a transaction's staging stood, to discard one job's rows (see `rollback_to`)."""

    rows: int
    seq: int
    hash: str


class StoreTransaction(abc.ABC):
    """One write transaction, used synchronously on the thread holding the writer role.

    `tail` holds what other writers appended since this store last looked; callers apply it
    before deciding anything. Staging is pure bookkeeping: rows are inserted and committed
    when the unit of work returns (see `EventStore.run_transaction`); nothing is durable before.
    """

    def __init__(self, head: Head, tail: list[Recorded], recorded_at: datetime) -> None:
        self.head = _Draft(head.seq, head.hash, {}, head.stream_versions)
        self.tail = tail
        self.recorded_us = (
            (recorded_at - _EPOCH) // _MICROSECOND  # to_micros(), inlined
            if type(recorded_at) is datetime and recorded_at.tzinfo is not None
            else to_micros(recorded_at)  # naive, or a subclass: see values.plain_datetime
        )
        self.recorded_at = recorded_at
        # rows as they will be inserted, in StagedRow's field order (see InsertTuple): plain
        # tuples, so the insert takes them as they are, with no struct or astuple per row
        self.rows: list[InsertTuple] = []
        self._staged_ids: dict[str, Recorded] = {}

    @abc.abstractmethod
    def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        """Stored records (committed or staged here) for any of these event ids."""

    @abc.abstractmethod
    def committed_after(self, seq: int) -> list[Recorded]:
        """Every committed record after seq, read under the write lock (a reload of the book
        from the log; the tail covers the usual case)."""

    # False where the store keeps only the stream versions it has seen (see load_versions)
    versions_complete = True

    def load_versions(self, streams: Iterable[str]) -> None:
        """Make sure the current version of each stream is known before staging to it.

        A store may keep only the versions it has seen (start-up then need not read every
        stream of a long log); this fetches the rest in one call. Stores that know them all
        need do nothing.
        """
        return None

    def assume_new(self, streams: Iterable[str]) -> None:
        """`load_versions` of streams the caller expects to hold no events yet (the position
        a command opens: the book has none by that id). A store that reads versions may stage
        to them as new without reading, provided it proves them new before it commits, and
        runs the unit again on their stored versions when one is not (SQLite: see
        `run_transaction`): the caller sees what `load_versions` would have given it.
        """
        self.load_versions(streams)

    def savepoint(self) -> Savepoint:
        """Mark the staging so far; `rollback_to` discards what is staged after the mark."""
        return Savepoint(len(self.rows), self.head.seq, self.head.hash)

    def rollback_to(self, mark: Savepoint) -> None:
        """Unstage every row staged since `mark` (one job failed; the others still commit)."""
        dropped = self.rows[mark.rows :]
        del self.rows[mark.rows :]
        versions = self.head.own
        for _, stream, version, event_id, *_ in reversed(dropped):
            versions[stream] = version - 1  # versions are consecutive in a stream
            self._staged_ids.pop(event_id, None)
        self.head.seq = mark.seq
        self.head.hash = mark.hash

    def stage(
        self,
        batch: Sequence[NewEvent],
        *,
        expected_versions: Mapping[str, int] | None = None,
    ) -> list[Recorded]:
        """Give each new event its seq, version and hash; raises VersionConflict, staging nothing.

        An event_id already staged in this transaction returns the staged record instead.
        """
        if expected_versions:
            for stream, expected in expected_versions.items():
                actual = self.head.version(stream)
                if actual != expected:
                    raise VersionConflict(stream, expected, actual)
        size = len(batch)
        if size == 1:
            return self._stage_one(batch[0])
        if size >= STAGE_MANY_FROM:
            staged = self._stage_many(batch)
            if staged is not None:
                return staged
        # One pass, locals only, for short batches (a command's events); long ones go column
        # by column (_stage_many: from STAGE_MANY_FROM events on, where it is the faster of
        # the two, measured). What staging adds to SQLite's own work for 1,000 events (about
        # 2.1-2.3 ms of CPU in _stage_many, measured step by step on the benchmarks' mix):
        # the chain's sha256 0.71 (a copy of a set-up context, two updates and hexdigest each:
        # OpenSSL's per-call work, more than the hashing itself), the body's JSON 0.45, the
        # time 0.25 (timedelta // timedelta: none when the batch shares one time object), the
        # header's JSON 0.17 and its join with the body 0.07, the envelopes' columns 0.12,
        # the records, rows and staged ids 0.26, the versions 0.06. Staging cannot overlap
        # the inserts: sqlite3 takes the GIL back after every row, and a thread holding it
        # makes each take wait the 5 ms switch interval.
        head = self.head
        own, base = head.own, head.base
        staged_ids = self._staged_ids
        rows = self.rows
        recorded_us, recorded_at = self.recorded_us, self.recorded_at
        complete = self.versions_complete
        schema = SCHEMA_VERSION
        into, header, fresh = encode_into, encode_header, FRESH_SHA256
        epoch, micro = _EPOCH, _MICROSECOND
        seq, digest = head.seq, head.hash
        mark_rows, mark_seq, mark_hash = len(rows), seq, digest  # a Savepoint, made if needed
        prev = digest.encode("ascii")
        last_at: datetime | None = None
        occurred_us = 0
        records: list[Recorded] = []
        try:
            for new in batch:
                event_id = new.event_id
                already = staged_ids.get(event_id)
                if already is not None:
                    records.append(already)
                    continue
                stream = new.stream
                version = own.get(stream)
                if version is None:
                    version = base.get(stream)
                    if version is None:
                        if not complete:
                            raise StoreError(
                                f"stream {stream!r}: load_versions() before staging to it"
                            )
                        version = 0
                version += 1
                seq += 1
                event = new.event
                body = bytearray(BODY_BUFFER)  # encode_body(), inlined
                into(event, body)
                occurred_at = new.occurred_at
                if occurred_at is not last_at:  # a command's events share one time
                    last_at = occurred_at
                    occurred_us = (
                        (occurred_at - epoch) // micro  # to_micros(), inlined
                        if type(occurred_at) is datetime and occurred_at.tzinfo is not None
                        else to_micros(occurred_at)
                    )
                # chain_digest(), inlined: sha256(prev_hash || header || "\n" || body)
                sha = fresh()
                sha.update(prev)
                sha.update(
                    header((seq, stream, version, event_id, occurred_us, recorded_us, schema))
                )
                sha.update(b"\n")
                sha.update(body)
                digest = sha.hexdigest()
                prev = digest.encode("ascii")
                rows.append(
                    (
                        seq,
                        stream,
                        version,
                        event_id,
                        type(event).__name__,  # event_type(), inlined
                        schema,
                        occurred_us,
                        recorded_us,
                        body,
                        digest,
                    )
                )
                own[stream] = version
                record = Recorded(
                    seq=seq,
                    stream=stream,
                    version=version,
                    event_id=event_id,
                    occurred_at=occurred_at,
                    recorded_at=recorded_at,
                    schema_version=schema,
                    event=event,
                    hash=digest,
                )
                staged_ids[event_id] = record
                records.append(record)
        except BaseException:
            # a body that cannot be encoded, a stream whose version is unknown: this batch
            # stages nothing, and what was staged before it stays as it was
            self.rollback_to(Savepoint(mark_rows, mark_seq, mark_hash))
            raise
        head.seq = seq
        head.hash = digest
        return records

    def _stage_one(self, new: NewEvent) -> list[Recorded]:
        """`stage([new])` (no expected versions) for one event, the usual append and command:
        the loop's body without the loop. Setting the loop up (two dozen locals, a savepoint's
        marks) cost more than its one pass, and a single append runs with caches cold after
        the last commit's fsync (see DESIGN in ledger/store/sqlite.py): every step counts
        there. The same hash, row and record as the loop's (tests/test_staged_hashes.py
        holds the two together); everything is computed before anything is staged."""
        event_id = new.event_id
        staged_ids = self._staged_ids
        if staged_ids:  # a command's transaction has staged nothing before it
            already = staged_ids.get(event_id)
            if already is not None:
                return [already]
        head = self.head
        own = head.own
        stream = new.stream
        version = own.get(stream)
        if version is None:
            version = head.base.get(stream)
            if version is None:
                if not self.versions_complete:
                    raise StoreError(f"stream {stream!r}: load_versions() before staging to it")
                version = 0
        version += 1
        prev_seq, prev_hash = head.seq, head.hash
        seq = prev_seq + 1
        event = new.event
        body = bytearray(BODY_BUFFER)  # encode_body(), inlined
        encode_into(event, body)
        occurred_at = new.occurred_at
        recorded_us = self.recorded_us
        occurred_us = (
            recorded_us  # a command's events occur when recorded (Ledger._decide_one)
            if occurred_at is self.recorded_at
            else (occurred_at - _EPOCH) // _MICROSECOND  # to_micros(), inlined
            if type(occurred_at) is datetime and occurred_at.tzinfo is not None
            else to_micros(occurred_at)
        )
        # chain_digest(), inlined: sha256(prev_hash || header || "\n" || body)
        sha = FRESH_SHA256()
        sha.update(prev_hash.encode("ascii"))
        sha.update(
            encode_header(
                (seq, stream, version, event_id, occurred_us, recorded_us, SCHEMA_VERSION)
            )
        )
        sha.update(b"\n")
        sha.update(body)
        digest = sha.hexdigest()
        record = Recorded(  # positional, in Recorded's field order
            seq,
            stream,
            version,
            event_id,
            occurred_at,
            self.recorded_at,
            SCHEMA_VERSION,
            event,
            digest,
        )
        rows = self.rows
        mark_rows = len(rows)
        try:
            rows.append(
                (
                    seq,
                    stream,
                    version,
                    event_id,
                    type(event).__name__,  # event_type(), inlined
                    SCHEMA_VERSION,
                    occurred_us,
                    recorded_us,
                    body,
                    digest,
                )
            )
            own[stream] = version
            staged_ids[event_id] = record
            head.seq = seq
            head.hash = digest
        except BaseException:  # interrupted half-way: nothing of it stays staged
            self.rollback_to(Savepoint(mark_rows, prev_seq, prev_hash))
            raise
        return [record]

    def _stage_many(
        self,
        batch: Sequence[NewEvent],
        streams: list[str] | None = None,
        distinct: dict[str, None] | None = None,
    ) -> list[Recorded] | None:
        """`stage` for a long batch, column by column: each step one C-level pass (map, zip)
        over the batch, so the interpreter runs a loop body only for the chain's hashes (one
        sha256 each, in order). Everything is computed before anything is staged, so a body
        that cannot be encoded or a stream whose version is unknown stages nothing. None,
        staging nothing, when an id repeats in the batch or was staged already in this
        transaction: `stage`'s loop returns the staged record for those. `streams` (each
        event's, in order) and `distinct` (dict.fromkeys of them), when the caller read them
        already (`_stage_appends`, loading their versions)."""
        head = self.head
        own, base = head.own, head.base
        if streams is None:
            streams = list(map(_stream_of, batch))
        if distinct is None:
            distinct = dict.fromkeys(streams)
        counters: dict[str, Iterator[int]] = {}  # each stream's next versions
        for stream in distinct:
            version = own.get(stream)
            if version is None:
                version = base.get(stream)
                if version is None:
                    if not self.versions_complete:
                        raise StoreError(f"stream {stream!r}: load_versions() before staging to it")
                    version = 0
            counters[stream] = count(version + 1)
        ids = list(map(_event_id_of, batch))
        versions = list(map(next, map(counters.__getitem__, streams)))  # in C
        events = list(map(_event_of, batch))
        bodies = list(map(bytearray, repeat(BODY_BUFFER, len(events))))  # encode_body(), in C
        for _ in map(encode_into, events, bodies):
            pass
        times = list(map(_occurred_of, batch))
        occurred: Sequence[int]
        first = times[0]
        # (the last time checked first: a batch of several times is told without a pass)
        if times[-1] is first and all(map(is_, times, repeat(first))):
            # one time object for the whole batch (a group's marks, a command's events): one
            # conversion, not one per event (a fifth of staging a run of marks). The same
            # object, not equal ones: equal is not the same instant (two times of one DST
            # zone compare their wall clocks, fold ignored: the repeated hour's 02:30 fold=0
            # == fold=1, an hour apart; a datetime subclass's __eq__ may say anything)
            occurred = [to_micros(first)] * len(times)
        elif set(map(type, times)) == _PLAIN:  # no subclass: see values.plain_datetime
            try:  # to_micros() of aware datetimes, in C
                occurred = list(
                    map(floordiv, map(sub, times, repeat(_EPOCH)), repeat(_MICROSECOND))
                )
            except TypeError:  # a naive one among them: taken as UTC
                occurred = list(map(to_micros, times))
        else:
            occurred = list(map(to_micros, times))
        seq = head.seq
        # made once: a range hands out a new int object on each of its three passes below
        seqs = list(range(seq + 1, seq + len(ids) + 1))
        recorded_us, schema = self.recorded_us, SCHEMA_VERSION
        # the chain: sha256(prev_hash || header || "\n" || body), as chain_hash() makes it;
        # what is hashed after prev_hash made first, column by column (a lazy map through
        # the loop below interleaves encoding with hashing, 0.15 ms slower for 1,000)
        texts = list(
            map(
                b"\n".join,
                zip(
                    map(
                        encode_header,
                        zip(
                            seqs,
                            streams,
                            versions,
                            ids,
                            occurred,
                            repeat(recorded_us),
                            repeat(schema),
                        ),
                    ),
                    bodies,
                    strict=True,
                ),
            )
        )
        # each hash starts from a copy of a fresh context (FRESH_SHA256: OpenSSL's set-up for
        # sha256(data) costs more, 0.06 ms for 1,000), fed prev_hash and the text in turn
        # (two calls cost less than a buffer joined for one: 0.08 ms for 1,000)
        fresh = FRESH_SHA256
        prev = head.hash.encode("ascii")
        digests: list[str] = []
        add_digest = digests.append
        for text in texts:
            sha = fresh()
            sha.update(prev)
            sha.update(text)
            digest = sha.hexdigest()
            prev = digest.encode("ascii")
            add_digest(digest)
        types = map(_name_of, map(type, events))  # event_type(), in C
        records = list(  # positional, in C (Recorded's field order)
            map(
                Recorded,
                seqs,
                streams,
                versions,
                ids,
                times,
                repeat(self.recorded_at),
                repeat(schema),
                events,
                digests,
            )
        )
        # The batch's ids, each with its record: one dict, which also tells an id repeated
        # in the batch (fewer keys than events) without a set of them made first
        by_id = dict(zip(ids, records, strict=True))
        staged_ids = self._staged_ids
        if len(by_id) != len(ids) or (staged_ids and not staged_ids.keys().isdisjoint(by_id)):
            return None  # nothing staged: `stage`'s loop takes the batch
        rows = self.rows
        mark = Savepoint(len(rows), head.seq, head.hash)
        try:
            rows.extend(
                zip(
                    seqs,
                    streams,
                    versions,
                    ids,
                    types,
                    repeat(schema),
                    occurred,
                    repeat(recorded_us),
                    bodies,
                    digests,
                )
            )
            if staged_ids:
                staged_ids.update(by_id)
            else:  # the usual first batch of a transaction: the dict as it is
                self._staged_ids = by_id
            for stream, counter in counters.items():
                own[stream] = next(counter) - 1
            head.seq = seqs[-1]
            head.hash = digests[-1]
        except BaseException:
            self.rollback_to(mark)
            raise
        return records


class Waiter(abc.ABC):
    """Wakes a follower of the log when something may have been appended."""

    @abc.abstractmethod
    async def wait(self, timeout: float) -> None:
        """Return at the next commit or after timeout seconds, whichever is first."""


class _Sleeper(Waiter):
    async def wait(self, timeout: float) -> None:
        await anyio.sleep(timeout)


@asynccontextmanager
async def _polling() -> AsyncIterator[Waiter]:
    yield _Sleeper()


class _PendingAppend(msgspec.Struct):
    """One caller's batch in a group of appends (a GroupCommit job); a Struct: made in C,
    without an __init__ frame, on every append."""

    batch: list[NewEvent]
    expected: dict[str, int]
    done: Completion
    result: list[Recorded] = msgspec.field(default_factory=list)
    error: BaseException | None = None


class EventStore(abc.ABC):
    """An append-only, hash-chained log of events.

    `append` is atomic for the batch, idempotent by event_id, raises VersionConflict on a stale
    expected version (appending nothing), and returns only once the batch is durable.

    Writing (see DESIGN in the module docstring): a backend owns one writer role (and thread)
    and implements `run_transaction`, which runs a caller's unit of work synchronously inside
    one write transaction on the thread holding the role. Everything else here (group
    commit, the async and blocking entries) is built on those two and shared by every
    backend.
    """

    # how a read-only SQLite view was opened when it reads without locks (torn reads are
    # checked through it, see ledger.store.read_only); None for every other store
    read_only_open: ReadOnlyOpen | None = None

    def __init__(self) -> None:
        self._writer: WriterThread | None = None
        self._appends: GroupCommit[_PendingAppend] | None = None

    # -- what a backend implements -----------------------------------------------------------

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect, start the writer thread (`_start_writer`), prepare; raises StoreUnavailable."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish queued writes (`_stop_writer`), then disconnect. Idempotent."""

    @abc.abstractmethod
    def run_transaction(self, unit: Callable[[StoreTransaction], T]) -> T:
        """Run `unit(tx)` inside one write transaction; call only holding the writer role.

        In order, all on the calling thread, with no hand-off in between: take the
        write lock, exclusive across every writer of the log in any process (SQLite: BEGIN
        IMMEDIATE); read the tail, the records other writers committed since this store last
        looked, into `tx.tail` (the store counts them as seen from then on, whatever happens
        next: they are committed); call `unit(tx)`, which applies the tail, decides, and
        stages rows through `tx`; insert the staged rows; commit durably; make the draft head
        the store's. Returns what `unit` returned, once the commit is durable.

        `unit` may be called more than once, each time on a fresh `tx` inside a fresh
        transaction (SQLite decides first on the head it saw and, should the insert show
        that another process committed after it, rolls back and calls unit again after the
        tail: see DESIGN in `ledger/store/sqlite.py`). So a unit starts from scratch on each
        call: it sets every outcome it reports, and only the last call's are kept.

        If `unit` raises anything (BaseException included), or the insert or the commit
        fails, the transaction is rolled back, no staged row is stored, and the exception
        propagates (DuplicateEventId when a staged event_id is already stored); driver errors
        become a StoreError that names the cause (disk full, read-only, permission denied,
        file-size limit, locked). Raises StoreError, StoreUnavailable (not open, read-only,
        called without the writer role), WouldWait (where the role may not wait for the
        lock, before anything is done).
        """

    # -- the writer thread -------------------------------------------------------------------

    # whether an asyncio task may run its group on its loop (see ledger.store.writer): only
    # where a transaction does no network I/O and cannot wait for a lock without saying so
    inline_async_writes = True

    def _start_writer(self, name: str) -> WriterThread:
        if self._writer is None:
            self._writer = WriterThread(name)
            self._appends = GroupCommit(
                self._writer, self._commit_appends, inline_async=self.inline_async_writes
            )
        return self._writer

    def _finish_appends(self) -> None:
        """Run the appends queued so far, those behind a caller running its group inline
        included; call holding the role (the writer thread, when closing)."""
        if self._appends is not None:
            self._appends.flush()

    def _stop_writer(self) -> None:
        writer, self._writer = self._writer, None
        self._appends = None
        if writer is not None:
            writer.stop()

    @property
    def writer(self) -> WriterThread:
        """The thread every write transaction of this store runs on; raises StoreUnavailable."""
        if self._writer is None:
            raise StoreUnavailable("the store is not open")
        return self._writer

    def check_writer_thread(self) -> None:
        """Raise StoreUnavailable unless the caller holds the writer role (backends call this)."""
        if self._writer is None or not self._writer.on_thread:
            raise StoreUnavailable(
                "write transactions run only holding the store's writer role (on the writer"
                " thread, or inline in the caller that took it)"
            )

    def group_commit(
        self, process: Callable[[list[J]], None], *, max_group: int = 1000
    ) -> GroupCommit[J]:
        """A queue whose jobs are taken in groups, one transaction per group, by whoever holds
        the writer role (`process` may raise WouldWait before doing anything; see
        ledger.store.writer)."""
        return GroupCommit(
            self.writer, process, max_group=max_group, inline_async=self.inline_async_writes
        )

    async def transact(self, unit: Callable[[StoreTransaction], T]) -> T:
        """`run_transaction(unit)` on the writer thread, awaited: one hand-off each way."""
        return await self.writer.call(lambda: self.run_transaction(unit))

    def transact_blocking(self, unit: Callable[[StoreTransaction], T]) -> T:
        """The same, blocking the calling thread."""
        return self.writer.call_blocking(lambda: self.run_transaction(unit))

    # -- appends -------------------------------------------------------------------------------

    async def append(
        self,
        batch: Sequence[NewEvent],
        *,
        expected_versions: Mapping[str, int] | None = None,
    ) -> list[Recorded]:
        """Append atomically; a known event_id returns its stored record instead of a new one.

        Concurrent callers share one transaction (group commit): the writer thread commits
        every batch queued so far together, each batch still all-or-nothing on its own. A
        caller cancelled after queueing may still have its batch committed by the group (retry
        with the same event ids: idempotency makes that safe). Raises VersionConflict,
        StoreError.
        """
        appends = self._appends  # _append_queue(), _outcome(): inlined, as on every append
        if appends is None:
            raise StoreUnavailable("the store is not open")
        # deferred: run_now makes its future only if someone else may settle it
        pending = _PendingAppend(
            list(batch), dict(expected_versions) if expected_versions else {}, deferred_completion()
        )
        waiting = appends.run_now(pending)
        if waiting is not None:
            await waiting
        if pending.error is not None:
            raise pending.error
        return pending.result

    def append_blocking(
        self,
        batch: Sequence[NewEvent],
        *,
        expected_versions: Mapping[str, int] | None = None,
    ) -> list[Recorded]:
        """`append` for a plain thread (not the writer thread itself)."""
        pending = _PendingAppend(
            list(batch), dict(expected_versions or {}), Completion(blocking=True)
        )
        self._append_queue().run_blocking(pending)
        return _outcome(pending)

    def _append_queue(self) -> GroupCommit[_PendingAppend]:
        if self._appends is None:
            raise StoreUnavailable("the store is not open")
        return self._appends

    def _commit_appends(self, group: list[_PendingAppend]) -> None:
        """One transaction for the group, each batch all-or-nothing on its own; settles each.

        Settling is the try's last step, and every way out of it settles again (as
        `Ledger._commit_group` does): an interrupt between the COMMIT and the group settled
        would otherwise leave a stored group unsettled, which the writer takes for never run
        and runs again (`GroupCommit._untake`). The one way out that does not settle: an
        interrupt that may be a signal's, the group surely not stored (see
        `_interrupted_appends`)."""
        dones = [pending.done for pending in group]
        try:
            try:
                self.run_transaction(lambda tx: _stage_appends(tx, group, ask=False))
            except DuplicateEventId:  # some id was stored already: stage again, asking
                for pending in group:
                    pending.error, pending.result = None, []
                self.run_transaction(lambda tx: _stage_appends(tx, group, ask=True))
            Completion.set_all(dones)
        except WouldWait:  # nothing is stored: the writer thread runs the group again
            for pending in group:
                pending.error, pending.result = None, []
            raise
        except BaseException as failure:
            try:
                if isinstance(failure, Exception):
                    _group_failed(group, failure)
                    return
                # KeyboardInterrupt, SystemExit: the thread running the group (a caller
                # inline) hears it, once settled (or the group put back)
                if not self._interrupted_appends(group, failure):
                    dones = []
                raise
            finally:
                Completion.set_all(dones)

    def _interrupted_appends(self, group: list[_PendingAppend], failure: BaseException) -> bool:
        """Each batch's outcome, after an interrupt of the thread running the group (see
        `_appended_anyway`); False when the group is to be left unsettled. Landed after the
        COMMIT returned (a signal's handler runs right after a call): stored, and each
        appender hears so (a batch that failed alone keeps its error;
        tests/test_adv_interrupt_after_commit.py). Surely not stored, and the interrupt may
        be a signal's (`signalled_here`: this thread's own, never its followers'): unsettled,
        each batch as before it ran, so the leader's recovery puts the group back, its own
        batch taken out, and the writer thread runs the others' (as the Ledger's command
        groups, tests/test_append_leader_interrupts.py). Not stored otherwise: each hears the
        failure. Not known: each hears OutcomeUnknown, never that nothing was stored."""
        stored = self._appended_anyway(group)
        if stored:
            return True
        if stored is False and signalled_here():
            for pending in group:
                pending.error, pending.result = None, []
            return False
        _group_failed(
            group,
            failure
            if stored is False
            else OutcomeUnknown.interrupted(failure, redo="appending it"),
        )
        return True

    def _appended_anyway(self, group: list[_PendingAppend]) -> bool | None:
        """Whether a group of appends whose transaction raised an interrupt is stored all the
        same: each record its batches staged (those that did not fail alone) is in the log
        with its hash (see `stored_as_staged`); None when that cannot be told."""
        staged = [record for pending in group if pending.error is None for record in pending.result]
        return bool(staged) and self.stored_as_staged(staged)[0]

    def stored_as_staged(self, staged: Sequence[Recorded]) -> tuple[bool | None, list[Recorded]]:
        """After a write transaction raised an interrupt (a KeyboardInterrupt or SystemExit
        of the thread running it, which may land right after its COMMIT returned): whether
        every record it staged is in the log at its seq with its hash, and the tail this
        asking read (events committed after this store's head: the head takes them, the
        caller's own among them). Asked in a transaction of its own that stages nothing;
        anything it cannot tell (it fails, or would wait) is (None, []): a caller may run
        again only what was surely not stored."""
        tail: list[Recorded] = []

        def ask(tx: StoreTransaction) -> dict[str, Recorded]:
            tail[:] = tx.tail  # the last call's (a store may call a unit again)
            return tx.find_existing([record.event_id for record in staged])

        try:
            found = self.run_transaction(ask)
        except BaseException:  # cannot tell (another interrupt included)
            return None, []
        stored = all(
            (mine := found.get(record.event_id)) is not None
            and mine.seq == record.seq
            and mine.hash == record.hash
            for record in staged
        )
        return stored, tail

    @abc.abstractmethod
    def iterate_rows(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[StagedRow]]:
        """Raw stored rows in seq order (what `verify` checks and `copy` moves)."""

    async def import_rows(self, rows: Sequence[StagedRow]) -> None:
        """Append rows copied verbatim from another log, keeping their seq, ids and hashes.

        Raises IntegrityError (appending nothing) unless they continue this log's chain.
        """

        def unit(tx: StoreTransaction) -> None:
            check = ChainVerifier(track_versions=False)
            check.seq, check.hash = tx.head.seq, tx.head.hash
            for row in rows:
                check.feed(row)
            tx.rows.extend(row_tuple(row) for row in rows)
            for row in rows:
                tx.head.seq, tx.head.hash = row.seq, row.hash
                tx.head.own[row.stream] = row.version

        await self.transact(unit)

    @property
    def location(self) -> str:
        """Where the log is, as it may be shown (never with a password)."""
        return type(self).__name__

    def follow(self) -> AbstractAsyncContextManager[Waiter]:
        """Something to wait on for the next commit; stores that cannot tell just poll."""
        return _polling()

    @abc.abstractmethod
    def iterate(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Recorded]]:
        """Pages of records in seq order: after a seq, up to a seq or an occurred_at time."""

    def _fact_row_pages(
        self,
        *,
        after_seq: int,
        to_seq: int | None,
        until: datetime | None,
        page_size: int,
    ) -> AsyncIterator[Sequence[FactRow]] | None:
        """Pages of only the four columns a fold reads (FactRow), in seq order; None where a
        backend cannot read fewer than whole records. The rest of a row (hash, ids, stream,
        version) would cost a Python object per cell, more than half of a full-row scan."""
        return None

    async def iterate_facts(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Fact]]:
        """Pages of (seq, occurred_us, event) in seq order: what a rebuild folds.

        Raises IntegrityError on a body that does not decode. Backends that can read only
        those columns say so through `_fact_row_pages`; otherwise the rest of each record is
        dropped.
        """
        rows = self._fact_row_pages(
            after_seq=after_seq, to_seq=to_seq, until=until, page_size=page_size
        )
        if rows is not None:
            async for page in rows:
                yield facts_from_rows(page)
            return
        async for records in self.iterate(
            after_seq=after_seq, to_seq=to_seq, until=until, page_size=page_size
        ):
            yield [(r.seq, to_micros(r.occurred_at), r.event) for r in records]

    async def iterate_fold_facts(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[FoldPage]:
        """What `Book.apply_facts` folds, in seq order: pages of rows (FactRow) where the
        backend reads only the fold's columns (`_fact_row_pages`), which the fold decodes itself,
        only as far as it folds them (a mark superseded by the next mark of its position is
        never decoded: `verify` reads every body); otherwise iterate_facts' pages. The fold
        raises IntegrityError on a body it needs that does not decode."""
        rows = self._fact_row_pages(
            after_seq=after_seq, to_seq=to_seq, until=until, page_size=page_size
        )
        if rows is not None:
            async for page in rows:
                yield page
            return
        async for facts in self.iterate_facts(
            after_seq=after_seq, to_seq=to_seq, until=until, page_size=page_size
        ):
            yield facts

    async def fold_pages(
        self,
        consume: Callable[[FoldPage], None],
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        page_size: int = 5000,
    ) -> None:
        """consume(page) for each page iterate_fold_facts would yield, in order: a rebuild.

        A backend may read and consume on one worker thread of its own (a whole fold for one
        hand-off, as SQLite does), so consume must change nothing another task reads
        meanwhile (a book of its own). Raises what consume raises, StoreUnavailable; a
        cancelled caller stops it after the page it is on."""
        async for page in self.iterate_fold_facts(
            after_seq=after_seq, to_seq=to_seq, until=until, page_size=page_size
        ):
            consume(page)
            await anyio.lowlevel.checkpoint()  # other tasks run, and a cancel lands, between pages

    async def end(self) -> Head:
        """Where the committed log ends now: seq and hash only (no stream versions, which
        only a writer needs and which cost a read per stream)."""
        head = await self.head()
        return Head(head.seq, head.hash)

    async def read(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
    ) -> list[Recorded]:
        """Every matching record in seq order (see `iterate` for large reads)."""
        records: list[Recorded] = []
        async for page in self.iterate(
            after_seq=after_seq, to_seq=to_seq, until=until, stream=stream
        ):
            records.extend(page)
        return records

    @abc.abstractmethod
    async def head(self) -> Head:
        """Where the committed log ends now (read from storage, not from a cache)."""

    @abc.abstractmethod
    async def hash_at(self, seq: int) -> str | None:
        """The hash stored at seq, or None when there is no such event."""

    @abc.abstractmethod
    async def verify_chain(self) -> ChainReport:
        """Recompute the whole chain; raises IntegrityError naming the first bad seq."""
