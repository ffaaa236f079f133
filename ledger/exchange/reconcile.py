"""reconcile(book, exchange snapshot) -> the events that make the ledger agree with the exchange.

A pure function: no clock, no I/O. It runs inside the ledger's write transaction against the
current book, so two syncs (or a sync and the bot) never decide on a stale state, and every
event it plans carries a deterministic idempotency key where the exchange gives an identity
(a closed-PnL row's order id + createdTime + closedSize, an execution id, a position's
openTime), so the same exchange state synced twice appends nothing, the same record listed
twice counts once, and a sync that crashed between fetch and append is completed by the next.

The rules, in the order they are applied (facts from research/bybit-v5-facts.md):

1. Lifecycle: an exchange position on a ledger position's market and side is the same position
   only if it is the same lifecycle. A different Bybit `openTime`, or (without one) closed-PnL
   records since the ledger's last change that account for its whole size, mean the old one
   was closed (with its records, or estimated) and a new one opened.
2. Adopt: an exchange position no open ledger position matches becomes
   PositionOpened(source=EXCHANGE) at Bybit's `openTime`, else at the time of this fetch; never
   at `createdTime`, which is the slot's first-ever position. Limits are not enforced (a fact).
3. Funding: each settlement on the position that was open when it settled (never one opened
   after it), keyed by Bybit's execution id.
4. Size: a smaller exchange size is a reduce made outside the bot: PartialExitRecorded with
   Bybit's realized PnL from the records that explain it, else estimated from the mark (and
   flagged); a larger one is PositionIncreased at the exchange's new average entry price.
5. Mark: when something changed and the throttle allows (time since the last mark, or a price
   move); a position's first sight on the exchange is always marked (it carries openTime).
6. Close, only on evidence: absent from a complete fetch AND closed-PnL records after its last
   change that account for its size; or absent from N successful fetches spanning at least
   `absent_min` (PositionClosed(pnl_estimated=True) at the last mark). A market whose settle
   coin was not queried is never absent.
7. Amend: a record that arrives after an estimated reduce or close replaces the estimate with
   PnlAmended (the estimate stays in the history), so realized PnL ends equal to Bybit's.
   Bybit's record of a reduce or close the bot recorded itself corrects the bot's figure the
   same way when its PnL differs (Bybit books the gross PnL rounded to 8 decimals, the bot
   computed it exactly from the prices): the wallet holds Bybit's figure, so must the ledger.
8. Balance: BalanceObserved when total or available changed.

While the ledger is ahead of the exchange (the bot recorded a change less than `settle` ago
and the exchange has never shown the position since), size differences, absences and
re-adoptions wait.
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
    PnlAmended,
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

__all__ = [
    "Planned",
    "ReconcilePolicy",
    "ReconcileResult",
    "mark_worth_logging",
    "reconcile",
    "settle_coin_of",
]

Key = tuple[str, Side]


class Planned(NamedTuple):
    """An event to append (the shape of ledger.service.Plan, which this layer cannot import)."""

    event: AnyEvent
    key: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class ReconcilePolicy:
    """The knobs of reconciliation.

    absent_fetches_before_close / absent_min: how many successful fetches, spanning at least
    how long, a position must be missing from (with no closed-PnL record) before it is closed
    with an estimated PnL: several position pushes arrive within milliseconds of a manual
    close, before Bybit has written its record. settle: how long the ledger may be ahead of the
    exchange (the bot recorded a trade the exchange does not show yet). mark_interval /
    mark_move: an unchanged-size position's mark is recorded at most once per mark_interval
    unless the price moved by more than mark_move (a fraction) since the last recorded one.
    """

    absent_fetches_before_close: int = 2
    absent_min: timedelta = timedelta(seconds=60)
    settle: timedelta = timedelta(seconds=30)
    mark_interval: timedelta = timedelta(seconds=60)
    mark_move: Decimal = Decimal("0.005")
    key_prefix: str = "bybit"

    def __post_init__(self) -> None:
        if self.absent_fetches_before_close < 1:
            raise ValueError("absent_fetches_before_close must be at least 1")
        if self.settle < timedelta(0) or self.absent_min < timedelta(0):
            raise ValueError("settle and absent_min must not be negative")
        if self.mark_interval < timedelta(0) or self.mark_move < 0:
            raise ValueError("mark_interval and mark_move must not be negative")


@dataclass(frozen=True, slots=True)
class ReconcileResult:
    """The plans, in append order, and what they mean."""

    plans: tuple[Planned, ...]
    opened: tuple[str, ...]
    closed: tuple[str, ...]
    absent_counts: Mapping[str, int]
    warnings: tuple[str, ...] = ()
    absent_since: Mapping[str, datetime] = field(default_factory=dict)
    # open ledger positions on a settle coin the fetch did not list: the sync cannot see them
    unseen: tuple[str, ...] = ()


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
    """How an absent or replaced position is closed: partial exits first, then the close."""

    exits: list[Planned]
    close: Planned
    at: datetime


def settle_coin_of(symbol: str) -> str | None:
    """The settle coin of a linear market in any spelling, None when it cannot be told.

    "BTC/USDC:USDC" -> USDC, "BTCUSDT" -> USDT, Bybit's "BTCPERP" -> USDC.
    """
    text = symbol.strip().upper()
    if ":" in text:
        return text.rsplit(":", 1)[1].split("-", 1)[0]
    market = market_key(text)
    if market.endswith("PERP"):
        return "USDC"
    for coin in ("USDT", "USDC"):
        if market.endswith(coin) and len(market) > len(coin):
            return coin
    return None


def _key_of(position: Position) -> Key:
    return (market_key(position.symbol), position.side)


def reconcile(
    book: Book,
    snapshot: ExchangeSnapshot,
    absent_counts: Mapping[str, int],
    policy: ReconcilePolicy | None = None,
    absent_since: Mapping[str, datetime] | None = None,
) -> ReconcileResult:
    """The events that bring `book` in line with `snapshot`, and the new absence state.

    Raises MalformedResponse when the snapshot itself is inconsistent (two rows for one
    market and side).
    """
    policy = policy or ReconcilePolicy()
    since_map = dict(absent_since or {})
    now = snapshot.fetched_at
    prefix = policy.key_prefix
    work = _Work()

    matched: dict[Key, Position] = {}
    extras: list[Position] = []
    for position in book.open.values():
        key = _key_of(position)
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

    # the same record listed twice, or on two pages, counts once
    unique: dict[str, ClosedPnlObservation] = {r.fact_key: r for r in snapshot.closed_pnl}
    records: dict[Key, list[ClosedPnlObservation]] = {}
    for record in sorted(unique.values(), key=lambda r: (r.at, r.fact_key)):
        records.setdefault(record.key, []).append(record)

    closes: dict[str, _Close] = {}
    counts: dict[str, int] = {}
    since_out: dict[str, datetime] = {}

    # 1. lifecycle: the exchange's position on a known key may be a new one
    for key, position in list(matched.items()):
        shown = observed.get(key)
        if shown is None or not _new_lifecycle(position, shown, records.get(key, []), policy):
            continue
        own = [
            r
            for r in _unused(position, records.get(key, []), policy)
            if shown.opened_at is None or r.at <= shown.opened_at
        ]
        closes[position.position_id] = _close_replaced(position, own, shown, now, prefix)
        del matched[key]
        work.warnings.append(
            f"{position.position_id}: the exchange's {shown.symbol} {shown.side} is a new "
            "position (closed and reopened between two syncs): the old one is closed, the new "
            "one adopted at its own entry price"
        )

    # 2. adoption: a working view of every position the later rules may touch
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
        opened_at = row.opened_at or now
        position_id, adopt_key = _adoption_id(book, row, opened_at, prefix)
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

    # 6 (decided before funding, so funding never lands after a close it predates)
    queried = {coin.upper() for coin in snapshot.settle_coins}
    unseen: list[str] = []
    for position in [*matched.values(), *extras]:
        key = _key_of(position)
        if key in observed and matched.get(key) is position:
            continue
        coin = settle_coin_of(position.symbol)
        if queried and (coin is None or coin not in queried):
            unseen.append(position.position_id)
            work.warnings.append(
                f"{position.position_id} {position.symbol}: its settle coin was not queried; "
                "not treated as absent"
            )
            continue
        own = [] if matched.get(key) is not position else records.get(key, [])
        _absent(
            position,
            own,
            snapshot,
            absent_counts,
            since_map,
            policy,
            counts,
            since_out,
            closes,
            work,
        )

    # 3. funding
    closing = {pid: p for pid, p in book.open.items() if pid in closes}
    funding_plans = _funding(snapshot.funding, live, book, closes, closing, prefix)

    for plan in adopted_marks:
        work.add(plan.event, plan.key, plan.occurred_at)
    for plan in funding_plans:
        work.add(plan.event, plan.key, plan.occurred_at)

    # 4 + 5. size and mark of every position the exchange still shows
    for key, position in matched.items():
        shown = observed.get(key)
        if shown is None:
            continue
        sized = _size_change(position, shown, records.get(key, []), now, policy, work)
        if sized or _mark_due(position, shown, now, policy):
            work.add(_mark_event(position.position_id, shown), None, now)

    for position_id, close in closes.items():
        for plan in close.exits:
            work.add(plan.event, plan.key, plan.occurred_at)
        work.add(close.close.event, close.close.key, close.close.occurred_at)
        work.closed.append(position_id)

    # 7. amendments of earlier estimates, and corrections of the bot's own figures
    _amend(book, matched, closes, records, live, policy, work)
    _correct(book, matched, closes, records, policy, work)

    # 8. balance
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
        absent_since=since_out,
        unseen=tuple(unseen),
    )


# -- lifecycle and adoption -----------------------------------------------------------------


def _ms(moment: datetime) -> int:
    return to_micros(moment) // 1000


def _new_lifecycle(
    position: Position,
    row: PositionObservation,
    records: list[ClosedPnlObservation],
    policy: ReconcilePolicy,
) -> bool:
    """The exchange's row on this key is a different position than the ledger's."""
    if row.opened_at is not None:
        opened_ms = _ms(row.opened_at)
        if position.exchange_opened_ms is not None:
            return opened_ms != position.exchange_opened_ms
        if position.source is Source.EXCHANGE and position.open_time == row.opened_at:
            return False
        # never seen with an openTime: a much later one is a reopen after the ledger's open
        # (the bot records its open moments after the fill, on its own clock: a little slack)
        return row.opened_at > _last_change(position) + max(policy.settle, _OPEN_SLACK)
    unused = _unused(position, records, policy)
    return bool(unused) and sum((r.qty for r in unused), ZERO) >= position.qty


# How much later than the ledger's record of a bot's open Bybit's openTime may be and still be
# that open (order latency, clocks apart).
_OPEN_SLACK = timedelta(seconds=10)


def _adoption_id(
    book: Book, row: PositionObservation, opened_at: datetime, prefix: str
) -> tuple[str, str]:
    """A position id and idempotency key from the exchange position's identity: its openTime,
    else the moment the ledger first saw it (createdTime is the slot's, shared by every
    position ever opened on it). A taken id gets the next free generation."""
    stamp = f"{_ms(opened_at)}" if row.opened_at is not None else f"seen{_ms(opened_at)}"
    base = f"{prefix}:adopt:{row.market_id}:{row.position_idx}:{row.side.value}:{stamp}"
    generation = 0
    while True:
        key = base if generation == 0 else f"{base}:{generation}"
        position_id = "pos_" + hashlib.sha256(key.encode()).hexdigest()[:12]
        if book.get(position_id) is None:
            return position_id, key
        generation += 1


def _ledger_closed_it_recently(
    book: Book, row: PositionObservation, now: datetime, settle: timedelta
) -> bool:
    for closed in book.recently_closed(_LOOKBACK):
        if (
            closed.side is row.side
            and market_key(closed.symbol) == row.key[0]
            and closed.source is not Source.EXCHANGE
            and closed.close_time is not None
            and row.updated_at <= closed.close_time
            and now - closed.close_time < settle
            and (row.opened_at is None or row.opened_at <= closed.close_time)
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
        exchange_opened_ms=_ms(row.opened_at) if row.opened_at is not None else None,
    )


def _mark_changed(position: Position, row: PositionObservation) -> bool:
    if position.current_price != row.mark_price:
        return True
    if row.unrealized_pnl is not None and position.unrealized_pnl != row.unrealized_pnl:
        return True
    return bool(row.initial_margin) and position.real_initial_margin != row.initial_margin


def _mark_due(
    position: Position, row: PositionObservation, now: datetime, policy: ReconcilePolicy
) -> bool:
    """Record this mark? Always on first sight (and when openTime is first known); otherwise
    when something changed and the throttle allows it."""
    if not position.exchange_seen:
        return True
    if row.opened_at is not None and position.exchange_opened_ms is None:
        return True
    if not _mark_changed(position, row):
        return False
    return mark_worth_logging(position, row.mark_price, now, policy)


def mark_worth_logging(
    position: Position, price: Decimal, now: datetime, policy: ReconcilePolicy
) -> bool:
    """The mark throttle: log a new mark once `mark_interval` has passed since the last logged
    one, or sooner when the price moved more than `mark_move` from it."""
    if price == position.current_price:
        return False
    if position.marked_at is None or now - position.marked_at >= policy.mark_interval:
        return True
    last = position.current_price
    return bool(last) and abs(price - last) / last > policy.mark_move


def _last_change(position: Position) -> datetime:
    """When the ledger last changed the position's size."""
    if position.partial_exits:
        return max(position.open_time, position.partial_exits[-1].timestamp)
    return position.open_time


def _firm_change(position: Position) -> datetime:
    """When the ledger last changed the size from a fact (not an estimate)."""
    firm = [e.timestamp for e in position.partial_exits if not e.pnl_estimated]
    return max([position.open_time, *firm])


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


def _bot_echo(position: Position, record: ClosedPnlObservation, settle: timedelta) -> bool:
    """Bybit's record of a reduce the bot placed and recorded itself (same size, moments
    apart): already in the ledger, never evidence of a change made by hand."""
    return any(
        e.source is not Source.EXCHANGE
        and e.qty == record.qty
        and abs(record.at - e.timestamp) <= settle
        for e in position.partial_exits
    )


def _unused(
    position: Position, records: list[ClosedPnlObservation], policy: ReconcilePolicy
) -> list[ClosedPnlObservation]:
    """Records of changes the ledger has not booked yet: after its last change from a fact,
    its own (not from before it opened), not the bot's own reduces echoed back, not already
    applied, and not the ones still owed to its estimates (the oldest records go to the
    oldest changes, so those come first)."""
    owed = sum((e.qty for e in position.estimates), ZERO)
    fresh: list[ClosedPnlObservation] = []
    for record in _own_since_firm(position, records, policy):
        if owed > 0:
            owed -= record.qty
            continue
        fresh.append(record)
    return fresh


def _own_since_firm(
    position: Position, records: list[ClosedPnlObservation], policy: ReconcilePolicy
) -> list[ClosedPnlObservation]:
    after = _firm_change(position)
    return [
        r
        for r in records
        if r.at > after
        and r.at >= position.open_time
        and r.fact_key not in position.amended_refs
        and not _bot_echo(position, r, policy.settle)
    ]


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
    explained, rest = _explain(reduced, _unused(position, records, policy))
    for record, qty in explained:
        work.add(
            _exit_from_record(position, record, qty, "reduced on the exchange"),
            f"{prefix}:closed:{record.fact_key}",
            record.at,
        )
    if rest > 0:
        work.add(
            PartialExitRecorded(
                position_id=position.position_id,
                qty=rest,
                price=row.mark_price,
                realized_pnl=price_pnl(position.side, rest, position.entry_price, row.mark_price),
                reason=(
                    "reduced on the exchange; no closed-PnL record yet: PnL estimated from "
                    "the mark until Bybit's record amends it"
                ),
                source=Source.EXCHANGE,
                pnl_estimated=True,
            ),
            f"{prefix}:reduce:{position.position_id}:{row.qty}:{_ms(row.updated_at)}",
            row.updated_at,
        )
    return True


def _explain(
    qty: Decimal, records: list[ClosedPnlObservation]
) -> tuple[list[tuple[ClosedPnlObservation, Decimal]], Decimal]:
    """The oldest records whose sizes add up to qty (the last one clamped), and the quantity
    no record explains."""
    chosen: list[tuple[ClosedPnlObservation, Decimal]] = []
    left = qty
    for record in records:
        if left <= 0:
            break
        used = min(record.qty, left)
        chosen.append((record, used))
        left -= used
    return chosen, max(left, ZERO)


def _pnl_and_fee(
    position: Position, record: ClosedPnlObservation, share: Decimal = Decimal(1)
) -> tuple[Decimal, Decimal]:
    """(realized PnL, fee) of a closed-PnL record, or of a share of it.

    Bybit's closedPnl has the opening fee's share already taken off. Where the ledger charged
    the opening fee itself (the bot recorded it at open), that share is added back so it is
    not counted twice. With Bybit's openFee the share is at most what Bybit charged; without
    it (the older rows) it is the ledger's own share for the qty closed, and the fee is what
    the gross PnL and closedPnl leave apart.
    """
    qty = record.qty * share
    pnl = record.closed_pnl * share
    charged = ZERO
    if position.open_fee > 0 and position.initial_qty > 0:
        charged = position.open_fee * qty / position.initial_qty
    if record.open_fee is not None:
        open_fee = record.open_fee * share
        charged = min(open_fee, charged)
        close_fee = (record.close_fee or ZERO) * share
        return pnl + charged, open_fee - charged + close_fee
    gross = price_pnl(position.side, qty, record.entry_price, record.exit_price)
    fee = gross - pnl - charged
    if record.close_fee is not None:
        fee = record.close_fee * share
    return pnl + charged, max(fee, ZERO)


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
    absent_since: Mapping[str, datetime],
    policy: ReconcilePolicy,
    counts: dict[str, int],
    since_out: dict[str, datetime],
    closes: dict[str, _Close],
    work: _Work,
) -> None:
    """A ledger position the exchange no longer shows: close it on evidence, or count it."""
    position_id = position.position_id
    if not snapshot.complete:
        if position_id in absent_counts:
            counts[position_id] = absent_counts[position_id]
            if position_id in absent_since:
                since_out[position_id] = absent_since[position_id]
        return
    now = snapshot.fetched_at
    if now <= position.open_time:
        return  # opened after this fetch began
    prefix = policy.key_prefix
    # The bot opened or changed it moments ago: the exchange may not show it yet, and a record
    # stamped just after the open may still be the previous trade's, so within `settle` only
    # records that account for exactly the size held count as evidence. Once the exchange has
    # shown the position, it is no longer young: its absence counts.
    ahead = not position.exchange_seen and _ledger_ahead(position, None, now, policy.settle)
    unused = _unused(position, records, policy)
    total = sum((r.qty for r in unused), ZERO)
    if unused and total >= position.qty and (not ahead or total == position.qty):
        closes[position_id] = _close_from_records(position, unused, prefix)
        return
    if ahead:
        return
    seen = absent_counts.get(position_id, 0) + 1
    first = absent_since.get(position_id, now)
    if seen < policy.absent_fetches_before_close or now - first < policy.absent_min:
        counts[position_id] = seen
        since_out[position_id] = first
        # records of part of it are facts already: book them as reduces
        explained, _ = _explain(position.qty, unused)
        for record, qty in explained:
            work.add(
                _exit_from_record(position, record, qty, "reduced on the exchange"),
                f"{prefix}:closed:{record.fact_key}",
                record.at,
            )
        return
    closes[position_id] = _estimated_close(
        position,
        unused,
        reason=(
            f"gone from the exchange in {seen} successful fetches over "
            f"{int((now - first).total_seconds())}s without a closed-PnL record: PnL estimated "
            "from the last mark until Bybit's record amends it"
        ),
        key=f"{prefix}:absent:{position_id}",
        at=now,
        prefix=prefix,
    )


def _close_replaced(
    position: Position,
    records: list[ClosedPnlObservation],
    shown: PositionObservation,
    now: datetime,
    prefix: str,
) -> _Close:
    """The old position of a key the exchange reopened: closed by its records, or estimated at
    the last mark when they are not written yet (amended when they are)."""
    total = sum((r.qty for r in records), ZERO)
    if records and total >= position.qty:
        return _close_from_records(position, records, prefix)
    at = now if shown.opened_at is None else max(shown.opened_at, _last_change(position))
    ref = _ms(shown.opened_at) if shown.opened_at is not None else _ms(now)
    return _estimated_close(
        position,
        records,
        reason=(
            "closed on the exchange and reopened before this sync; no closed-PnL record yet: "
            "PnL estimated from the last mark until Bybit's record amends it"
        ),
        key=f"{prefix}:replaced:{position.position_id}:{ref}",
        at=at,
        prefix=prefix,
    )


def _estimated_close(
    position: Position,
    records: list[ClosedPnlObservation],
    *,
    reason: str,
    key: str,
    at: datetime,
    prefix: str,
) -> _Close:
    """Records of part of it booked as reduces; the rest closed at the last mark, the PnL
    marked estimated (Bybit's record amends it when it is written)."""
    exits: list[Planned] = []
    qty = position.qty
    explained, _ = _explain(position.qty, records)
    for record, used in explained:
        exits.append(
            Planned(
                _exit_from_record(position, record, used, "reduced on the exchange"),
                f"{prefix}:closed:{record.fact_key}",
                record.at,
            )
        )
        qty -= used
    price = position.current_price
    event = PositionClosed(
        position_id=position.position_id,
        qty=qty,
        price=price,
        realized_pnl=price_pnl(position.side, qty, position.entry_price, price),
        reason=reason,
        source=Source.EXCHANGE,
        pnl_estimated=True,
    )
    return _Close(exits, Planned(event, key, at), at)


def _close_from_records(
    position: Position, records: list[ClosedPnlObservation], prefix: str
) -> _Close:
    """Closed by records that account for its whole size: all but the last are reduces."""
    explained, _ = _explain(position.qty, records)
    *earlier, (last, last_qty) = explained
    exits = [
        Planned(
            _exit_from_record(position, record, qty, "reduced on the exchange"),
            f"{prefix}:closed:{record.fact_key}",
            record.at,
        )
        for record, qty in earlier
    ]
    remaining = position.qty - sum((qty for _, qty in earlier), ZERO)
    share = Decimal(1) if last_qty == last.qty else last_qty / last.qty
    pnl, fee = _pnl_and_fee(position, last, share)
    event = PositionClosed(
        position_id=position.position_id,
        qty=remaining,
        price=last.exit_price,
        realized_pnl=pnl,
        fee=fee,
        reason="closed on the exchange",
        source=Source.EXCHANGE,
        pnl_estimated=False,
        exchange_ref=last.order_id,
    )
    return _Close(exits, Planned(event, f"{prefix}:closed:{last.fact_key}", last.at), last.at)


# -- amendments -----------------------------------------------------------------------------

# How many of the latest closes are looked at for late funding and late closed-PnL records:
# both arrive within the fetch window, so their positions closed recently.
_LOOKBACK = 200


def _amend(
    book: Book,
    matched: Mapping[Key, Position],
    closes: Mapping[str, _Close],
    records: Mapping[Key, list[ClosedPnlObservation]],
    live: Mapping[Key, Position],
    policy: ReconcilePolicy,
    work: _Work,
) -> None:
    """Replace estimates with the records that arrived for them since."""
    candidates: list[Position] = [
        p for p in matched.values() if p.estimates and p.position_id not in closes
    ]
    recent = list(book.recently_closed(_LOOKBACK))
    candidates += [p for p in recent if p.estimates]
    if not candidates:
        return
    opens: dict[Key, list[datetime]] = {}
    for p in [*book.open.values(), *recent, *live.values()]:
        opens.setdefault(_key_of(p), []).append(p.open_time)
    prefix = policy.key_prefix
    for position in candidates:
        key = _key_of(position)
        later = [t for t in opens.get(key, []) if t > position.open_time]
        until = min(later, default=None)
        after = _firm_change(position)
        estimate_left = sum((e.qty for e in position.estimates), ZERO)
        estimates = [(e.qty, e.pnl_per_qty) for e in position.estimates]
        for record in records.get(key, []):
            if estimate_left <= 0:
                break
            ref = f"{prefix}:closed:{record.fact_key}"
            if (
                record.at <= after
                or record.at < position.open_time
                or (until is not None and record.at >= until)
                or record.fact_key in position.amended_refs
                or ref in work.keys
                or _bot_echo(position, record, policy.settle)
            ):
                continue
            qty = min(record.qty, estimate_left)
            estimated = ZERO
            left = qty
            while left > 0 and estimates:
                est_qty, per = estimates[0]
                used = min(left, est_qty)
                estimated += used * per
                left -= used
                if est_qty - used > 0:
                    estimates[0] = (est_qty - used, per)
                else:
                    estimates.pop(0)
            estimate_left -= qty
            share = Decimal(1) if qty == record.qty else qty / record.qty
            pnl, fee = _pnl_and_fee(position, record, share)
            work.add(
                PnlAmended(
                    position_id=position.position_id,
                    qty=qty,
                    price=record.exit_price,
                    realized_pnl=pnl,
                    estimated_pnl=estimated,
                    fee=fee,
                    exchange_ref=record.fact_key,
                    reason=(
                        f"Bybit's closed-PnL record (order {record.order_id}) for a reduce or "
                        "close booked earlier from the mark"
                    ),
                ),
                ref,
                record.at,
            )


def _correct(
    book: Book,
    matched: Mapping[Key, Position],
    closes: Mapping[str, _Close],
    records: Mapping[Key, list[ClosedPnlObservation]],
    policy: ReconcilePolicy,
    work: _Work,
) -> None:
    """PnlAmended for each Bybit record of a reduce or close the bot recorded itself whose PnL
    differs from the bot's: realized PnL ends equal to what the exchange booked.

    A record is the bot's when it has the same size as a bot exit (or as the bot's close) and
    is stamped within `settle` of it, the rule the sync already uses to ignore these echoes.
    Positions still holding estimates are left to the amendments of rule 7.
    """
    candidates = [p for p in matched.values() if p.position_id not in closes]
    candidates += list(book.recently_closed(_LOOKBACK))
    prefix = policy.key_prefix
    for position in candidates:
        if position.estimates or position.pnl_estimated:
            continue
        own = [r for r in records.get(_key_of(position), []) if r.at >= position.open_time]
        booked = [
            (e.qty, e.timestamp, e.realized_pnl)
            for e in position.partial_exits
            if e.source is not Source.EXCHANGE
        ]
        if position.close_time is not None and position.close_pnl is not None:
            booked.append((position.qty, position.close_time, position.close_pnl))
        for qty, at, pnl in booked:
            # each booking takes the nearest record of its size, corrected before or not, so
            # a record already applied is never paired with another booking of the same size
            near = [r for r in own if r.qty == qty and abs(r.at - at) <= policy.settle]
            if not near:
                continue
            record = min(near, key=lambda r: (abs(r.at - at), r.fact_key))
            own.remove(record)
            if (
                record.fact_key in position.amended_refs
                or f"{prefix}:closed:{record.fact_key}" in work.keys
            ):
                continue
            exchange_pnl, _ = _pnl_and_fee(position, record)
            if exchange_pnl == pnl:
                continue
            work.add(
                PnlAmended(
                    position_id=position.position_id,
                    qty=qty,
                    price=record.exit_price,
                    realized_pnl=exchange_pnl,
                    estimated_pnl=pnl,
                    exchange_ref=record.fact_key,
                    reason=(
                        f"Bybit's closed-PnL record (order {record.order_id}) books "
                        f"{exchange_pnl} for a reduce or close the bot booked at {pnl}"
                    ),
                ),
                f"{prefix}:closed:{record.fact_key}",
                record.at,
            )


# -- funding --------------------------------------------------------------------------------


def _closed_holding(book: Book, row: FundingObservation) -> Position | None:
    """The closed position on the row's market and side that was open when it settled."""
    for position in book.recently_closed(_LOOKBACK):
        closed_at = position.close_time
        if (
            position.side is row.side
            and market_key(position.symbol) == row.key[0]
            and position.open_time <= row.at
            and closed_at is not None
            and row.at <= closed_at
        ):
            return position
    return None


def _closing_holding(
    closing: Mapping[str, Position], closes: Mapping[str, _Close], row: FundingObservation
) -> Position | None:
    """A position this very sync closes, that was open when the row settled."""
    for position in closing.values():
        if (
            _key_of(position) == row.key
            and position.open_time <= row.at <= closes[position.position_id].at
        ):
            return position
    return None


def _funding(
    rows: Iterable[FundingObservation],
    live: Mapping[Key, Position],
    book: Book,
    closes: Mapping[str, _Close],
    closing: Mapping[str, Position],
    prefix: str,
) -> list[Planned]:
    """Each settlement on the position it was paid on: the open one (opened before it, not
    closed before it), or a closed one that was open at that moment, since a payment settled
    just before the bot closed reaches the ledger only at the next sync."""
    plans: list[Planned] = []
    unique = {r.exec_id: r for r in rows}
    for row in sorted(unique.values(), key=lambda r: (r.at, r.exec_id)):
        position = live.get(row.key)
        close = None if position is None else closes.get(position.position_id)
        if (
            position is None
            or row.at < position.open_time
            or (close is not None and row.at > close.at)
        ):
            position = _closed_holding(book, row) or _closing_holding(closing, closes, row)
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
