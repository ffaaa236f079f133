"""Session statistics: running sums kept as events are folded, and the summary built from them.

Win/loss counts a closed position on its whole realized PnL (partial exits + final close -
fees + funding), not on its last unrealized PnL as the seed did.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from decimal import Decimal

import msgspec

from ledger.values import LEDGER_ARITHMETIC, ZERO, exact
from projections.positions import Position

# Sums go through the ledger's context object, never the caller's context.
_C = LEDGER_ARITHMETIC  # LEDGER_CONTEXT's methods, bound once (ledger.values)


# gc=False: figures of ints and Decimals, never part of a reference cycle: the cyclic GC
# need not track (and rescan at every full collection) the one each symbol and close adds
class SymbolStats(msgspec.Struct, kw_only=True, gc=False):
    closed_trades: int = 0
    wins: int = 0
    losses: int = 0
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    funding: Decimal = ZERO


class SymbolLayers(Mapping[str, SymbolStats]):
    """Per-symbol figures that share most of themselves with other sums': a base dict, frozen
    (other sums hold it too: never written again), under a recent dict of the symbols closed
    since, this object's own. What `Accumulators._count` makes of a shared table of many
    symbols instead of copying it: the Ledger publishes a new book for every command, and a
    copy of every symbol's figures (and the free of the old ones) was O(symbols) a close,
    70 us at 10k symbols. A copy of these copies the recent layer alone, merged into a new
    base once it outgrows the square root of the base (the closed history's rule,
    `projections.book._layered`): O(sqrt(symbols)) a close.

    Read as the dict it stands for, in its order: the base's symbols first (each with its
    recent figures where the recent layer has some), then the recent layer's new ones, in
    the order they came, as one dict written in place would hold them. Never encoded: a
    book flattens its sums into plain dicts before anyone outside the fold reads them
    (`projections.book.Book.acc`), and `exact_sums` encodes them as those dicts would be.
    """

    __slots__ = ("_added", "base", "recent")

    def __init__(
        self, base: dict[str, SymbolStats], recent: dict[str, SymbolStats], added: int
    ) -> None:
        self.base = base
        self.recent = recent
        self._added = added  # symbols of recent that base has not

    def __getitem__(self, symbol: str) -> SymbolStats:
        figures = self.recent.get(symbol)
        return self.base[symbol] if figures is None else figures

    def get(self, symbol: str, default: SymbolStats | None = None) -> SymbolStats | None:  # type: ignore[override]
        figures = self.recent.get(symbol)
        return self.base.get(symbol, default) if figures is None else figures

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.recent or symbol in self.base

    def __iter__(self) -> Iterator[str]:
        base = self.base
        yield from base
        for symbol in self.recent:
            if symbol not in base:
                yield symbol

    def __len__(self) -> int:
        return len(self.base) + self._added

    def __repr__(self) -> str:
        return repr(self.flat())

    def flat(self) -> dict[str, SymbolStats]:
        """The plain dict these figures stand for, in its order."""
        return {**self.base, **self.recent}

    def put(self, symbol: str, figures: SymbolStats) -> None:
        """Write a symbol's figures in place: only while these are their sums' own (no copy
        of the sums shares them, see `Accumulators._count`)."""
        recent = self.recent
        if symbol not in recent and symbol not in self.base:
            self._added += 1
        recent[symbol] = figures


# Below this many symbols a shared table is copied whole (as cheap as a layer); from it on,
# layered (see SymbolLayers)
LAYERED_FROM = 64


def _with(
    table: Mapping[str, SymbolStats], symbol: str, figures: SymbolStats
) -> Mapping[str, SymbolStats]:
    """A new table: table with the symbol's figures replaced, table itself untouched (copies
    of the sums share it)."""
    if type(table) is dict:
        if len(table) < LAYERED_FROM:
            own = dict(table)
            own[symbol] = figures
            return own
        return SymbolLayers(table, {symbol: figures}, 0 if symbol in table else 1)
    assert isinstance(table, SymbolLayers)
    base, recent = table.base, table.recent
    if len(recent) < LAYERED_FROM or len(recent) * len(recent) <= len(base):
        own = dict(recent)
        added = table._added
        if symbol not in own and symbol not in base:
            added += 1
        own[symbol] = figures
        return SymbolLayers(base, own, added)
    merged = {**base, **recent}  # O(symbols), once in sqrt(symbols) closes
    merged[symbol] = figures
    return merged


def flatten_symbols(sums: list[Accumulators]) -> None:
    """Each of these sums' per-symbol figures as a plain dict (see SymbolLayers), in place:
    the same figures, in the same order, and one dict for sums that shared one table (a
    book of one account: see `Accumulators.record_close_beside`)."""
    flat: dict[int, dict[str, SymbolStats]] = {}
    for acc in sums:
        table = acc.per_symbol
        if type(table) is not dict:
            assert isinstance(table, SymbolLayers)
            done = flat.get(id(table))
            if done is None:
                done = flat[id(table)] = table.flat()
            acc.per_symbol = done


def _flat_table(value: object) -> dict[str, SymbolStats]:
    if isinstance(value, SymbolLayers):
        return value.flat()
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


# the figures of sums exactly (a Decimal's digits and exponent, dict order), layered or not
_exact_encoder = msgspec.json.Encoder(enc_hook=_flat_table)


def exact_sums(acc: Accumulators) -> bytes:
    """Every figure of the sums, exactly, as `msgspec.json.encode` gives them once flat."""
    return _exact_encoder.encode(acc)


class Accumulators(msgspec.Struct, kw_only=True, dict=True):
    """Running sums over every realized cash flow; snapshotted so snapshot + tail == rebuild.

    `per_symbol` is shared between copies until one of them writes it (see `copy`): the
    Ledger forks the book, and with it these sums, for every write transaction, and a bot
    trading many symbols (or a benchmark opening each position on a new one) paid a copy and
    a free of the whole dict per command. The first write of a shared table of many symbols
    makes a SymbolLayers over it rather than a copy (see `_count`); a book hands its sums out
    with plain dicts (`projections.book.Book.acc`). `dict=True` only gives instances room for
    the flag below; it is no field, so it is neither encoded nor compared.
    """

    closed_trades: int = 0
    wins: int = 0
    losses: int = 0
    closed_realized_pnl: Decimal = ZERO
    gross_profit: Decimal = ZERO
    gross_loss: Decimal = ZERO
    equity: Decimal = ZERO
    peak_equity: Decimal = ZERO
    max_drawdown: Decimal = ZERO
    # a dict, decoded and encoded; a SymbolLayers only inside a book's fold (see above)
    per_symbol: Mapping[str, SymbolStats] = msgspec.field(default_factory=dict)

    # True while per_symbol may be shared with a copy: copied before this one writes it
    _symbols_shared = False

    def realize(self, amount: Decimal) -> None:
        """A realized cash flow moves equity; track its peak and the deepest fall from it."""
        if not amount:
            return
        equity = self.equity = _C.add(self.equity, amount)
        if equity > self.peak_equity:
            # a new peak: no fall from it yet (and max_drawdown is never below zero)
            self.peak_equity = equity
            return
        drawdown = _C.subtract(self.peak_equity, equity)
        if drawdown > self.max_drawdown:
            self.max_drawdown = drawdown

    def realize_all(self, amounts: list[Decimal]) -> None:
        """`realize` of each amount in order, in one pass (a rebuild's page of cash flows)."""
        add, subtract = _C.add, _C.subtract
        equity, peak, deepest = self.equity, self.peak_equity, self.max_drawdown
        for amount in amounts:
            if not amount:
                continue
            equity = add(equity, amount)
            if equity > peak:
                peak = equity
            else:
                drawdown = subtract(peak, equity)
                if drawdown > deepest:
                    deepest = drawdown
        self.equity, self.peak_equity, self.max_drawdown = equity, peak, deepest

    def settle(self, amounts: list[Decimal], counts: list[tuple[Position, int]]) -> None:
        """realize_all(amounts), then each close counted (+1) or taken back (-1) in order:
        the two move different sums, so each keeps only its own order."""
        self.realize_all(amounts)
        for position, sign in counts:
            self._count(position, sign)

    def record_close(self, position: Position) -> None:
        self._count(position, 1)

    def amend_close(self, before: Position, after: Position) -> None:
        """A closed position changed afterwards (funding settled after the close): its old
        figures leave the sums and its new ones enter, a win possibly turning into a loss."""
        self._count(before, -1)
        self._count(after, 1)

    def record_close_beside(self, position: Position, other: Accumulators) -> None:
        """`record_close` of one close on these sums and on other (the fleet's and its
        account's), the same as the two calls. When the two hold one per_symbol dict (a book
        of one account: `Book._settle`, `projections.snapshot` and this method make them
        share it, and two empty ones are equal too), the symbol's new figures are made once
        and the dict copied once, and both go on sharing the new dict (flagged shared on both
        sides, so neither writes into it in place): a close used to copy every symbol's
        figures twice (tests/test_projections.py::test_one_account_shares_its_symbol_figures)."""
        mine, theirs = self.per_symbol, other.per_symbol
        if mine is not theirs and (mine or theirs):
            self._count(position, 1)
            other._count(position, 1)
            return
        self._count(position, 1)
        other._totals(position, 1, position.realized_pnl)
        other.share_symbols(self)

    def share_symbols(self, other: Accumulators) -> None:
        """Hold other's per_symbol dict, equal to this one's, from now on: flagged shared on
        both sides, so whichever writes next copies it first."""
        self.per_symbol = other.per_symbol
        self._symbols_shared = other._symbols_shared = True

    def _totals(self, position: Position, sign: int, pnl: Decimal) -> bool:
        """The fleet-wide figures of _count; whether the close is a win."""
        self.closed_trades += sign
        self.closed_realized_pnl = _C.add(self.closed_realized_pnl, pnl)
        won = position.realized_pnl > ZERO  # ZERO, not 0: no int converted each close
        if won:
            self.wins += sign
            self.gross_profit = _C.add(self.gross_profit, pnl)
        else:
            self.losses += sign
            self.gross_loss = _C.add(self.gross_loss, pnl)
        return won

    def _count(self, position: Position, sign: int) -> None:
        pnl = position.realized_pnl if sign > 0 else _C.minus(position.realized_pnl)
        fees = position.fees if sign > 0 else _C.minus(position.fees)
        funding = position.funding if sign > 0 else _C.minus(position.funding)
        per_symbol, symbol = self.per_symbol, position.symbol
        before = per_symbol.get(symbol) or SymbolStats()
        won = self._totals(position, sign, pnl)
        # a new SymbolStats, never the old one changed: copies share them (see copy)
        figures = SymbolStats(
            closed_trades=before.closed_trades + sign,
            wins=before.wins + (sign if won else 0),
            losses=before.losses + (0 if won else sign),
            realized_pnl=_C.add(before.realized_pnl, pnl),
            fees=_C.add(before.fees, fees),
            funding=_C.add(before.funding, funding),
        )
        if self._symbols_shared:  # a copy holds this table too: a table of our own
            self.per_symbol = _with(per_symbol, symbol, figures)
            self._symbols_shared = False
        elif type(per_symbol) is dict:
            per_symbol[symbol] = figures
        else:
            assert isinstance(per_symbol, SymbolLayers)
            per_symbol.put(symbol, figures)

    def copy(self) -> Accumulators:
        """An independent copy in O(1): per_symbol is shared until either side records a
        close (`_count` copies it first), and the SymbolStats inside stay shared, since the
        fold replaces them rather than changing them. The flag is set on this side too: a
        book that is copied and then folded on (not only the Ledger's published ones, which
        are never folded again) must not write into its copy's dict."""
        self._symbols_shared = True
        other = msgspec.structs.replace(self)
        other._symbols_shared = True
        return other


class SessionSummary(msgspec.Struct, frozen=True, kw_only=True):
    """The seed's get_session_summary keys, computed right, plus the figures a trader asks for."""

    active_positions: int
    used_margin: Decimal
    unrealized_pnl: Decimal
    closed_trades: int
    wins: int
    losses: int
    win_rate: Decimal
    total_realized_pnl: Decimal
    total_pnl: Decimal
    balance: Decimal
    available_balance: Decimal
    closed_realized_pnl: Decimal
    open_realized_pnl: Decimal
    total_fees: Decimal
    total_funding: Decimal
    profit_factor: Decimal | None
    average_win: Decimal
    average_loss: Decimal
    expectancy: Decimal
    max_drawdown: Decimal
    per_symbol: dict[str, SymbolStats]


@exact
def summarize(
    acc: Accumulators,
    open_positions: list[Position],
    balance: Decimal | None,
    available: Decimal | None,
) -> SessionSummary:
    """The summary at this point of the fold.

    total_realized_pnl counts every realized cash flow: closed positions in full, plus what
    open positions have already realized through partial exits, funding and fees.
    """
    used_margin = sum((p.margin for p in open_positions), ZERO)
    unrealized = sum((p.unrealized_pnl for p in open_positions), ZERO)
    open_realized = sum((p.realized_pnl for p in open_positions), ZERO)
    total_realized = acc.closed_realized_pnl + open_realized
    n = acc.closed_trades
    closed_fees = sum((s.fees for s in acc.per_symbol.values()), ZERO)
    closed_funding = sum((s.funding for s in acc.per_symbol.values()), ZERO)
    known_balance = ZERO if balance is None else balance
    return SessionSummary(
        active_positions=len(open_positions),
        used_margin=used_margin,
        unrealized_pnl=unrealized,
        closed_trades=n,
        wins=acc.wins,
        losses=acc.losses,
        win_rate=Decimal(acc.wins) / n if n else ZERO,
        total_realized_pnl=total_realized,
        total_pnl=unrealized + total_realized,
        balance=known_balance,
        # with no balance observed yet there is nothing to subtract the margin from
        available_balance=(
            available
            if available is not None
            else (ZERO if balance is None else balance - used_margin)
        ),
        closed_realized_pnl=acc.closed_realized_pnl,
        open_realized_pnl=open_realized,
        total_fees=closed_fees + sum((p.fees for p in open_positions), ZERO),
        total_funding=closed_funding + sum((p.funding for p in open_positions), ZERO),
        profit_factor=acc.gross_profit / -acc.gross_loss if acc.gross_loss else None,
        average_win=acc.gross_profit / acc.wins if acc.wins else ZERO,
        average_loss=acc.gross_loss / acc.losses if acc.losses else ZERO,
        expectancy=acc.closed_realized_pnl / n if n else ZERO,
        max_drawdown=acc.max_drawdown,
        per_symbol={k: msgspec.structs.replace(v) for k, v in sorted(acc.per_symbol.items())},
    )
