"""Which backend a location names, and moving logs between backends.

The one place outside each driver that knows the backends: a `postgresql://` (or
`postgres://`) URL is a PostgreSQL ledger, anything else a SQLite file. Everything above
`ledger/store/` takes a location and talks to the `EventStore` contract only.
"""

from __future__ import annotations

from pathlib import Path

from ledger.clock import Clock, system_clock
from ledger.errors import IntegrityError, StoreUnavailable
from ledger.store.base import ChainReport, ChainVerifier, EventStore
from ledger.store.sqlite import SQLiteEventStore, Synchronous

Location = str | Path


def is_url(location: Location) -> bool:
    """True for a PostgreSQL URL (the only kind of URL a ledger location can be)."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def describe(location: Location) -> str:
    """The location as it may appear in a message or a file: any password replaced by ***."""
    if is_url(location):
        from ledger.store.postgres import scrub

        return scrub(str(location))
    return str(location)


def make_store(
    location: Location,
    *,
    read_only: bool = False,
    synchronous: Synchronous = "FULL",
    busy_timeout_ms: int = 10_000,
    clock: Clock = system_clock,
) -> EventStore:
    """An unopened store for the location (see the module docstring)."""
    if is_url(location):
        # imported here so a SQLite-only bot never loads the PostgreSQL driver
        from ledger.store.postgres import PostgresEventStore

        return PostgresEventStore(
            str(location), read_only=read_only, lock_timeout_ms=busy_timeout_ms, clock=clock
        )
    return SQLiteEventStore(
        Path(location),
        synchronous=synchronous,
        busy_timeout_ms=busy_timeout_ms,
        read_only=read_only,
        clock=clock,
    )


async def copy_log(source: EventStore, target: EventStore, *, page_size: int = 5000) -> ChainReport:
    """Copy every row of source that target lacks, keeping seq, event ids and hashes.

    The target must be empty or a prefix of the source (same hash at its head): a copy can be
    brought up to date by running it again. Each page is checked as it goes and appended in
    one transaction. Returns the chain report of what the target now holds (the copied part
    verified row by row). Raises IntegrityError when the target is not a prefix of the source.
    """
    head = await target.head()
    if head.seq:
        theirs = await source.hash_at(head.seq)
        if theirs != head.hash:
            raise IntegrityError(
                head.seq, "the target is not a copy of this log (its head hash differs)"
            )
    check = ChainVerifier(track_versions=False)
    check.seq, check.hash = head.seq, head.hash
    async for rows in source.iterate_rows(after_seq=head.seq, page_size=page_size):
        for row in rows:
            check.feed(row)
        await target.import_rows(rows)
    return check.report()


async def backup_to_sqlite(store: EventStore, target: Path) -> None:
    """A consistent SQLite copy of the log at target: the portable audit file.

    SQLite ledgers use SQLite's own backup API; others are copied row by row.
    """
    if isinstance(store, SQLiteEventStore):
        await store.backup_to(target)
        return
    if target.exists():
        raise StoreUnavailable(f"{target} exists already")
    copy = SQLiteEventStore(target)
    await copy.open()
    try:
        await copy_log(store, copy)
    finally:
        await copy.close()
