"""The realized equity curve and its closes, for the plot and the stats."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.audit.reading import HEAD, Bound, scan
from ledger.audit.scope import in_account
from ledger.events import PositionClosed
from ledger.store.base import EventStore
from ledger.values import ZERO
from projections.book import Book
from projections.stats import Accumulators


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
    """Realized equity after every realizing event (fees, exits, closes, funding, amendments)
    of one account, or of the whole fleet (account None)."""

    points: list[EquityPoint]
    closes: list[ClosePoint]
    book: Book
    account: str | None = None
    equity: Decimal = ZERO  # the realized equity at the end (the last point's)
    end: datetime | None = None  # the last event's time: the curve runs flat up to it


async def equity_curve(
    store: EventStore, *, bound: Bound = HEAD, check: bool = True, account: str | None = None
) -> EquityCurve:
    """The curve of one account (its own realized cash flows) or of the fleet (account None)."""
    book = Book()
    points: list[EquityPoint] = []
    closes: list[ClosePoint] = []
    closed: set[str] = set()
    equity = ZERO
    end: datetime | None = None
    async for record in scan(store, bound=bound, check=check):
        book.apply(record)
        end = record.occurred_at
        acc = book.acc if account is None else book.accounts.get(account, _NONE)
        if acc.equity != equity:
            equity = acc.equity
            points.append(EquityPoint(record.occurred_at, equity, acc.peak_equity))
        event = record.event
        if isinstance(event, PositionClosed):
            # closed positions stay in the book: a PnlAmended or a FundingRecorded arriving
            # after the close still corrects them (and so the curve), as it does for `stats`
            done = book.closed.get(event.position_id)
            if done is not None and event.position_id not in closed:  # not a skipped repeat
                closed.add(event.position_id)
                if in_account(account, done.account):
                    closes.append(
                        ClosePoint(record.occurred_at, equity, done.realized_pnl, done.position_id)
                    )
    return EquityCurve(
        points=points, closes=closes, book=book, end=end, account=account, equity=equity
    )


_NONE = Accumulators()  # an account with no cash flow yet: read only, never realized into
