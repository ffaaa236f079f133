"""The book: every position, the balance and the running statistics, folded from the log.

`apply` never raises on a stored event: the rules ran before it was stored, and an event the
book cannot place (a mark for an unknown position, say) is counted in `skipped`, not fatal.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Iterator, MutableMapping
from datetime import datetime
from decimal import Decimal
from typing import TypeVar

import msgspec

from ledger.codec import FoldFact, MarkText, mark_from_text, number_from_text
from ledger.envelope import GENESIS_HASH, Recorded
from ledger.errors import IntegrityError
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
)
from ledger.values import LEDGER_CONTEXT, Side, Source, from_micros, market_key
from projections import positions as fold
from projections._lazy_closed import LazyClosed
from projections.positions import Position
from projections.stats import Accumulators, SessionSummary, summarize

V = TypeVar("V")


class Book:
    def __init__(self) -> None:
        self.open: dict[str, Position] = {}
        self.closed: MutableMapping[str, Position] = {}
        self.balance: Decimal | None = None
        self.available: Decimal | None = None
        self.acc = Accumulators()
        # the same sums per account, and each account's last balance
        self.accounts: dict[str, Accumulators] = {}
        self.balances: dict[str, tuple[Decimal, Decimal]] = {}
        self.imported_files: MutableMapping[str, str] = {}
        # the limits the log last recorded (None: written before limits were recorded)
        self.rules: RulesConfigured | None = None
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
        if isinstance(event, PositionMarked):
            self._mark(record.seq, event, record.occurred_at)
        else:
            self._fold(record.seq, event, record.occurred_at)

    def _mark(self, seq: int, event: PositionMarked, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self.skipped.append(seq)
        else:
            self.open[event.position_id] = fold.marked(position, event, at)

    def _fold(self, seq: int, event: AnyEvent, at: datetime) -> None:
        """Every event but a mark (see _mark)."""
        if isinstance(event, PositionOpened):
            if event.position_id in self.open or event.position_id in self.closed:
                self.skipped.append(seq)
                return
            started = fold.opened(event, at)
            self.open[event.position_id] = started
            self._realize(started.account, event.fee.copy_negate())
        elif isinstance(event, PartialExitRecorded):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(seq)
                return
            self.open[event.position_id] = fold.partly_exited(position, event, at)
            self._realize(position.account, event.realized_pnl)
        elif isinstance(event, PositionClosed):
            position = self.open.pop(event.position_id, None)
            if position is None:
                self.skipped.append(seq)
                return
            done = fold.closed(position, event, at)
            self.closed[event.position_id] = done
            self._realize(done.account, event.realized_pnl)
            self.acc.record_close(done)
            self._account(done.account).record_close(done)
        elif isinstance(event, FundingRecorded):
            position = self.open.get(event.position_id)
            if position is not None:
                self.open[event.position_id] = fold.funded(position, event)
            else:
                # settled while open, seen by a sync only after the bot closed the position
                closed = self.closed.get(event.position_id)
                if closed is None:
                    self.skipped.append(seq)
                    return
                amended = fold.funded(closed, event)
                self.closed[event.position_id] = amended
                self.acc.amend_close(closed, amended)
                self._account(closed.account).amend_close(closed, amended)
                position = closed
            self._realize(position.account, event.amount)
        elif isinstance(event, PositionIncreased):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(seq)
                return
            self.open[event.position_id] = fold.increased(position, event)
            self._realize(position.account, event.fee.copy_negate())
        elif isinstance(event, PnlAmended):
            still_open = self.open.get(event.position_id)
            if still_open is not None:
                self.open[event.position_id] = fold.amended(still_open, event)
                owner = still_open.account
            else:
                was = self.closed.get(event.position_id)
                if was is None:
                    self.skipped.append(seq)
                    return
                fixed = fold.amended(was, event)
                self.closed[event.position_id] = fixed
                self.acc.amend_close(was, fixed)
                self._account(was.account).amend_close(was, fixed)
                owner = was.account
            self._realize(owner, LEDGER_CONTEXT.subtract(event.realized_pnl, event.estimated_pnl))
        elif isinstance(event, ExitIntended | ExitAbandoned):
            position = self.open.get(event.position_id)
            if position is None:
                self.skipped.append(seq)
                return
            if isinstance(event, ExitIntended):
                self.open[event.position_id] = fold.exit_intended(position, event)
            else:
                self.open[event.position_id] = fold.exit_abandoned(position, event)
        elif isinstance(event, BalanceObserved):
            self.balance = event.total
            self.available = event.available
            self.balances[event.account] = (event.total, event.available)
        elif isinstance(event, HistoryImported):
            self.imported_files[event.file_sha256] = event.file_name
        elif isinstance(event, RulesConfigured):
            self.rules = event

    def _account(self, account: str) -> Accumulators:
        acc = self.accounts.get(account)
        if acc is None:
            acc = self.accounts[account] = Accumulators()
        return acc

    def _realize(self, account: str, amount: Decimal) -> None:
        self.acc.realize(amount)
        self._account(account).realize(amount)

    def apply_all(self, records: Iterable[Recorded]) -> None:
        for record in records:
            self.apply(record)

    def apply_facts(self, facts: Iterable[FoldFact], *, last_hash: str) -> None:
        """Fold (seq, occurred_us, event) rows in seq order: the same book as `apply` on each
        record, with last_hash the hash of the last row (facts carry no hashes).

        The rebuild's fast path. Most of a log is marks, and a run of marks on one position
        is decided by its last one: only it sets the price, PnL, ROE and time; the earlier ones
        matter only through the last margin the exchange reported (a mark without one keeps
        the one before). So marks wait, one per position with that margin, and are folded when
        the next event of their position comes (or at the end): one fold and one datetime per
        run of marks instead of one per mark. Facts at or below last_seq are ignored.

        A mark may come as `MarkText` (a rebuild's reader leaves its numbers text): only the
        numbers a fold uses are parsed, and one that is not a number raises IntegrityError at
        its seq, as decoding the body would have.
        """
        # position id -> (its last mark, that mark's seq and time, the margin reported before
        # it in the run and the seq of that mark, and what earlier marks of the run told of
        # the exchange: its openTime, a sighting)
        pending: dict[str, _Run] = {}
        open_ = self.open
        text = MarkText
        marked = PositionMarked
        exchange = Source.EXCHANGE
        timed = _TIMED
        last = self.last_seq
        for seq, occurred_us, event in facts:
            if seq <= last:
                continue
            last = seq
            kind = type(event)
            if kind is text or kind is marked:
                position_id = event.position_id  # type: ignore[union-attr]
                if position_id not in open_:
                    self.skipped.append(seq)
                    continue
                waiting = pending.get(position_id)
                if waiting is None:
                    pending[position_id] = (event, seq, occurred_us, None, 0, None, False)  # type: ignore[assignment]
                    continue
                # `marked` keeps the position's margin when a mark's is None or zero
                previous = waiting[0]
                margin = previous.initial_margin
                before: Decimal | str | int | None
                if margin is not None and _reported(margin, waiting[1]):
                    before, before_seq = margin, waiting[1]
                else:
                    before, before_seq = waiting[3], waiting[4]
                pending[position_id] = (
                    event,  # type: ignore[assignment]
                    seq,
                    occurred_us,
                    before,
                    before_seq,
                    previous.exchange_opened_ms or waiting[5],
                    waiting[6] or previous.source is exchange,
                )
                continue
            of = getattr(event, "position_id", None)
            if of is not None and of in pending:
                self._fold_mark(*pending.pop(of))
            self._fold(seq, event, from_micros(occurred_us) if kind in timed else _NO_TIME)  # type: ignore[arg-type]
        for waiting in pending.values():
            self._fold_mark(*waiting)
        if last != self.last_seq:
            self.last_seq = last
            self.last_hash = last_hash

    def _fold_mark(
        self,
        event: PositionMarked | MarkText,
        seq: int,
        occurred_us: int,
        margin: Decimal | str | int | None,
        margin_seq: int,
        opened_ms: int | None,
        seen: bool,
    ) -> None:
        """The last mark of a run, after what the run reported before it (if anything)."""
        if type(event) is MarkText:
            try:
                event = mark_from_text(event)
            except msgspec.ValidationError as exc:
                raise IntegrityError(seq, f"body does not decode: {exc}") from None
        assert isinstance(event, PositionMarked)
        position = self.open[event.position_id]
        if margin is not None and not event.initial_margin:
            position = msgspec.structs.replace(
                position, real_initial_margin=_number(margin, margin_seq)
            )
        if opened_ms is not None:
            position = msgspec.structs.replace(position, exchange_opened_ms=opened_ms)
        if seen and not position.exchange_seen:
            position = msgspec.structs.replace(position, exchange_seen=True)
        self.open[event.position_id] = fold.marked(position, event, from_micros(occurred_us))

    def copy(self) -> Book:
        """An independent copy; Positions are immutable, so sharing them is safe."""
        other = Book()
        other.open = dict(self.open)
        other.closed = dict(self.closed)
        other.balance = self.balance
        other.available = self.available
        other.acc = self.acc.copy()
        other.accounts = {name: acc.copy() for name, acc in self.accounts.items()}
        other.balances = dict(self.balances)
        other.imported_files = dict(self.imported_files)
        other.rules = self.rules
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
        other.accounts = {name: acc.copy() for name, acc in self.accounts.items()}
        other.balances = dict(self.balances)
        other.imported_files = ChainMap({}, self.imported_files)
        other.rules = self.rules
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
        return other

    def successor(self) -> Book:
        """A book equal to this one that takes the next events, leaving this one untouched.

        The Ledger publishes each committed state as a new book, so readers on any thread
        see one committed state, never a half-applied one. Cost: O(open positions + closes
        since the last compaction), not O(history): closed positions and imports sit in a
        frozen base layer under a small recent one, merged once the recent layer outgrows
        the square root of the base.
        """
        other = Book()
        other.open = dict(self.open)
        other.closed = _layered(self.closed)
        other.balance = self.balance
        other.available = self.available
        other.acc = self.acc.copy()
        other.accounts = {name: acc.copy() for name, acc in self.accounts.items()}
        other.balances = dict(self.balances)
        other.imported_files = _layered(self.imported_files)
        other.rules = self.rules
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
        other.skipped = list(self.skipped)
        return other

    def recently_closed(self, limit: int) -> Iterator[Position]:
        """Up to `limit` closed positions, the latest closed first (also on a fork)."""
        layers = _flat_layers(self.closed)
        left = limit
        seen: set[str] = set()
        for layer in layers:  # a fork's own closes come first, then the book's
            for position in reversed(layer.values()):  # type: ignore[call-overload]
                if left <= 0:
                    return
                if position.position_id in seen:  # amended later: already yielded
                    continue
                seen.add(position.position_id)
                yield self.closed[position.position_id]
                left -= 1

    def get(self, position_id: str) -> Position | None:
        """An open or closed position by id."""
        return self.open.get(position_id) or self.closed.get(position_id)

    def open_for(
        self, symbol: str, side: Side | None = None, *, account: str | None = None
    ) -> Position | None:
        """The first open position on symbol, in any spelling (and side and account, when
        given)."""
        market = market_key(symbol)
        for position in self.open.values():
            if (
                market_key(position.symbol) == market
                and (side is None or position.side is side)
                and (account is None or position.account == account)
            ):
                return position
        return None

    def only(self, account: str) -> Book:
        """A fork holding one account's positions and balance alone: what that account's
        exchange sync reconciles (it must never adopt or close another account's)."""
        other = self.fork()
        other.open = {k: p for k, p in self.open.items() if p.account == account}
        other.closed = {k: p for k, p in self.closed.items() if p.account == account}
        balance = self.balances.get(account)
        other.balance, other.available = balance if balance is not None else (None, None)
        return other

    def open_count(self, account: str | None = None) -> int:
        """Open positions, of one account or of all."""
        if account is None:
            return len(self.open)
        return sum(1 for position in self.open.values() if position.account == account)

    def account_names(self) -> list[str]:
        """Every account with a position or a balance, sorted."""
        names = {p.account for p in self.open.values()} | set(self.accounts) | set(self.balances)
        return sorted(names)

    def summary(self, account: str | None = None) -> SessionSummary:
        """The session summary of one account, or of the whole fleet (account=None)."""
        if account is None:
            if len(self.balances) > 1:  # several accounts: the fleet's money is their sum
                total = sum((b[0] for b in self.balances.values()), Decimal(0))
                available = sum((b[1] for b in self.balances.values()), Decimal(0))
                return summarize(self.acc, list(self.open.values()), total, available)
            return summarize(self.acc, list(self.open.values()), self.balance, self.available)
        balance = self.balances.get(account)
        return summarize(
            self.accounts.get(account) or Accumulators(),
            [p for p in self.open.values() if p.account == account],
            None if balance is None else balance[0],
            None if balance is None else balance[1],
        )


def _flat_layers(mapping: MutableMapping[str, Position]) -> list[MutableMapping[str, Position]]:
    if not isinstance(mapping, ChainMap):
        return [mapping]
    return [layer for sub in mapping.maps for layer in _flat_layers(sub)]


def _layered(mapping: MutableMapping[str, V]) -> ChainMap[str, V]:
    """A mapping equal to `mapping` whose writes go to a fresh top layer: ChainMap(recent,
    base), base shared and never written again, recent copied (small)."""
    if isinstance(mapping, ChainMap) and len(mapping.maps) == 2:
        recent, base = mapping.maps
        if len(recent) * len(recent) <= len(base) or len(recent) <= 64:
            return ChainMap(dict(recent), base)
        if isinstance(base, LazyClosed):  # a snapshot's closed history: merged undecoded
            return ChainMap({}, base.merged(recent))  # type: ignore[arg-type]
        return ChainMap({}, {**base, **recent})
    return ChainMap({}, dict(mapping) if isinstance(mapping, ChainMap) else mapping)


# a run of marks waiting in apply_facts: (last mark, its seq, its occurred_us, the margin
# reported before it, that margin's seq, Bybit's openTime seen before it, sighted before it)
_Run = tuple[PositionMarked | MarkText, int, int, Decimal | str | int | None, int, int | None, bool]
# a margin's text that starts with one of these is not zero (no need to parse it to know)
_NONZERO_LEAD = frozenset("123456789")


def _number(value: Decimal | str | int, seq: int) -> Decimal:
    """A number of a mark (text in a MarkText) as a Decimal; IntegrityError at seq if it is
    not one."""
    if type(value) is Decimal:
        return value
    try:
        return number_from_text(value)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise IntegrityError(seq, f"body does not decode: {exc}") from None


def _reported(margin: Decimal | str | int, seq: int) -> bool:
    """Whether a mark reported this margin: `marked` treats a zero margin as none."""
    if type(margin) is str and margin[:1] in _NONZERO_LEAD:
        return True
    return bool(_number(margin, seq))


# events whose fold reads the time (a datetime is made only for them)
_TIMED = frozenset({PositionOpened, PartialExitRecorded, PositionClosed})
_NO_TIME = from_micros(0)  # never read: the events outside _TIMED ignore their time


def fold_records(records: Iterable[Recorded]) -> Book:
    """A book built from nothing by folding records in order."""
    book = Book()
    book.apply_all(records)
    return book
