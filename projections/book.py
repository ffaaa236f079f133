"""The book: every position, the balance and the running statistics, folded from the log.

`apply` never raises on a stored event: the rules ran before it was stored, and an event the
book cannot place (a mark for an unknown position, say) is counted in `skipped`, not fatal.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Callable, Iterable, Iterator, MutableMapping, Sequence
from datetime import datetime
from decimal import Decimal
from itertools import repeat
from operator import itemgetter
from typing import Any, TypeVar, cast, overload

import msgspec

from ledger.codec import (
    BOT_MARK_TAIL,
    MARK_HEAD,
    MARKS_AS_IS,
    NO_OPENED_TAIL,
    SCHEMA_VERSION,
    FactRow,
    FoldEvent,
    FoldFact,
    FoldPage,
    MarkText,
    decode_current,
    decode_event,
    decode_for_fold,
    decode_for_fold_at,
    decode_for_fold_exactly,
    number_from_text,
)
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
from ledger.values import LEDGER_CONTEXT, ZERO, Side, Source, from_micros, market_key
from projections import positions as fold
from projections._lazy_closed import LazyClosed
from projections.positions import Position
from projections.stats import (
    Accumulators,
    SessionSummary,
    exact_sums,
    flatten_symbols,
    summarize,
)

V = TypeVar("V")
T = TypeVar("T")


class Book:
    def __init__(self) -> None:
        self.open: dict[str, Position] = {}
        self.closed: MutableMapping[str, Position] = {}
        self.balance: Decimal | None = None
        self.available: Decimal | None = None
        self._acc = Accumulators()
        # the same sums per account, and each account's last balance
        self._accounts: dict[str, Accumulators] = {}
        self.balances: dict[str, tuple[Decimal, Decimal]] = {}
        self.imported_files: MutableMapping[str, str] = {}
        # the limits the log last recorded (None: written before limits were recorded)
        self.rules: RulesConfigured | None = None
        self.last_seq = 0
        self.last_hash = GENESIS_HASH
        self.skipped: list[int] = []
        # True while the closed history, the sums (acc, accounts) or skipped are those of the
        # book this one succeeded, or of its successor (see `successor`): copied before this
        # book writes them
        self._closed_shared = False
        self._sums_shared = False
        self._skipped_shared = False
        # apply_facts collects the realized cash flows here, in order, and settles them in one
        # pass at the end (None: every flow is settled as it comes)
        self._cash: list[tuple[str, Decimal]] | None = None
        # and the closes the statistics count (+1) or take back (-1), likewise
        self._counts: list[tuple[Position, int]] | None = None

    # The sums as the fold keeps them are `_acc` and `_accounts`, their per-symbol figures
    # perhaps layered (projections.stats.SymbolLayers: a close on a book that shares its
    # figures with the one it succeeded layers them rather than copying every symbol's);
    # read from outside the fold, they are plain dicts again, flattened in place once (the
    # same figures in the same order: a book's observable state never changes by it).

    @property
    def acc(self) -> Accumulators:
        """The fleet's sums, their per-symbol figures a plain dict."""
        acc = self._acc
        if type(acc.per_symbol) is not dict:
            flatten_symbols([acc, *self._accounts.values()])
        return acc

    @acc.setter
    def acc(self, sums: Accumulators) -> None:
        self._acc = sums

    @property
    def accounts(self) -> dict[str, Accumulators]:
        """Each account's sums, their per-symbol figures plain dicts."""
        accounts = self._accounts
        for acc in accounts.values():
            if type(acc.per_symbol) is not dict:
                flatten_symbols([self._acc, *accounts.values()])
                break
        return accounts

    @accounts.setter
    def accounts(self, sums: dict[str, Accumulators]) -> None:
        self._accounts = sums

    def apply(self, record: Recorded) -> None:
        """Fold one stored event in; records at or below last_seq are ignored (already in)."""
        if record.seq <= self.last_seq:
            return
        self.last_seq = record.seq
        self.last_hash = record.hash
        event = record.event
        if isinstance(event, PositionMarked):
            self._mark(record.seq, event, record.occurred_at)
            return
        # every event but a mark: one method per event type
        fold_event = _FOLDS.get(type(event))
        if fold_event is not None:
            fold_event(self, record.seq, event, record.occurred_at)

    def _mark(self, seq: int, event: PositionMarked, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self._skip(seq)
        else:
            self.open[event.position_id] = fold.marked(position, event, at)

    def _skip(self, seq: int) -> None:
        if self._skipped_shared:
            self.skipped = [*self.skipped, seq]
            self._skipped_shared = False
        else:
            self.skipped.append(seq)

    def _writable_closed(self) -> MutableMapping[str, Position]:
        """The closed history, this book's own to write (see `successor`)."""
        closed = self.closed
        if self._closed_shared:
            self._closed_shared = False
            if type(closed) is _Layers and len(closed.maps[0]) <= 64:  # _layered's usual case
                recent, base = closed.maps
                closed = self.closed = _two_layers(dict(recent), base)
            else:
                closed = self.closed = _layered(closed)
        return closed

    def _own_sums(self) -> None:
        """Copies of the sums shared with another book (see `successor`), before a write."""
        self._sums_shared = False
        self._acc, self._accounts = _copied_sums(self._acc, self._accounts)

    def _opened(self, seq: int, event: PositionOpened, at: datetime) -> None:
        if event.position_id in self.open or event.position_id in self.closed:
            self._skip(seq)
            return
        started = fold.opened(event, at)
        self.open[event.position_id] = started
        self._realize(started.account, event.fee.copy_negate())

    def _partly_exited(self, seq: int, event: PartialExitRecorded, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self._skip(seq)
            return
        self.open[event.position_id] = fold.partly_exited(position, event, at)
        self._realize(position.account, event.realized_pnl)

    def _closed(self, seq: int, event: PositionClosed, at: datetime) -> None:
        position = self.open.pop(event.position_id, None)
        if position is None:
            self._skip(seq)
            return
        done = fold.closed(position, event, at)
        self._writable_closed()[event.position_id] = done
        self._realize(done.account, event.realized_pnl)
        self._count_close(done)

    def _funded(self, seq: int, event: FundingRecorded, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is not None:
            self.open[event.position_id] = fold.funded(position, event)
        else:
            # settled while open, seen by a sync only after the bot closed the position
            closed = self.closed.get(event.position_id)
            if closed is None:
                self._skip(seq)
                return
            amended = fold.funded(closed, event)
            self._writable_closed()[event.position_id] = amended
            self._amend_close(closed, amended)
            position = closed
        self._realize(position.account, event.amount)

    def _increased(self, seq: int, event: PositionIncreased, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self._skip(seq)
            return
        self.open[event.position_id] = fold.increased(position, event)
        self._realize(position.account, event.fee.copy_negate())

    def _amended(self, seq: int, event: PnlAmended, at: datetime) -> None:
        still_open = self.open.get(event.position_id)
        if still_open is not None:
            self.open[event.position_id] = fold.amended(still_open, event)
            owner = still_open.account
        else:
            was = self.closed.get(event.position_id)
            if was is None:
                self._skip(seq)
                return
            fixed = fold.amended(was, event)
            self._writable_closed()[event.position_id] = fixed
            self._amend_close(was, fixed)
            owner = was.account
        self._realize(owner, LEDGER_CONTEXT.subtract(event.realized_pnl, event.estimated_pnl))

    def _exit_intended(self, seq: int, event: ExitIntended, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self._skip(seq)
            return
        self.open[event.position_id] = fold.exit_intended(position, event)

    def _exit_abandoned(self, seq: int, event: ExitAbandoned, at: datetime) -> None:
        position = self.open.get(event.position_id)
        if position is None:
            self._skip(seq)
            return
        self.open[event.position_id] = fold.exit_abandoned(position, event)

    def _balance(self, seq: int, event: BalanceObserved, at: datetime) -> None:
        self.balance = event.total
        self.available = event.available
        # a new mapping, never a write into this one: a successor shares it (`successor`)
        self.balances = {**self.balances, event.account: (event.total, event.available)}

    def _imported(self, seq: int, event: HistoryImported, at: datetime) -> None:
        # a new mapping, never a write into this one: a successor shares it (`successor`);
        # imports are a handful in a log's life
        files = dict(self.imported_files)
        files[event.file_sha256] = event.file_name
        self.imported_files = files

    def _configured(self, seq: int, event: RulesConfigured, at: datetime) -> None:
        self.rules = event

    def _account(self, account: str) -> Accumulators:
        if self._sums_shared:
            self._own_sums()
        acc = self._accounts.get(account)
        if acc is None:
            acc = self._new_account(account)
        return acc

    def _new_account(self, account: str) -> Accumulators:
        """The sums of an account's first cash flow or close. A ledger's first account takes
        the fleet's sums themselves while it is the only one (the two are the same figures:
        each flow and close is then counted once, not twice), unless the fleet has sums of
        its own already; a second account parts them (the first takes a copy)."""
        accounts, fleet = self._accounts, self._acc
        if not accounts and _exact(fleet) == _NO_SUMS:
            acc = fleet
        else:
            if len(accounts) == 1:
                ((name, only),) = accounts.items()
                if only is fleet:
                    accounts[name] = fleet.copy()
            acc = Accumulators()
        accounts[account] = acc
        return acc

    def _realize(self, account: str, amount: Decimal) -> None:
        if self._sums_shared:
            if not amount and account in self._accounts:
                return  # nothing to write (an open without a fee)
            self._own_sums()
        acc = self._accounts.get(account)
        if acc is None:  # the account is in the book from its first cash flow, even a zero
            acc = self._new_account(account)
        if amount:
            cash = self._cash
            if cash is not None:
                cash.append((account, amount))
                return
            fleet = self._acc
            fleet.realize(amount)
            if acc is not fleet:
                acc.realize(amount)

    def _count_close(self, done: Position) -> None:
        acc = self._account(done.account)
        counts = self._counts
        if counts is not None:
            counts.append((done, 1))
            return
        if acc is self._acc:
            acc.record_close(done)
        else:
            self._acc.record_close_beside(done, acc)

    def _amend_close(self, before: Position, after: Position) -> None:
        acc = self._account(before.account)
        counts = self._counts
        if counts is not None:
            counts.append((before, -1))
            counts.append((after, 1))
            return
        fleet = self._acc
        fleet.amend_close(before, after)
        if acc is not fleet:
            acc.amend_close(before, after)

    def _settle(self, cash: list[tuple[str, Decimal]], counts: list[tuple[Position, int]]) -> None:
        """Settle what apply_facts collected, in order: the fleet's sums take all of it, each
        account's its own (cash flows and counts move different sums, so each list keeps its
        own order). One account whose sums are exactly the fleet's (a ledger of one account)
        ends exactly where the fleet's end: computed once, and the account takes the fleet's
        sums themselves (see `_new_account`)."""
        if not cash and not counts:
            return
        if self._sums_shared:
            self._own_sums()
        fleet = self._acc
        names = {name for name, _ in cash}
        names.update(position.account for position, _ in counts)
        amounts = [amount for _, amount in cash]
        if len(names) == 1 and len(self._accounts) == 1:
            (name,) = names
            only = self._accounts[name]
            if only is fleet or _exact(only) == _exact(fleet):
                fleet.settle(amounts, counts)
                self._accounts[name] = fleet
                return
        fleet.settle(amounts, counts)
        for name in names:
            acc = self._accounts[name]
            if acc is fleet:  # the only account (whose flows are all there are)
                continue
            acc.settle(
                [amount for owner, amount in cash if owner == name],
                [count for count in counts if count[0].account == name],
            )

    def apply_all(self, records: Iterable[Recorded]) -> None:
        for record in records:
            self.apply(record)

    def apply_facts(self, facts: FoldPage, *, last_hash: str) -> None:
        """Fold a page in seq order, facts (seq, occurred_us, event) or rows (seq, occurred_us,
        schema_version, body) still encoded: the same book as `apply` on each record, with
        last_hash the hash of the last one (facts carry no hashes).

        The rebuild's fast path. Most of a log is marks, and a run of marks on one position
        is decided by its last one: only it sets the price, PnL, ROE and time; the earlier ones
        matter only through what the last one does not report (the last margin the exchange
        gave, Bybit's openTime, a sighting). So marks wait in runs, one per position, and a run
        is folded when an event of its position that does not commute with a mark comes (or at
        the end): one fold and one datetime per run instead of one per mark. Realized cash
        flows and the closes the statistics count are collected and settled at the end.
        Facts at or below last_seq are ignored.

        Rows are decoded here, as far as the fold needs them: a mark is grouped into its run by
        its body's text (the encoder's form, `MARK_HEAD`) and decoded only if the run's fold
        reads it (its last mark; an earlier one only for what the last does not report, and
        not when its body's ending shows it reports none of that); a body in another form is
        decoded. A mark may also come as `MarkText` (numbers still text): only the numbers a
        fold uses are parsed. A body the fold needs that does not decode, or a number of it
        that is not one, raises IntegrityError at its seq, as decoding it would have.
        """
        # position id -> its run of marks waiting, in seq order (a run is only ever started
        # for an open position, and the position's next other event folds it first)
        cash: list[tuple[str, Decimal]] = []
        counts: list[tuple[Position, int]] = []
        self._cash, self._counts = cash, counts
        if self._skipped_shared:  # the loops below append to it
            self.skipped = list(self.skipped)
            self._skipped_shared = False
        try:
            if facts and len(facts[0]) == 4:
                rows = cast(Sequence[FactRow], facts)
                row_runs: dict[str, list[FactRow]] = {}
                last = self._fold_rows(rows, row_runs)
                for position_id, row_run in row_runs.items():
                    self._fold_row_run(position_id, row_run)
            else:
                runs: dict[str, list[FoldFact]] = {}
                last = self._fold_facts(cast(Sequence[FoldFact], facts), runs)
                for run in runs.values():
                    self._fold_run(run)
        finally:
            self._cash = self._counts = None
            self._settle(cash, counts)
        if last != self.last_seq:
            self.last_seq = last
            self.last_hash = last_hash

    def _fold_rows(self, rows: Sequence[FactRow], runs: dict[str, list[FactRow]]) -> int:
        """apply_facts' loop over rows (ascending seqs, as the store reads them): every event
        folded but the marks left in runs (undecoded); the last seq."""
        open_ = self.open
        head = MARK_HEAD
        start = len(head)
        as_is = MARKS_AS_IS
        current = SCHEMA_VERSION
        decode = decode_for_fold
        # a mark's position id as its body writes it -> the id (only where the two are the
        # same text: an id written with escapes is decoded every time)
        ids: dict[bytes, str] = {}
        beside_marks = _BESIDE_MARKS
        timed = _TIMED
        folds = _FOLDS
        last = self.last_seq
        if rows and rows[0][0] <= last:  # rows in seq order: those in already come first
            rows = [row for row in rows if row[0] > last]
        if not rows:
            return last
        for row in rows:
            body = row[3]
            if body[:start] == head and (row[2] == current or row[2] in as_is):
                end = body.find(b'"', start)
                position_id = ids.get(body[start:end]) if end > 0 else None
                if position_id is None:
                    position_id = _mark(row[0], row[2], body).position_id
                    if end > 0 and body[start:end] == position_id.encode():
                        ids[body[start:end]] = position_id
                run = runs.get(position_id)
                if run is not None:
                    run.append(row)
                elif position_id in open_:
                    runs[position_id] = [row]
                else:
                    self.skipped.append(row[0])
                continue
            seq, occurred_us, schema, _ = row
            try:
                event = decode(body) if schema == current else decode_for_fold_at(body, schema)
            except (msgspec.DecodeError, msgspec.ValidationError):
                event = _exactly(seq, schema, body)
            kind = type(event)
            if kind is MarkText or kind is PositionMarked:  # a mark not in the encoder's form
                position_id = event.position_id  # type: ignore[union-attr]
                run = runs.get(position_id)
                if run is not None:
                    run.append(row)
                elif position_id in open_:
                    runs[position_id] = [row]
                else:
                    self.skipped.append(seq)
                continue
            if kind not in beside_marks:
                of = getattr(event, "position_id", None)
                if of is not None and of in runs:
                    self._fold_row_run(of, runs.pop(of))
            fold_event = folds.get(kind)  # type: ignore[arg-type]
            if fold_event is not None:
                at = from_micros(occurred_us) if kind in timed else _NO_TIME
                fold_event(self, seq, event, at)
        return rows[-1][0]

    def _fold_row_run(self, position_id: str, run: list[FactRow]) -> None:
        """_fold_run of a run of undecoded marks: the last one decoded, and of the earlier
        ones, latest first, only those that may report what it does not."""
        seq, occurred_us, schema, body = run[-1]
        last = _exact_mark(seq, schema, body)  # the mark folded: read exactly, in one call
        position = self.open[position_id]
        price, unrealized, reported = last.mark_price, last.unrealized_pnl, last.initial_margin
        opened_ms = last.exchange_opened_ms
        seen = position.exchange_seen or last.source is Source.EXCHANGE
        if len(run) > 1:
            # a bot's mark reports nothing a run keeps: only the others are decoded, latest
            # first, for the margin and the sighting the last mark does not give
            bot_tail = BOT_MARK_TAIL
            index = len(run) - 1
            while (not reported or not seen) and index > 0:
                index -= 1
                at, _, version, text = run[index]
                if text.endswith(bot_tail):
                    continue
                mark = _mark(at, version, text)
                if not reported:  # a mark without a margin keeps the last one reported
                    margin = mark.initial_margin
                    if margin is not None and _reported(margin, at):
                        reported = _number(margin, at)
                if mark.source is Source.EXCHANGE:
                    seen = True
            # Bybit's openTime: looked for only if a mark of the run may report one (a body
            # that does not end with a null for it); all() and map() run in C
            if not opened_ms and not all(
                map(bytes.endswith, map(_BODY, run), repeat(NO_OPENED_TAIL))
            ):
                for at, _, version, text in reversed(run):
                    opened = _mark(at, version, text).exchange_opened_ms
                    if opened:
                        opened_ms = opened
                        break
        self.open[position_id] = fold.marked_with(
            position,
            price=price,
            unrealized_pnl=unrealized,
            margin=reported if reported else position.real_initial_margin,
            opened_ms=opened_ms or position.exchange_opened_ms,
            seen=seen,
            at=from_micros(occurred_us),
        )

    def _fold_facts(self, facts: Sequence[FoldFact], runs: dict[str, list[FoldFact]]) -> int:
        """apply_facts' loop: every fact folded but the marks left in runs; the last seq."""
        open_ = self.open
        text = MarkText
        marked = PositionMarked
        timed = _TIMED
        beside_marks = _BESIDE_MARKS
        folds = _FOLDS
        last = self.last_seq
        for fact in facts:
            seq, occurred_us, event = fact
            if seq <= last:
                continue
            last = seq
            kind = type(event)
            if kind is text or kind is marked:
                position_id = event.position_id  # type: ignore[union-attr]
                run = runs.get(position_id)
                if run is not None:
                    run.append(fact)
                elif position_id in open_:
                    runs[position_id] = [fact]
                else:
                    self.skipped.append(seq)
                continue
            if kind not in beside_marks:
                of = getattr(event, "position_id", None)
                if of is not None and of in runs:
                    self._fold_run(runs.pop(of))
            fold_event = folds.get(kind)  # type: ignore[arg-type]
            if fold_event is not None:
                at = from_micros(occurred_us) if kind in timed else _NO_TIME
                fold_event(self, seq, event, at)
        return last

    def _fold_run(self, run: list[FoldFact]) -> None:
        """A run of marks on one open position: its last mark folded, after what the earlier
        ones reported that it does not (the last margin, Bybit's openTime, a sighting)."""
        seq, occurred_us, last = run[-1]
        position = self.open[last.position_id]  # type: ignore[union-attr]
        if type(last) is MarkText:  # only the numbers folded are parsed
            price = _number(last.mark_price, seq)
            pnl, margin_text = last.unrealized_pnl, last.initial_margin
            unrealized = None if pnl is None else _number(pnl, seq)
            reported = None if margin_text is None else _number(margin_text, seq)
        else:
            assert type(last) is PositionMarked
            price, unrealized, reported = last.mark_price, last.unrealized_pnl, last.initial_margin
        opened_ms = last.exchange_opened_ms
        seen = position.exchange_seen or last.source is Source.EXCHANGE
        if len(run) > 1:
            earlier = run[-2::-1]  # latest first
            if not reported:  # a mark without a margin keeps the last one reported
                for at, _, mark in earlier:
                    margin = mark.initial_margin  # type: ignore[union-attr]
                    if margin is not None and _reported(margin, at):
                        reported = _number(margin, at)
                        break
            if not opened_ms:
                for _, _, mark in earlier:
                    if mark.exchange_opened_ms:  # type: ignore[union-attr]
                        opened_ms = mark.exchange_opened_ms  # type: ignore[union-attr]
                        break
            if not seen:
                exchange = Source.EXCHANGE
                seen = any(mark.source is exchange for _, _, mark in earlier)  # type: ignore[union-attr]
        self.open[position.position_id] = fold.marked_with(
            position,
            price=price,
            unrealized_pnl=unrealized,
            margin=reported if reported else position.real_initial_margin,
            opened_ms=opened_ms or position.exchange_opened_ms,
            seen=seen,
            at=from_micros(occurred_us),
        )

    def copy(self) -> Book:
        """An independent copy; Positions are immutable, so sharing them is safe."""
        other = Book()
        other.open = dict(self.open)
        other.closed = dict(self.closed)
        other.balance = self.balance
        other.available = self.available
        other._acc, other._accounts = _copied_sums(self._acc, self._accounts)
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
        other._acc, other._accounts = _copied_sums(self._acc, self._accounts)
        other.balances = dict(self.balances)
        other.imported_files = ChainMap({}, self.imported_files)
        other.rules = self.rules
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
        return other

    def successor(self) -> Book:
        """A book equal to this one that takes the next events, leaving this one untouched.

        The Ledger publishes each committed state as a new book, so readers on any thread
        see one committed state, never a half-applied one. Cost: O(open positions), not
        O(history): the open positions are copied; the closed history, the sums, the
        balances, the imports and `skipped` are shared, and whichever of the two books
        writes one of them first writes a copy of its own (an open, a partial exit or a mark
        writes no closed history, an open without a fee no sums). The closed history sits in
        a frozen base layer under a small recent one, merged once the recent layer outgrows
        the square root of the base (`_layered`), so its copy is small too.
        """
        # not Book(): its fresh dicts and sums would be made only to be replaced (the Ledger
        # forks a book per write transaction); every attribute __init__ sets is set here
        # (tests/test_projections.py::test_successor_sets_what_init_sets)
        other = Book.__new__(Book)
        other._cash = None
        other._counts = None
        other.open = dict(self.open)
        # shared, flagged on both sides (this book may be folded on too: it must not write
        # into what its successor holds either)
        other.closed = self.closed
        other._acc = self._acc
        other._accounts = self._accounts
        other.skipped = self.skipped
        other._closed_shared = other._sums_shared = other._skipped_shared = True
        self._closed_shared = self._sums_shared = self._skipped_shared = True
        other.balance = self.balance
        other.available = self.available
        # shared: `_balance` and `_imported` replace the mapping rather than writing into it
        other.balances = self.balances
        other.imported_files = self.imported_files
        other.rules = self.rules
        other.last_seq = self.last_seq
        other.last_hash = self.last_hash
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
        names = {p.account for p in self.open.values()} | set(self._accounts) | set(self.balances)
        return sorted(names)

    def summary(self, account: str | None = None) -> SessionSummary:
        """The session summary of one account, or of the whole fleet (account=None)."""
        if account is None:
            if len(self.balances) > 1:  # several accounts: the fleet's money is their sum
                # in the ledger's arithmetic, not the caller's context (a bot's prec=6 would
                # round the fleet's money, its trapped Inexact raise)
                add = LEDGER_CONTEXT.add
                total = available = ZERO
                for account_total, account_available in self.balances.values():
                    total = add(total, account_total)
                    available = add(available, account_available)
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


class _Layers(ChainMap[str, V]):
    """The ChainMap of a book's layered history, with the two reads the rules and the fold
    make of it on every command (is this id closed? the closed position of this id) as plain
    loops: ChainMap's own `in` runs a generator, and its `get` looks the key up twice."""

    def __contains__(self, key: object) -> bool:
        for mapping in self.maps:  # noqa: SIM110  (any() over a generator is the slow way)
            if key in mapping:
                return True
        return False

    @overload
    def get(self, key: str, default: None = None) -> V | None: ...
    @overload
    def get(self, key: str, default: V | T) -> V | T: ...
    def get(self, key: str, default: object = None) -> object:
        for mapping in self.maps:
            if key in mapping:
                return mapping[key]
        return default


def _two_layers(recent: MutableMapping[str, V], base: MutableMapping[str, V]) -> _Layers[V]:
    """_Layers(recent, base) without ChainMap's __init__ (a Python call, and a list of its
    arguments made only to be copied): a fork makes two of these."""
    layers: _Layers[V] = _Layers.__new__(_Layers)
    layers.maps = [recent, base]
    return layers


def _layered(mapping: MutableMapping[str, V]) -> ChainMap[str, V]:
    """A mapping equal to `mapping` whose writes go to a fresh top layer: ChainMap(recent,
    base), base shared and never written again, recent copied (small)."""
    # a book's own layers, else a plain dict, are known by their type: isinstance of a
    # ChainMap (an ABC) is a slow call, made twice a fork
    kind = type(mapping)
    chained = kind is _Layers or (kind is not dict and isinstance(mapping, ChainMap))
    if chained and len(mapping.maps) == 2:  # type: ignore[attr-defined]
        recent, base = mapping.maps  # type: ignore[attr-defined]
        if len(recent) <= 64 or len(recent) * len(recent) <= len(base):
            return _two_layers(dict(recent), base)
        if isinstance(base, LazyClosed):  # a snapshot's closed history: merged undecoded
            return _two_layers({}, base.merged(recent))  # type: ignore[arg-type]
        return _two_layers({}, {**base, **recent})
    return _two_layers({}, dict(mapping) if chained else mapping)


_BODY = itemgetter(3)  # a row's body
# a margin's text that starts with one of these is not zero (no need to parse it to know)
_NONZERO_LEAD = frozenset("123456789")


_exact = exact_sums  # every figure of the sums, exactly (a Decimal's digits and exponent)
_NO_SUMS = _exact(Accumulators())


def _copied_sums(
    fleet: Accumulators, accounts: dict[str, Accumulators]
) -> tuple[Accumulators, dict[str, Accumulators]]:
    """Copies of the fleet's sums and each account's; a lone account that holds the fleet's
    sums themselves holds the fleet's copy (see `Book._new_account`)."""
    copied = fleet.copy()
    if len(accounts) == 1:  # one account: no comprehension (a call of its own)
        ((name, acc),) = accounts.items()
        return copied, {name: copied if acc is fleet else acc.copy()}
    return copied, {name: acc.copy() for name, acc in accounts.items()}


def _number(value: Decimal | str | int, seq: int) -> Decimal:
    """A number of a mark (text in a MarkText) as a Decimal; IntegrityError at seq if it is
    not one."""
    if type(value) is Decimal:
        return value
    try:
        return number_from_text(value)  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise IntegrityError(seq, f"body does not decode: {exc}") from None


def _exactly(seq: int, schema_version: int, body: bytes) -> FoldEvent:
    """The event of a body the fold's decoder cannot read (a float for a number, say), as the
    exact decoder reads it; IntegrityError at seq if it does not decode."""
    try:
        return decode_for_fold_exactly(body, schema_version)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IntegrityError(seq, f"body does not decode: {exc}") from None


def _exact_mark(seq: int, schema_version: int, body: bytes) -> PositionMarked:
    """A row's mark, decoded exactly; IntegrityError at seq if the body does not decode or
    is no mark."""
    try:
        event = (
            decode_current(body)
            if schema_version == SCHEMA_VERSION
            else decode_event(body, schema_version)
        )
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise IntegrityError(seq, f"body does not decode: {exc}") from None
    if type(event) is PositionMarked:
        return event
    raise IntegrityError(seq, f"body is a {type(event).__name__}, written as a mark")


def _mark(seq: int, schema_version: int, body: bytes) -> MarkText | PositionMarked:
    """A row's mark, decoded (its numbers text where they are); IntegrityError at seq if the
    body does not decode or is no mark."""
    event = _exactly(seq, schema_version, body)
    if type(event) is MarkText or type(event) is PositionMarked:
        return event
    raise IntegrityError(seq, f"body is a {type(event).__name__}, written as a mark")


def _reported(margin: Decimal | str | int, seq: int) -> bool:
    """Whether a mark reported this margin: `marked` treats a zero margin as none."""
    if type(margin) is str and margin[:1] in _NONZERO_LEAD:
        return True
    return bool(_number(margin, seq))


# the fold of each event type but a mark (Book.apply)
_FOLDS: dict[type[AnyEvent], Callable[[Book, int, Any, datetime], None]] = {
    PositionOpened: Book._opened,
    PartialExitRecorded: Book._partly_exited,
    PositionClosed: Book._closed,
    FundingRecorded: Book._funded,
    PositionIncreased: Book._increased,
    PnlAmended: Book._amended,
    ExitIntended: Book._exit_intended,
    ExitAbandoned: Book._exit_abandoned,
    BalanceObserved: Book._balance,
    HistoryImported: Book._imported,
    RulesConfigured: Book._configured,
}
# Events whose fold commutes with a mark's on an open position: `funded` and the exit intents
# read and write none of the fields `marked` reads or writes (price, PnL, margin, ROE, times,
# the exchange's sightings), so a run of marks need not be folded before them.
_BESIDE_MARKS = frozenset({FundingRecorded, ExitIntended, ExitAbandoned})
# events whose fold reads the time (a datetime is made only for them)
_TIMED = frozenset({PositionOpened, PartialExitRecorded, PositionClosed})
_NO_TIME = from_micros(0)  # never read: the events outside _TIMED ignore their time


def fold_records(records: Iterable[Recorded]) -> Book:
    """A book built from nothing by folding records in order."""
    book = Book()
    book.apply_all(records)
    return book
