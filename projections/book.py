"""The book: every position, the balance and the running statistics, folded from the log.

`apply` never raises on a stored event: the rules ran before it was stored, and an event the
book cannot place (a mark for an unknown position, say) is counted in `skipped`, not fatal.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Iterator, MutableMapping
from decimal import Decimal
from itertools import islice

from ledger.envelope import GENESIS_HASH, Recorded
from ledger.events import (
    BalanceObserved,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.values import Side, market_key
from projections import positions as fold
from projections.positions import Position
from projections.stats import Accumulators, SessionSummary, summarize


class Book:
    def __init__(self) -> None:
        self.open: dict[str, Position] = {}
        self.closed: MutableMapping[str, Position] = {}
        self.balance: Decimal | None = None
        self.available: Decimal | None = None
        self.acc = Accumulators()
        self.imported_files: MutableMapping[str, str] = {}
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.skipped: list[int] = []

    def apply(self, record: Recorded) -> None:
        """Fold one stored event in; records at or below last_seq are ignored (already in)."""
        if record.seq <= self.last_seq:
            return
        self.last_seq = record.seq
        self.last_hash = record.hash
        event = record.event
        at = record.occurred_at
        if isinstance(event, PositionMarked):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(record.seq)
            else:
                self.open[event.position_id] = fold.marked(position, event, at)
        elif isinstance(event, PositionOpened):
            if event.position_id in self.open or event.position_id in self.closed:
                self.skipped.append(record.seq)
                return
            position = fold.opened(event, at)
            self.open[event.position_id] = position
            self.acc.realize(-event.fee)
        elif isinstance(event, PartialExitRecorded):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(record.seq)
                return
            self.open[event.position_id] = fold.partly_exited(position, event, at)
            self.acc.realize(event.realized_pnl)
        elif isinstance(event, PositionClosed):
            position = self.open.pop(event.position_id, None)
            if position is None:
                self.skipped.append(record.seq)
                return
            done = fold.closed(position, event, at)
            self.closed[event.position_id] = done
            self.acc.realize(event.realized_pnl)
            self.acc.record_close(done)
        elif isinstance(event, FundingRecorded):
            position = self.open.get(event.position_id)
            if position is not None:
                self.open[event.position_id] = fold.funded(position, event)
            else:
                # settled while open, seen by a sync only after the bot closed the position
                closed = self.closed.get(event.position_id)
                if closed is None:
                    self.skipped.append(record.seq)
                    return
                amended = fold.funded(closed, event)
                self.closed[event.position_id] = amended
                self.acc.amend_close(closed, amended)
            self.acc.realize(event.amount)
        elif isinstance(event, PositionIncreased):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(record.seq)
                return
            self.open[event.position_id] = fold.increased(position, event)
            self.acc.realize(-event.fee)
        elif isinstance(event, BalanceObserved):
            self.balance = event.total
            self.available = event.available
        elif isinstance(event, HistoryImported):
            self.imported_files[event.file_sha256] = event.file_name

    def apply_all(self, records: Iterable[Recorded]) -> None:
        for record in records:
            self.apply(record)

    def copy(self) -> Book:
        """An independent copy; Positions are immutable, so sharing them is safe."""
        other = Book()
        other.open = dict(self.open)
        other.closed = dict(self.closed)
        other.balance = self.balance
        other.available = self.available
        other.acc = self.acc.copy()
        other.imported_files = dict(self.imported_files)
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
        other.skipped = list(self.skipped)
        return other

    def fork(self) -> Book:
        """A scratch copy to decide a batch of commands against, in time O(open positions).

        Closed positions and imports are overlaid (ChainMap) rather than copied, so the cost
        does not grow with history; the fork is for deciding, never for snapshots.
        """
        other = Book()
        other.open = dict(self.open)
        other.closed = ChainMap({}, self.closed)
        other.balance = self.balance
        other.available = self.available
        other.acc = self.acc.copy()
        other.imported_files = ChainMap({}, self.imported_files)
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
        return other

    def recently_closed(self, limit: int) -> Iterator[Position]:
        """Up to `limit` closed positions, the latest closed first (also on a fork)."""
        layers = self.closed.maps if isinstance(self.closed, ChainMap) else [self.closed]
        left = limit
        for layer in layers:  # a fork's own closes come first, then the book's
            for position in islice(reversed(layer.values()), left):  # type: ignore[call-overload]
                yield position
                left -= 1
            if left <= 0:
                return

    def get(self, position_id: str) -> Position | None:
        """An open or closed position by id."""
        return self.open.get(position_id) or self.closed.get(position_id)

    def open_for(self, symbol: str, side: Side | None = None) -> Position | None:
        """The first open position on symbol, in any spelling (and side, when given)."""
        market = market_key(symbol)
        for position in self.open.values():
            if market_key(position.symbol) == market and (side is None or position.side is side):
                return position
        return None

    def summary(self) -> SessionSummary:
        return summarize(self.acc, list(self.open.values()), self.balance, self.available)


def fold_records(records: Iterable[Recorded]) -> Book:
    """A book built from nothing by folding records in order."""
    book = Book()
    book.apply_all(records)
    return book
