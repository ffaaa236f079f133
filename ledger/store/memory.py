"""An in-process event store for fast tests: the same contract, nothing durable."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime

import anyio

from ledger.clock import Clock, system_clock
from ledger.envelope import Recorded
from ledger.store.base import (
    ChainReport,
    ChainVerifier,
    EventStore,
    Head,
    StagedRow,
    StoreTransaction,
    record_from_row,
)
from ledger.values import to_micros


class _MemoryTransaction(StoreTransaction):
    def __init__(self, store: MemoryEventStore, recorded_at: datetime) -> None:
        super().__init__(store._head, [], recorded_at)
        self._store = store

    async def find_existing(self, event_ids: Sequence[str]) -> dict[str, Recorded]:
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
        self._lock = anyio.Lock()
        self._rows: list[StagedRow] = []
        self._records: list[Recorded] = []
        self._by_event_id: dict[str, int] = {}
        self._head = Head()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[StoreTransaction]:
        async with self._lock:
            tx = _MemoryTransaction(self, self._clock())
            yield tx
            for row in tx.rows:
                self._by_event_id[row.event_id] = len(self._rows)
                self._rows.append(row)
                self._records.append(record_from_row(row))
            tx.head.publish(self._head)

    async def iterate(
        self,
        *,
        after_seq: int = 0,
        to_seq: int | None = None,
        until: datetime | None = None,
        stream: str | None = None,
        page_size: int = 5000,
    ) -> AsyncIterator[list[Recorded]]:
        last = len(self._records) if to_seq is None else min(to_seq, len(self._records))
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
