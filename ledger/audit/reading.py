"""Opening a log read-only and reading it in seq order, with the cheap chain check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path

import anyio
import msgspec

from ledger.envelope import GENESIS_HASH, Recorded
from ledger.errors import IntegrityError, StoreUnavailable
from ledger.store.base import ChainVerifier, EventStore, StagedRow, record_from_row
from ledger.store.factory import Location, is_url, make_store
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import to_micros

PAGE_SIZE = 5000
Progress = Callable[[int], None]


# -- opening -------------------------------------------------------------------------------


@asynccontextmanager
async def open_read_only(
    db_path: Location, *, busy_timeout_ms: int = 10_000
) -> AsyncIterator[EventStore]:
    """The log opened read-only (a SQLite file, or a PostgreSQL URL: a primary or a hot
    standby); raises StoreUnavailable (missing, locked, corrupt, foreign).

    The one place the audit names a backend; everything else speaks the store contract (and
    asks for `end()`, not `head()`: a reader needs no stream versions)."""
    store: EventStore
    if is_url(db_path):
        store = make_store(db_path, read_only=True, busy_timeout_ms=busy_timeout_ms)
    else:
        path = Path(db_path)
        if path.is_dir():
            raise StoreUnavailable(f"{path} is a directory, not a ledger database")
        store = SQLiteEventStore(path, read_only=True, busy_timeout_ms=busy_timeout_ms)
    try:
        await store.open()
    except BaseException:
        # whatever open() got to, close it: a live aiosqlite thread keeps the process alive
        with anyio.CancelScope(shield=True):
            await store.close()
        raise
    try:
        yield store
    except Exception as exc:
        if store.read_only_open is not None:  # read without locks: a torn read shows here
            try:
                store.read_only_open.check_unchanged()
            except StoreUnavailable as torn:
                raise torn from exc
        raise
    finally:
        with anyio.CancelScope(shield=True):
            await store.close()
    if store.read_only_open is not None:
        store.read_only_open.check_unchanged()


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
    store: EventStore,
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


async def check_chain(store: EventStore, *, progress: Progress | None = None) -> ScanStats:
    """The cheap check over the whole log; raises IntegrityError at the first bad row."""
    stats = ScanStats()
    async for _ in scan(store, check=True, stats=stats, progress=progress):
        pass
    return stats
