"""Books as of a point: folded from the log alone, or from positions.json plus the tail."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
import msgspec

from ledger.audit.reading import HEAD, Bound, ScanStats, scan
from ledger.audit.vouched import Origin
from ledger.envelope import GENESIS_HASH, Recorded
from ledger.errors import SnapshotError
from ledger.events import PositionOpened
from ledger.snapshot_file import read_file
from ledger.store.base import EventStore
from projections.book import Book
from projections.snapshot import decode_snapshot


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
    origin: Origin | None = None  # a vouched book: where it came from, what was checked


async def book_at(
    store: EventStore,
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


async def load_book(store: EventStore, snapshot_path: Path) -> Replayed:
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


async def trusted_snapshot(store: EventStore, snapshot_path: Path) -> Book | None:
    """positions.json's book when its last seq and hash are the log's, else None."""
    try:
        raw = await anyio.to_thread.run_sync(read_file, snapshot_path)
    except OSError:  # unreadable for this user: the log alone tells the same
        return None
    if raw is None:
        return None
    try:
        book = decode_snapshot(raw)
    except SnapshotError:
        return None
    stored = GENESIS_HASH if book.last_seq == 0 else await store.hash_at(book.last_seq)
    return book if stored == book.last_hash else None
