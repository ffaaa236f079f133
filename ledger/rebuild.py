"""Folding the log into a Book the fast way: only the columns a fold reads, marks folded lazily.

Start-up, `Ledger.as_of`, the audit's checkpoints and the rebuild benchmark all fold through
here, so the figures measured are the ones users get.
"""

from __future__ import annotations

from datetime import datetime

from ledger.codec import FoldPage
from ledger.errors import StoreError
from ledger.store.base import EventStore
from projections.book import Book


async def fold_log(
    store: EventStore,
    book: Book | None = None,
    *,
    to_seq: int | None = None,
    until: datetime | None = None,
    page_size: int = 5000,
) -> Book:
    """The book (a new one by default) with the log's events after its last seq folded in,
    up to a seq or an occurred_at time. Raises IntegrityError for a body the fold reads that
    does not decode, StoreUnavailable, StoreError. Neither the chain nor a body the fold never
    reads (a mark superseded by the next mark of its position) is checked here: `ledger verify`
    and the audit reads check both (see ledger.audit).

    A book given may be folded on a worker thread (EventStore.fold_pages): no other task may
    read it until this returns."""
    book = Book() if book is None else book
    start = book.last_seq
    folding = book

    def consume(page: FoldPage) -> None:
        # facts carry no hash: the last one is read once, below
        folding.apply_facts(page, last_hash=folding.last_hash)

    await store.fold_pages(
        consume, after_seq=start, to_seq=to_seq, until=until, page_size=page_size
    )
    if book.last_seq != start:
        last_hash = await store.hash_at(book.last_seq)
        if last_hash is None:
            raise StoreError(f"seq {book.last_seq} was read but has no hash in the log")
        book.last_hash = last_hash
    return book
