"""Would the ledger's rules have let this stored event in? A pure check run before each fold step.

`ledger.rules.decide` checks commands before anything is stored; this module checks stored
events after the fact, against the book folded from everything before them, so an audit can
tell a log the ledger wrote from one edited, forged or written around the rules.
"""

from __future__ import annotations

from decimal import Decimal

import msgspec

from ledger.commands import DEFAULT_LIMITS, Limits
from ledger.envelope import Recorded
from ledger.events import (
    AnyEvent,
    BalanceObserved,
    ExitAbandoned,
    ExitIntended,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PnlAmended,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
    stream_of,
)
from ledger.values import Source, exact
from projections.book import Book
from projections.pnl import settle_exit
from projections.positions import Position


@exact
def violations(book: Book, record: Recorded, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """What is wrong with applying record to book, in words, or None when the rules allow it.

    Limits are the ones the log itself recorded (RulesConfigured) before this event; `limits`
    (by default the format's DEFAULT_LIMITS) applies where the log has recorded none.

    Checks: the record's stream is its event's, every Decimal is finite, sizes and prices are
    positive, fees are not negative, leverage is within limits, a position is opened once and
    only events of an open position follow, no exit exceeds what is left, a file is imported
    once. Bot-opened positions are also held to the duplicate and open-count limits (positions
    adopted from the exchange or imported are facts and may exceed them).
    """
    event = record.event
    expected_stream = stream_of(event)
    if record.stream != expected_stream:
        return f"stored in stream {record.stream!r} but the event belongs to {expected_stream!r}"
    bad = _non_finite(event)
    if bad is not None:
        return f"{bad} is not a finite number"
    if isinstance(event, PositionOpened):
        return _opened(book, event, _limits_of(book, limits))
    if isinstance(event, RulesConfigured):
        if not 1 <= event.min_leverage <= event.max_leverage:
            return f"leverage limits [{event.min_leverage}, {event.max_leverage}] are not a range"
        if event.max_concurrent_positions < 0:
            return f"negative max_concurrent_positions {event.max_concurrent_positions}"
        return None
    if isinstance(event, BalanceObserved):
        if event.total < 0 or event.available < 0:
            return f"negative balance total={event.total} available={event.available}"
        return None
    if isinstance(event, HistoryImported):
        if event.file_sha256 in book.imported_files:
            return f"file {event.file_sha256[:12]}... was already imported"
        return None
    if isinstance(event, PnlAmended | ExitAbandoned):
        # a late record amends a position open or already closed; an intended exit may be
        # abandoned after a sync closed the position meanwhile
        if event.position_id not in book.open and event.position_id not in book.closed:
            return f"{type(event).__name__} for unknown position {event.position_id!r}"
        if isinstance(event, PnlAmended) and (event.qty <= 0 or event.fee < 0):
            return f"amended qty {event.qty} must be positive and fee {event.fee} not negative"
        return None
    position, problem = _open_position(book, event.position_id, type(event).__name__)
    if position is None:
        return problem
    if isinstance(event, ExitIntended):
        return None if event.qty > 0 else f"intended exit qty {event.qty} must be positive"
    if isinstance(event, PositionMarked):
        return _marked(event)
    if isinstance(event, PartialExitRecorded):
        return _partly_exited(position, event)
    if isinstance(event, PositionClosed):
        return _closed(position, event)
    if isinstance(event, PositionIncreased):
        return _increased(event)
    if isinstance(event, FundingRecorded):
        return None
    return f"unknown event type {type(event).__name__}"  # pragma: no cover - union is closed


def _limits_of(book: Book, fallback: Limits) -> Limits:
    recorded = book.rules
    if recorded is None:
        return fallback
    return Limits(
        max_concurrent_positions=recorded.max_concurrent_positions,
        min_leverage=recorded.min_leverage,
        max_leverage=recorded.max_leverage,
    )


_NUMBER_FIELDS: dict[type[object], tuple[str, ...]] = {}


def _non_finite(event: AnyEvent) -> str | None:
    cls = type(event)
    names = _NUMBER_FIELDS.get(cls)
    if names is None:  # msgspec.structs.fields is slow: once per event type
        names = tuple(f.name for f in msgspec.structs.fields(cls) if "Decimal" in str(f.type))
        _NUMBER_FIELDS[cls] = names
    for name in names:
        value = getattr(event, name)
        if isinstance(value, Decimal) and not value.is_finite():
            return name
    return None


def _open_position(book: Book, position_id: str, kind: str) -> tuple[Position | None, str]:
    position = book.open.get(position_id)
    if position is not None:
        return position, ""
    if position_id in book.closed:
        return None, f"{kind} for position {position_id!r}, which is already closed"
    return None, f"{kind} for unknown position {position_id!r}"


def _opened(book: Book, event: PositionOpened, limits: Limits) -> str | None:
    pid = event.position_id
    if pid in book.open or pid in book.closed:
        return f"position {pid!r} opened a second time"
    if not event.symbol.strip():
        return "empty symbol"
    if event.qty <= 0:
        return f"qty {event.qty} is not positive"
    if event.entry_price <= 0:
        return f"entry_price {event.entry_price} is not positive"
    if not limits.min_leverage <= event.leverage <= limits.max_leverage:
        return f"leverage {event.leverage} outside [{limits.min_leverage}, {limits.max_leverage}]"
    if event.fee < 0:
        return f"negative fee {event.fee}"
    if event.real_initial_margin is not None and event.real_initial_margin <= 0:
        return f"real_initial_margin {event.real_initial_margin} is not positive"
    if event.source is Source.BOT:
        existing = book.open_for(event.symbol, event.side)
        if existing is not None:
            return (
                f"a {event.side.value} position on {event.symbol} was already open "
                f"({existing.position_id!r})"
            )
        if len(book.open) >= limits.max_concurrent_positions:
            return (
                f"{len(book.open)} positions were open; the limit is "
                f"{limits.max_concurrent_positions}"
            )
    return None


def _marked(event: PositionMarked) -> str | None:
    if event.mark_price <= 0:
        return f"mark_price {event.mark_price} is not positive"
    if event.contracts is not None and event.contracts < 0:
        return f"negative contracts {event.contracts}"
    if event.initial_margin is not None and event.initial_margin < 0:
        return f"negative initial_margin {event.initial_margin}"
    return None


def _partly_exited(position: Position, event: PartialExitRecorded) -> str | None:
    if event.qty <= 0:
        return f"exit qty {event.qty} is not positive"
    if event.price <= 0:
        return f"exit price {event.price} is not positive"
    if event.fee < 0:
        return f"negative fee {event.fee}"
    if settle_exit(event.qty, position.qty, position.initial_qty) is None:
        return f"exit of qty {event.qty} exceeds the {position.qty} left"
    return None


def _closed(position: Position, event: PositionClosed) -> str | None:
    if event.price <= 0:
        return f"close price {event.price} is not positive"
    if event.qty < 0:
        return f"negative close qty {event.qty}"
    if event.fee < 0:
        return f"negative fee {event.fee}"
    if event.qty and settle_exit(event.qty, position.qty, position.initial_qty) is None:
        return f"close of qty {event.qty} exceeds the {position.qty} left"
    return None


def _increased(event: PositionIncreased) -> str | None:
    if event.qty <= 0:
        return f"increase qty {event.qty} is not positive"
    if event.price <= 0 or event.new_entry_price <= 0:
        return f"price {event.price} / new entry {event.new_entry_price} is not positive"
    if event.fee < 0:
        return f"negative fee {event.fee}"
    return None
