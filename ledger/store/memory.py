"""An in-process event store for fast tests: the same contract, nothing durable."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from ledger.clock import Clock, system_clock
from ledger.envelope import Recorded
from ledger.errors import StoreUnavailable
from ledger.store.base import (
    ChainReport,
    ChainVerifier,
    DuplicateEventId,
    EventStore,
    Head,
    StagedRow,
    StoreTransaction,
    record_from_row,
    staged_row,
)
from ledger.values import to_micros

T = TypeVar("T")


class _MemoryTransaction(StoreTransaction):
    def __init__(self, store: MemoryEventStore, recorded_at: datetime) -> None:
        super().__init__(store._head, [], recorded_at)
        self._store = store

    def committed_after(self, seq: int) -> list[Recorded]:
        return self._store._records[max(seq, 0) : len(self._store._rows)]

    def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
        found: dict[str, Recorded] = {}
        for event_id in event_ids:
            index = self._store._by_event_id.get(event_id)
            if index is not None:
                found[event_id] = self._store._records[index]
            elif event_id in self._staged_ids:
                found[event_id] = self._staged_ids[event_id]
        return found


class MemoryEventStore(EventStore):
    def __init__(self, *, clock: Clock = system_clock) -> None:
        super().__init__()
        self._clock = clock
        self._rows: list[StagedRow] = []
        self._records: list[Recorded] = []
        self._by_event_id: dict[str, int] = {}
        self._head = Head()

    async def open(self) -> None:
        self._start_writer("memory-store-writer")

    async def close(self) -> None:
        writer = self._writer
        if writer is not None:  # the appends queued behind a caller writing inline commit
            with contextlib.suppress(StoreUnavailable):
                await writer.call(self._finish_appends)
        self._stop_writer()

    def run_transaction(self, unit: Callable[[StoreTransaction], T]) -> T:
        self.check_writer_thread()
        tx = _MemoryTransaction(self, self._clock())
        result = unit(tx)  # raises: nothing staged is kept
        rows = [staged_row(row) for row in tx.rows]
        taken = [row.event_id for row in rows if row.event_id in self._by_event_id]
        if taken:  # as the database's UNIQUE(event_id) would refuse the insert
            raise DuplicateEventId(f"event_id {taken[0]!r} is stored already")
        records = [record_from_row(row) for row in rows]
        for row, record in zip(rows, records, strict=True):
            self._by_event_id[row.event_id] = len(self._rows)
            # the record first: readers take len(self._rows) as the committed end
            self._records.append(record)
            self._rows.append(row)
        head = self._head.copy()
        tx.head.publish(head)
        self._head = head  # one assignment: readers see the old head or the new one
        return result

    async def iterate(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Recorded]]:
        count = len(self._rows)
        last = count if to_seq is None else min(to_seq, count)
        until_us = None if until is None else to_micros(until)
        page: list[Recorded] = []
        for index in range(max(after_seq, 0), last):
            row = self._rows[index]
            if stream is not None and row.stream != stream:
                continue
            if until_us is not None and row.occurred_us > until_us:
                continue
            page.append(self._records[index])
            if len(page) >= page_size:
                yield page
                page = []
        if page:
            yield page

    async def iterate_rows(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[StagedRow]]:
        last = len(self._rows) if to_seq is None else min(to_seq, len(self._rows))
        until_us = None if until is None else to_micros(until)
        rows = [
            row
            for row in self._rows[max(after_seq, 0) : last]
            if (stream is None or row.stream == stream)
            and (until_us is None or row.occurred_us <= until_us)
        ]
        for start in range(0, len(rows), page_size):
            yield rows[start : start + page_size]

    async def head(self) -> Head:
        return self._head.copy()

    async def hash_at(self, seq: int) -> str | None:
        if 1 <= seq <= len(self._rows):
            return self._rows[seq - 1].hash
        return None

    async def verify_chain(self) -> ChainReport:
        verifier = ChainVerifier()
        for row in self._rows:
            verifier.feed(row)
        return verifier.report()
