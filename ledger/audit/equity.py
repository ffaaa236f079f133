"""The realized equity curve and its closes, for the plot and the stats."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.audit.reading import HEAD, Bound, scan
from ledger.events import PositionClosed
from ledger.store.base import EventStore
from ledger.values import ZERO
from projections.book import Book


class EquityPoint(msgspec.Struct, frozen=True, array_like=True):
    at: datetime
    equity: Decimal
    peak: Decimal


class ClosePoint(msgspec.Struct, frozen=True, array_like=True):
    at: datetime
    equity: Decimal
    pnl: Decimal
    position_id: str


class EquityCurve(msgspec.Struct, kw_only=True):
    """Realized equity after every realizing event (fees, exits, closes, funding); the book's
    statistics are whole, but it holds only the positions still open."""

    points: list[EquityPoint]
    closes: list[ClosePoint]
    book: Book
    end: datetime | None = None  # the last event's time: the curve runs flat up to it


async def equity_curve(
    store: EventStore, *, bound: Bound = HEAD, check: bool = True
) -> EquityCurve:
    book = Book()
    points: list[EquityPoint] = []
    closes: list[ClosePoint] = []
    equity = ZERO
    end: datetime | None = None
    async for record in scan(store, bound=bound, check=check):
        book.apply(record)
        end = record.occurred_at
        acc = book.acc
        if acc.equity != equity:
            equity = acc.equity
            points.append(EquityPoint(record.occurred_at, equity, acc.peak_equity))
        event = record.event
        if isinstance(event, PositionClosed):
            # the curve needs the close, not the position: the book keeps only what is open
            done = book.closed.pop(event.position_id, None)
            if done is not None:
                closes.append(
                    ClosePoint(record.occurred_at, equity, done.realized_pnl, done.position_id)
                )
    return EquityCurve(points=points, closes=closes, book=book, end=end)
