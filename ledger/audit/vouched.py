"""Books the log vouches for, without re-folding it: a trusted state plus the tail.

A read command starts from the latest state whose seq and hash are the log's own (positions.json,
or a checkpoint of `ledger.audit.checkpoints`), folds the events after it, and checks the hash
chain from the last point `ledger verify` checked whole up to the head. So a command costs
the tail, not the log, and still fails on any row altered, dropped or moved since that verify.
What is not re-checked: rows up to the verified point (verify read them; a row changed there
since would leave the chain broken at that row, which the next verify finds). Each command
prints what it checked and from where (`Origin.describe`).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import cast

import anyio
import msgspec

from ledger.audit.checkpoints import Checkpoints, Stored, Verified
from ledger.audit.reading import PAGE_SIZE, Bound
from ledger.envelope import GENESIS_HASH
from ledger.errors import SnapshotError
from ledger.snapshot_file import read_file
from ledger.store.base import ChainVerifier, EventStore
from ledger.values import to_micros
from projections.book import Book
from projections.snapshot import decode_snapshot, written_by_ledger


class Origin(msgspec.Struct, kw_only=True):
    """Where a book came from and what was checked on the way."""

    state: str  # "positions.json", "checkpoint" or "the log's start"
    state_seq: int
    folded: int  # events folded on top of the state
    checked_from: int  # the first seq whose chain was checked (head + 1: none to check)
    checked_to: int
    verified: Verified | None  # the point the chain check started from, if verify recorded one
    notes: list[str] = msgspec.field(default_factory=list)  # states not used, and why
    saved: list[int] = msgspec.field(default_factory=list)  # checkpoints written

    def describe(self) -> str:
        if self.state == "the log's start":
            source = f"folded from the log's start ({self.folded:,} events)"
        else:
            source = (
                f"from {self.state} at seq {self.state_seq:,} (its hash is the log's) "
                f"+ {self.folded:,} events folded"
            )
        return f"{source}; {self.chain()}"

    def chain(self) -> str:
        """What the chain check covered."""
        if self.checked_from > self.checked_to:
            chain = "no rows after the verified point to check"
        else:
            chain = f"chain checked seq {self.checked_from:,}..{self.checked_to:,}"
        if self.verified is not None and self.verified.seq:
            when = self.verified.at.strftime("%Y-%m-%d %H:%M:%S UTC")
            chain += f" (seq 1..{self.verified.seq:,} by `ledger verify` at {when})"
        elif self.checked_from <= self.checked_to:
            chain += " (no `ledger verify` recorded: the whole chain)"
        return chain


class Start(msgspec.Struct, kw_only=True):
    book: Book
    state: str
    max_occurred_us: int | None  # None: unknown (positions.json)


async def verified_point(
    store: EventStore, checkpoints: Checkpoints, head_seq: int, notes: list[str]
) -> Verified | None:
    """The last point verify recorded, if the log still has its hash there."""
    verified: Verified | None = await anyio.to_thread.run_sync(checkpoints.verified)
    if verified is None:
        return None
    if verified.seq > head_seq or await store.hash_at(verified.seq) != verified.hash:
        notes.append(
            f"the point `ledger verify` recorded (seq {verified.seq:,}) is not in the log as "
            "it was verified: the whole chain is checked"
        )
        return None
    return verified


async def check_chain_from(store: EventStore, verified: Verified | None, *, to_seq: int) -> int:
    """Check the chain after the verified point up to to_seq; returns the first seq checked.

    Raises IntegrityError at the first row that does not follow."""
    chain = ChainVerifier(track_versions=False)
    if verified is not None:
        chain.seq, chain.hash = verified.seq, verified.hash
    start = chain.seq + 1
    async for rows in store.iterate_rows(after_seq=chain.seq, to_seq=to_seq, page_size=PAGE_SIZE):
        for row in rows:
            chain.feed(row)
    return start


async def _start(
    store: EventStore,
    snapshot_path: Path | None,
    checkpoints: Checkpoints,
    *,
    to_seq: int,
    until_us: int | None,
    notes: list[str],
) -> Start:
    """The latest state at or before the bound that the log vouches for."""
    candidates: list[tuple[int, str, str, Stored | None]] = []
    raw: bytes | None = None
    if snapshot_path is not None and until_us is None:  # positions.json keeps no times
        try:
            raw = await anyio.to_thread.run_sync(read_file, snapshot_path)
        except OSError as exc:  # unreadable for this user: a cache, the log tells the same
            notes.append(f"positions.json not used: cannot read it ({exc.strerror or exc})")
            raw = None
        mark = None if raw is None else written_by_ledger(raw)
        if mark is not None and mark[0] <= to_seq:
            candidates.append((mark[0], mark[1], "positions.json", None))
    for kept in await anyio.to_thread.run_sync(checkpoints.stored):
        if kept.seq <= to_seq and (until_us is None or kept.max_occurred_us <= until_us):
            candidates.append((kept.seq, kept.hash, "checkpoint", kept))
    candidates.sort(key=lambda c: c[0], reverse=True)
    for seq, digest, kind, stored in candidates:
        actual = GENESIS_HASH if seq == 0 else await store.hash_at(seq)
        if actual != digest:
            notes.append(f"{kind} at seq {seq:,} does not match the log's hash there: not used")
            continue
        if stored is None:
            assert raw is not None
            try:
                book = decode_snapshot(raw)
            except SnapshotError as exc:
                notes.append(f"positions.json not used: {exc}")
                continue
            return Start(book=book, state=kind, max_occurred_us=None)
        loaded = await anyio.to_thread.run_sync(checkpoints.load, seq)
        if loaded is None or (loaded.last_seq, loaded.last_hash) != (seq, digest):
            notes.append(f"checkpoint at seq {seq:,} does not decode: not used")
            continue
        return Start(book=loaded, state=kind, max_occurred_us=stored.max_occurred_us)
    return Start(book=Book(), state="the log's start", max_occurred_us=0)


async def fold_saving(
    store: EventStore,
    start: Start,
    checkpoints: Checkpoints,
    *,
    to_seq: int,
    until: datetime | None,
    saved: list[int],
) -> Book:
    """Fold the log after the start up to the bound, keeping a checkpoint at every K-th seq
    crossed (only for a fold of a whole prefix: with a time bound the book is not one)."""
    book = start.book
    max_us = start.max_occurred_us
    saving = until is None and max_us is not None and checkpoints.path is not None
    have: set[int] = set()  # checkpoints ahead that match the log (the others are rewritten)
    if saving:
        for stored in await anyio.to_thread.run_sync(checkpoints.stored):
            if (
                book.last_seq < stored.seq <= to_seq
                and await store.hash_at(stored.seq) == stored.hash
            ):
                have.add(stored.seq)
    async for page in store.iterate_fold_facts(
        after_seq=book.last_seq, to_seq=to_seq, until=until, page_size=PAGE_SIZE
    ):
        if not saving:
            book.apply_facts(page, last_hash=book.last_hash)
            continue
        assert max_us is not None
        done = 0
        for i, fact in enumerate(page):
            # a fact (seq, occurred_us, event) or a row (seq, occurred_us, schema, body)
            seq, occurred_us = cast("tuple[int, int]", fact[:2])
            if occurred_us > max_us:
                max_us = occurred_us
            if checkpoints.due(seq) and seq > book.last_seq and seq not in have:
                book.apply_facts(page[done : i + 1], last_hash=book.last_hash)
                done = i + 1
                book.last_hash = await store.hash_at(seq) or book.last_hash
                if await anyio.to_thread.run_sync(checkpoints.save, book, max_us):
                    saved.append(seq)
                    have.add(seq)
        book.apply_facts(page[done:], last_hash=book.last_hash)
    return book


async def chain_origin(store: EventStore, checkpoints: Checkpoints, head_seq: int) -> Origin:
    """Check the chain from the last verified point to the head (for reads that fold nothing
    of their own, like a position's history); raises IntegrityError."""
    notes: list[str] = []
    verified = await verified_point(store, checkpoints, head_seq, notes)
    checked_from = await check_chain_from(store, verified, to_seq=head_seq)
    return Origin(
        state="the log's start",
        state_seq=0,
        folded=0,
        checked_from=checked_from,
        checked_to=head_seq,
        verified=verified,
        notes=notes,
    )


async def vouched_book(
    store: EventStore,
    checkpoints: Checkpoints,
    *,
    snapshot_path: Path | None,
    bound: Bound,
    head_seq: int,
) -> tuple[Book, Origin]:
    """The book at bound from a vouched state plus the tail, the chain checked from the last
    verified point to the head. Raises IntegrityError (the chain), StoreUnavailable."""
    notes: list[str] = []
    verified = await verified_point(store, checkpoints, head_seq, notes)
    checked_from = await check_chain_from(store, verified, to_seq=head_seq)
    to_seq = head_seq if bound.seq is None else min(bound.seq, head_seq)
    until_us = None if bound.time is None else to_micros(bound.time)
    start = await _start(
        store, snapshot_path, checkpoints, to_seq=to_seq, until_us=until_us, notes=notes
    )
    state_seq = start.book.last_seq
    saved: list[int] = []
    book = await fold_saving(
        store, start, checkpoints, to_seq=to_seq, until=bound.time, saved=saved
    )
    last_hash = await store.hash_at(book.last_seq) if book.last_seq else GENESIS_HASH
    if last_hash is not None:
        book.last_hash = last_hash
    if checkpoints.problem:
        notes.append(f"checkpoints: {checkpoints.problem}")
    origin = Origin(
        state=start.state,
        state_seq=state_seq,
        folded=book.last_seq - state_seq,
        checked_from=checked_from,
        checked_to=head_seq,
        verified=verified,
        notes=notes,
        saved=saved,
    )
    return book, origin
