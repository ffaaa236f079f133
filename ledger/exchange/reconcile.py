"""reconcile(book, exchange snapshot) -> the events that make the ledger agree with the exchange.

A pure function: no clock, no I/O. It runs inside the ledger's write transaction against the
current book, so two syncs (or a sync and the bot) never decide on a stale state, and every
event it plans carries a deterministic idempotency key where the exchange gives an identity
(an order id, an execution id, a position's creation time), so the same exchange state synced
twice appends nothing, and a sync that crashed between fetch and append is completed by the
next one.

The rules, in the order they are applied:

1. Adopt: an exchange position no open ledger position matches, on (market, side), becomes
   PositionOpened(source=EXCHANGE) at its creation time, limits not enforced (it is a fact).
2. Funding: each settlement becomes FundingRecorded on the position it was paid on, keyed by
   Bybit's execution id.
3. Size: a smaller exchange size is a reduce made outside the bot: PartialExitRecorded with
   Bybit's realized PnL from the closed-PnL records that explain it (or computed from the mark
   and said so in the reason); a larger one is PositionIncreased at the exchange's new average
   entry price.
4. Mark: mark price, unrealized PnL, contracts and initial margin, only when one changed.
5. Close, only on evidence: absent from a complete fetch AND a closed-PnL record after the
   position's last change (PositionClosed with Bybit's PnL, exit price, time and order id);
   or absent from N consecutive complete fetches (PositionClosed(pnl_estimated=True) at the
   last mark).
6. Balance: BalanceObserved when total or available changed.

While the ledger is ahead of the exchange (the bot recorded a change less than `settle` ago
and the exchange row predates it), size differences, absences and re-adoptions wait.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import NamedTuple

from ledger.events import (
    AnyEvent,
    BalanceObserved,
    FundingRecorded,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.exchange.observations import (
    ClosedPnlObservation,
    ExchangeSnapshot,
    FundingObservation,
    MalformedResponse,
    PositionObservation,
    market_key,
)
from ledger.values import ZERO, Side, Source, to_micros
from projections.book import Book
from projections.pnl import price_pnl
from projections.positions import Position

__all__ = ["Planned", "ReconcilePolicy", "ReconcileResult", "reconcile"]

Key = tuple[str, Side]


class Planned(NamedTuple):
    """An event to append (the shape of ledger.service.Plan, which this layer cannot import)."""

    event: AnyEvent
    key: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """The knobs of reconciliation.

    absent_fetches_before_close: complete fetches a position must be missing from, with no
    closed-PnL record, before it is closed with an estimated PnL (Settings'
    absent_fetches_before_close). settle: how long the ledger may be ahead of the exchange
    (the bot recorded a trade the exchange does not show yet) before the exchange wins.
    """

    absent_fetches_before_close: int = 2
    settle: timedelta = timedelta(seconds=30)
    key_prefix: str = "bybit"

    def __post_init__(self) -> None:
        if self.absent_fetches_before_close < 1:
            raise ValueError("absent_fetches_before_close must be at least 1")
        if self.settle < timedelta(0):
            raise ValueError("settle must not be negative")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """The plans, in append order, and what they mean."""

    plans: tuple[Planned, ...]
    opened: tuple[str, ...]
    closed: tuple[str, ...]
    absent_counts: Mapping[str, int]
    warnings: tuple[str, ...] = ()


@dataclass(slots=True)
class _Work:
    """What one reconciliation accumulates."""

    plans: list[Planned] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def add(self, event: AnyEvent, key: str | None = None, at: datetime | None = None) -> None:
        if key is not None:
            if key in self.keys:
                return
            self.keys.add(key)
        self.plans.append(Planned(event, key, at))


class _Close(NamedTuple):
    """How an absent position is closed: partial exits first, then the close."""

    exits: list[Planned]
    close: Planned
    at: datetime


def reconcile(
    book: Book,
    snapshot: ExchangeSnapshot,
    absent_counts: Mapping[str, int],
    policy: ReconcilePolicy | None = None,
) -> ReconcileResult:
    """The events that bring `book` in line with `snapshot`, and the new absence counts.

    Raises MalformedResponse when the snapshot itself is inconsistent (two rows for one
    market and side).
    """
    policy = policy or ReconcilePolicy()
    now = snapshot.fetched_at
    prefix = policy.key_prefix
    work = _Work()

    matched: dict[Key, Position] = {}
    extras: list[Position] = []
    for position in book.open.values():
        key = (market_key(position.symbol), position.side)
        if key in matched:
            extras.append(position)
        else:
            matched[key] = position

    observed: dict[Key, PositionObservation] = {}
    for row in snapshot.positions:
        if row.key in observed:
            raise MalformedResponse(
                "position list", "symbol/side", f"{row.market_id} {row.side}", "listed twice"
            )
        observed[row.key] = row

    records: dict[Key, list[ClosedPnlObservation]] = {}
    for record in sorted(snapshot.closed_pnl, key=lambda r: (r.at, r.order_id)):
        records.setdefault((record.market_id, record.side), []).append(record)

    # 1. adoption: a working view of every position the later rules may touch
    live: dict[Key, Position] = dict(matched)
    adopted_marks: list[Planned] = []
    for key, row in observed.items():
        if key in matched:
            continue
        if _ledger_closed_it_recently(book, row, now, policy.settle):
            work.warnings.append(
                f"{row.symbol} {row.side}: closed in the ledger moments ago but still on the "
                "exchange; waiting for the exchange to catch up before adopting it"
            )
            continue
        position_id, adopt_key = _adoption_id(book, row, prefix)
        opened_at = _adoption_time(book, row, now)
        event = PositionOpened(
            position_id=position_id,
            symbol=row.symbol,
            side=row.side,
            qty=row.qty,
            entry_price=row.entry_price,
            leverage=_int_leverage(row),
            source=Source.EXCHANGE,
            position_idx=row.position_idx,
            real_initial_margin=row.initial_margin if row.initial_margin else None,
            open_reason="adopted from the exchange",
        )
        work.add(event, adopt_key, opened_at)
        work.opened.append(position_id)
        live[key] = _opened_view(event, opened_at)
        adopted_marks.append(Planned(_mark_event(position_id, row), None, now))

    # 5 (decided before funding, so funding never lands after a close it predates)
    closes: dict[str, _Close] = {}
    counts: dict[str, int] = {}
    for key, position in matched.items():
        if key in observed:
            continue
        _absent(position, records.get(key, []), snapshot, absent_counts, policy, counts, closes)
    for position in extras:
        # a second ledger position on one market and side: the exchange shows one at most
        _absent(position, [], snapshot, absent_counts, policy, counts, closes)

    # 2. funding
    funding_plans = _funding(snapshot.funding, live, book, closes, prefix)

    for plan in adopted_marks:
        work.add(plan.event, plan.key, plan.occurred_at)
    for plan in funding_plans:
        work.add(plan.event, plan.key, plan.occurred_at)

    # 3 + 4. size and mark of every position the exchange still shows
    for key, position in matched.items():
        shown = observed.get(key)
        if shown is None:
            continue
        row = shown
        sized = _size_change(position, row, records.get(key, []), now, policy, work)
        if sized or _mark_changed(position, row):
            work.add(_mark_event(position.position_id, row), None, now)

    for position_id, close in closes.items():
        for plan in close.exits:
            work.add(plan.event, plan.key, plan.occurred_at)
        work.add(close.close.event, close.close.key, close.close.occurred_at)
        work.closed.append(position_id)

    # 6. balance
    balance = snapshot.balance
    if balance is not None and (
        book.balance != balance.total or book.available != balance.available
    ):
        work.add(
            BalanceObserved(
                total=balance.total,
                available=balance.available,
                currency=balance.currency,
                source=Source.EXCHANGE,
            ),
            None,
            now,
        )

    return ReconcileResult(
        plans=tuple(work.plans),
        opened=tuple(work.opened),
        closed=tuple(work.closed),
        absent_counts=counts,
        warnings=tuple(work.warnings),
    )


# -- adoption -------------------------------------------------------------------------------


def _ms(moment: datetime) -> int:
    return to_micros(moment) // 1000


def _adoption_id(book: Book, row: PositionObservation, prefix: str) -> tuple[str, str]:
    """A position id and idempotency key derived from the exchange position's identity.

    Bybit keeps createdTime for a slot, so a position reopened by hand may share it with one
    the ledger already closed: the next free generation is used then.
    """
    base = (
        f"{prefix}:adopt:{row.market_id}:{row.position_idx}:{row.side.value}:{_ms(row.created_at)}"
    )
    generation = 0
    while True:
        key = base if generation == 0 else f"{base}:{generation}"
        position_id = "pos_" + hashlib.sha256(key.encode()).hexdigest()[:12]
        if book.get(position_id) is None:
            return position_id, key
        generation += 1


def _adoption_time(book: Book, row: PositionObservation, now: datetime) -> datetime:
    """Its creation time, unless a ledger position on the same market and side closed after it
    (Bybit's createdTime then belongs to an earlier position in the same slot)."""
    for closed in book.closed.values():
        if (
            closed.side is row.side
            and market_key(closed.symbol) == row.market_id
            and closed.close_time is not None
            and closed.close_time >= row.created_at
        ):
            return now
    return row.created_at


def _ledger_closed_it_recently(
    book: Book, row: PositionObservation, now: datetime, settle: timedelta
) -> bool:
    for closed in book.closed.values():
        if (
            closed.side is row.side
            and market_key(closed.symbol) == row.market_id
            and closed.source is not Source.EXCHANGE
            and closed.close_time is not None
            and row.updated_at <= closed.close_time
            and now - closed.close_time < settle
        ):
            return True
    return False


def _int_leverage(row: PositionObservation) -> int:
    """The event's whole-number leverage: Bybit's, rounded (it allows 12.5x), at least 1."""
    leverage = row.leverage
    if leverage is None and row.initial_margin:
        leverage = row.qty * row.entry_price / row.initial_margin
    if leverage is None:
        return 1
    return max(1, int(leverage.to_integral_value(rounding=ROUND_HALF_UP)))


def _opened_view(event: PositionOpened, at: datetime) -> Position:
    from projections.positions import opened

    return opened(event, at)


# -- marks and sizes ------------------------------------------------------------------------


def _mark_event(position_id: str, row: PositionObservation) -> PositionMarked:
    return PositionMarked(
        position_id=position_id,
        mark_price=row.mark_price,
        unrealized_pnl=row.unrealized_pnl,
        contracts=row.qty,
        initial_margin=row.initial_margin if row.initial_margin else None,
        source=Source.EXCHANGE,
    )


def _mark_changed(position: Position, row: PositionObservation) -> bool:
    if position.current_price != row.mark_price:
        return True
    if row.unrealized_pnl is not None and position.unrealized_pnl != row.unrealized_pnl:
        return True
    return bool(row.initial_margin) and position.real_initial_margin != row.initial_margin


def _last_change(position: Position) -> datetime:
    """When the ledger last changed the position's size."""
    if position.partial_exits:
        return max(position.open_time, position.partial_exits[-1].timestamp)
    return position.open_time


def _last_bot_change(position: Position) -> datetime | None:
    """When the bot (not a sync) last changed the position's size in the ledger."""
    times = [position.open_time] if position.source is not Source.EXCHANGE else []
    times += [e.timestamp for e in position.partial_exits if e.source is not Source.EXCHANGE]
    return max(times, default=None)


def _ledger_ahead(
    position: Position, row_time: datetime | None, now: datetime, settle: timedelta
) -> bool:
    """The bot changed the size less than `settle` ago and the exchange has not caught up."""
    changed = _last_bot_change(position)
    if changed is None or now - changed >= settle:
        return False
    return row_time is None or row_time <= changed


def _size_change(
    position: Position,
    row: PositionObservation,
    records: list[ClosedPnlObservation],
    now: datetime,
    policy: ReconcilePolicy,
    work: _Work,
) -> bool:
    """Plan the events for a size made outside the bot; True when any was planned."""
    if row.qty == position.qty:
        return False
    if _ledger_ahead(position, row.updated_at, now, policy.settle):
        work.warnings.append(
            f"{position.position_id}: the exchange shows {row.qty}, the ledger {position.qty} "
            "after a change moments ago; waiting for the exchange to catch up"
        )
        return False
    prefix = policy.key_prefix
    if row.qty > position.qty:
        added = row.qty - position.qty
        price = (row.entry_price * row.qty - position.entry_price * position.qty) / added
        if price <= 0:
            price = row.entry_price
        work.add(
            PositionIncreased(
                position_id=position.position_id,
                qty=added,
                price=price,
                new_entry_price=row.entry_price,
                source=Source.EXCHANGE,
            ),
            f"{prefix}:increase:{position.position_id}:{row.qty}:{_ms(row.updated_at)}",
            row.updated_at,
        )
        return True
    reduced = position.qty - row.qty
    unused = [r for r in records if r.at > _last_change(position)]
    explained, rest = _explain(reduced, unused)
    for record, qty in explained:
        work.add(
            _exit_from_record(position, record, qty, "reduced on the exchange"),
            f"{prefix}:closed:{record.order_id}",
            record.at,
        )
    if rest > 0:
        work.add(
            PartialExitRecorded(
                position_id=position.position_id,
                qty=rest,
                price=row.mark_price,
                realized_pnl=price_pnl(position.side, rest, position.entry_price, row.mark_price),
                reason="reduced on the exchange; no closed-PnL record: PnL estimated from the mark",
                source=Source.EXCHANGE,
            ),
            f"{prefix}:reduce:{position.position_id}:{row.qty}:{_ms(row.updated_at)}",
            row.updated_at,
        )
    return True


def _explain(
    qty: Decimal, records: list[ClosedPnlObservation]
) -> tuple[list[tuple[ClosedPnlObservation, Decimal]], Decimal]:
    """The newest records whose sizes add up to qty (oldest first, the oldest clamped), and
    the quantity no record explains."""
    chosen: list[tuple[ClosedPnlObservation, Decimal]] = []
    left = qty
    for record in reversed(records):
        if left <= 0:
            break
        used = min(record.qty, left)
        chosen.append((record, used))
        left -= used
    chosen.reverse()
    return chosen, max(left, ZERO)


def _pnl_and_fee(
    position: Position, record: ClosedPnlObservation, share: Decimal = Decimal(1)
) -> tuple[Decimal, Decimal]:
    """(realized PnL, fee) of a closed-PnL record, or of a share of it.

    Bybit's closedPnl has the opening fee's share already taken off. Where the ledger charged
    the opening fee itself (the bot recorded it at open), it is added back so it is not
    counted twice; otherwise it is part of this record's fee.
    """
    open_fee = (record.open_fee or ZERO) * share
    close_fee = (record.close_fee or ZERO) * share
    pnl = record.closed_pnl * share
    if position.open_fee <= 0 or position.initial_qty <= 0:
        return pnl, open_fee + close_fee
    # only the share of the opening fee the ledger charged for this qty (a lot added by hand
    # was recorded without its fee, which Bybit's figure then still has to carry)
    charged = min(open_fee, position.open_fee * (record.qty * share) / position.initial_qty)
    return pnl + charged, open_fee - charged + close_fee


def _exit_from_record(
    position: Position, record: ClosedPnlObservation, qty: Decimal, reason: str
) -> PartialExitRecorded:
    share = Decimal(1) if qty == record.qty else qty / record.qty
    pnl, fee = _pnl_and_fee(position, record, share)
    if qty != record.qty:
        reason += " (Bybit's PnL prorated: part of the record was already in the ledger)"
    return PartialExitRecorded(
        position_id=position.position_id,
        qty=qty,
        price=record.exit_price,
        realized_pnl=pnl,
        fee=fee,
        reason=reason,
        source=Source.EXCHANGE,
    )


# -- closes ---------------------------------------------------------------------------------


def _absent(
    position: Position,
    records: list[ClosedPnlObservation],
    snapshot: ExchangeSnapshot,
    absent_counts: Mapping[str, int],
    policy: ReconcilePolicy,
    counts: dict[str, int],
    closes: dict[str, _Close],
) -> None:
    """A ledger position the exchange no longer shows: close it on evidence, or count it."""
    position_id = position.position_id
    if not snapshot.complete:
        if position_id in absent_counts:
            counts[position_id] = absent_counts[position_id]
        return
    now = snapshot.fetched_at
    if now <= position.open_time:
        return  # opened after this fetch began
    prefix = policy.key_prefix
    # The bot opened or changed it moments ago: the exchange may not show it yet, and a record
    # stamped just after the open may still be the previous trade's, so within `settle` only
    # records that account for exactly the size held count as evidence.
    ahead = _ledger_ahead(position, None, now, policy.settle)
    unused = [r for r in records if r.at > _last_change(position)]
    if unused and (not ahead or sum((r.qty for r in unused), ZERO) == position.qty):
        closes[position_id] = _close_from_records(position, unused, prefix)
        return
    if ahead:
        return
    seen = absent_counts.get(position_id, 0) + 1
    if seen < policy.absent_fetches_before_close:
        counts[position_id] = seen
        return
    price = position.current_price
    event = PositionClosed(
        position_id=position_id,
        qty=position.qty,
        price=price,
        realized_pnl=price_pnl(position.side, position.qty, position.entry_price, price),
        reason=(
            f"gone from the exchange in {seen} successful fetches without a closed-PnL record: "
            "PnL estimated from the last mark"
        ),
        source=Source.EXCHANGE,
        pnl_estimated=True,
    )
    closes[position_id] = _Close([], Planned(event, f"{prefix}:absent:{position_id}", now), now)


def _close_from_records(
    position: Position, records: list[ClosedPnlObservation], prefix: str
) -> _Close:
    explained, rest = _explain(position.qty, records)
    *earlier, (last, _) = explained
    exits = [
        Planned(
            _exit_from_record(position, record, qty, "reduced on the exchange"),
            f"{prefix}:closed:{record.order_id}",
            record.at,
        )
        for record, qty in earlier
    ]
    remaining = position.qty - sum((qty for _, qty in earlier), ZERO)
    pnl, fee = _pnl_and_fee(position, last)
    if rest > 0:
        pnl += price_pnl(position.side, rest, position.entry_price, last.exit_price)
    reason = "closed on the exchange"
    if rest > 0:
        reason += f"; {rest} had no closed-PnL record: its PnL is estimated at the exit price"
    event = PositionClosed(
        position_id=position.position_id,
        qty=remaining,
        price=last.exit_price,
        realized_pnl=pnl,
        fee=fee,
        reason=reason,
        source=Source.EXCHANGE,
        pnl_estimated=rest > 0,
        exchange_ref=last.order_id,
    )
    return _Close(exits, Planned(event, f"{prefix}:closed:{last.order_id}", last.at), last.at)


# -- funding --------------------------------------------------------------------------------


# How many of the latest closes a late funding row is matched against: it settled inside the
# fetch window, so its position closed recently.
_FUNDING_LOOKBACK = 200


def _closed_holding(book: Book, row: FundingObservation) -> Position | None:
    """The closed position on the row's market and side that was open when it settled."""
    for position in book.recently_closed(_FUNDING_LOOKBACK):
        closed_at = position.close_time
        if (
            position.side is row.side
            and market_key(position.symbol) == row.market_id
            and position.open_time <= row.at
            and closed_at is not None
            and row.at <= closed_at
        ):
            return position
    return None


def _funding(
    rows: Iterable[FundingObservation],
    live: Mapping[Key, Position],
    book: Book,
    closes: Mapping[str, _Close],
    prefix: str,
) -> list[Planned]:
    """Each settlement on the position it was paid on: the open one (opened before it, not
    closed before it), or a closed one that was open at that moment, since a payment settled
    just before the bot closed reaches the ledger only at the next sync."""
    plans: list[Planned] = []
    for row in sorted(rows, key=lambda r: (r.at, r.exec_id)):
        position = live.get((row.market_id, row.side))
        close = None if position is None else closes.get(position.position_id)
        if (
            position is None
            or row.at < position.open_time
            or (close is not None and row.at > close.at)
        ):
            position = _closed_holding(book, row)
            if position is None:
                continue
        event = FundingRecorded(
            position_id=position.position_id,
            amount=row.amount,
            execution_id=row.exec_id,
            source=Source.EXCHANGE,
        )
        plans.append(Planned(event, f"{prefix}:funding:{row.exec_id}", row.at))
    return plans
