"""Exports: closed positions as trades, and the events and trades CSV columns."""

from __future__ import annotations

import typing
from collections.abc import AsyncIterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

from ledger.audit.reading import Progress, scan
from ledger.audit.scope import in_account
from ledger.envelope import Recorded
from ledger.events import AnyEvent, PositionClosed
from ledger.store.base import EventStore
from ledger.values import ZERO, to_micros
from projections.book import Book
from projections.positions import Position


class Trade(msgspec.Struct, kw_only=True):
    """One closed position, as a row of the trades export."""

    position_id: str
    symbol: str
    side: str
    open_time: datetime
    close_time: datetime
    duration_s: Decimal
    entry_price: Decimal
    exit_price: Decimal
    avg_exit_price: Decimal
    qty: Decimal
    notional: Decimal
    leverage: int
    partial_exits: int
    partial_exit_pnl: Decimal
    close_pnl: Decimal
    realized_pnl: Decimal
    fees: Decimal
    funding: Decimal
    roe_pct: Decimal
    open_reason: str
    close_reason: str
    source: str
    pnl_estimated: bool
    close_seq: int


def trade_of(position: Position, close: PositionClosed, seq: int) -> Trade:
    exits = position.partial_exits
    exited_qty = sum((e.qty for e in exits), ZERO) + close.qty
    exited_value = sum((e.qty * e.price for e in exits), ZERO) + close.qty * close.price
    close_time = position.close_time or position.open_time
    micros = to_micros(close_time) - to_micros(position.open_time)
    return Trade(
        position_id=position.position_id,
        symbol=position.symbol,
        side=position.side.value,
        open_time=position.open_time,
        close_time=close_time,
        duration_s=Decimal(micros) / 1_000_000,
        entry_price=position.entry_price,
        exit_price=close.price,
        avg_exit_price=exited_value / exited_qty if exited_qty else close.price,
        qty=position.initial_qty,
        notional=position.initial_qty * position.entry_price,
        leverage=position.leverage,
        partial_exits=len(exits),
        partial_exit_pnl=sum((e.realized_pnl for e in exits), ZERO),
        close_pnl=close.realized_pnl,
        realized_pnl=position.realized_pnl,
        fees=position.fees,
        funding=position.funding,
        roe_pct=position.roe_percentage,
        open_reason=position.open_reason,
        close_reason=position.close_reason or "",
        source=position.source.value,
        pnl_estimated=position.pnl_estimated,
        close_seq=seq,
    )


async def trades(
    store: EventStore,
    *,
    check: bool = False,
    progress: Progress | None = None,
    account: str | None = None,
) -> AsyncIterator[Trade]:
    """Closed positions in the order they closed, as the fold closes them.

    Constant memory: a closed position leaves the book as soon as its row is made, so the book
    holds only what is open.
    """
    book = Book()
    async for record in scan(store, check=check, progress=progress):
        book.apply(record)
        event = record.event
        if isinstance(event, PositionClosed):
            position = book.closed.pop(event.position_id, None)
            if position is None or position.close_time is None:
                continue
            if in_account(account, position.account):
                yield trade_of(position, event, record.seq)


EVENT_TYPES: tuple[type[Any], ...] = typing.get_args(AnyEvent)
ENVELOPE_COLUMNS = [
    "seq",
    "occurred_at",
    "recorded_at",
    "stream",
    "version",
    "event_id",
    "type",
    "schema_version",
    "hash",
]
TRADE_COLUMNS = [f.name for f in msgspec.structs.fields(Trade)]


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, as printed everywhere."""
    return moment.isoformat().replace("+00:00", "Z")


def _text(value: object) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    return str(value)


class EventColumns:
    """The events CSV: the envelope, then the union of every event type's fields (blank where
    a type has no such field). Each type's cells are placed by a map built once."""

    def __init__(self) -> None:
        names: dict[str, int] = {}
        for cls in EVENT_TYPES:
            for field in msgspec.structs.fields(cls):
                names.setdefault(field.name, len(names))
        self.fields = list(names)
        self.header = ENVELOPE_COLUMNS + self.fields
        base = len(ENVELOPE_COLUMNS)
        self._places = {
            cls.__name__: [(f.name, base + names[f.name]) for f in msgspec.structs.fields(cls)]
            for cls in EVENT_TYPES
        }

    def cells(self, record: Recorded) -> list[str]:
        row = [""] * len(self.header)
        kind = type(record.event).__name__
        row[:9] = [
            str(record.seq),
            iso(record.occurred_at),
            iso(record.recorded_at),
            record.stream,
            str(record.version),
            record.event_id,
            kind,
            str(record.schema_version),
            record.hash,
        ]
        # to_builtins turns Decimals, enums and datetimes into their exact text in C
        values = msgspec.to_builtins(record.event)
        for name, place in self._places[kind]:
            row[place] = _text(values[name])
        return row


def trade_cells(trade: Trade) -> list[str]:
    values = msgspec.to_builtins(trade)
    return [_text(values[name]) for name in TRADE_COLUMNS]
