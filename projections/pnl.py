"""Profit-and-loss arithmetic on exact Decimals, and the one dust rule.

Every operation goes through the ledger's own context object (`LEDGER_CONTEXT.multiply`, ...),
so the figures never depend on the decimal context of whoever calls.
"""

from __future__ import annotations

from decimal import Decimal

from ledger.values import LEDGER_ARITHMETIC, ZERO, Side

HUNDRED = Decimal(100)
_C = LEDGER_ARITHMETIC  # LEDGER_CONTEXT's methods, bound once (ledger.values)

# The dust rule, the one place it lives: a remainder, or an overshoot, within this fraction of
# the opening quantity is rounding (of a notional-to-qty division, of a float), not a real
# size. An exit that leaves so little closes the position exactly; one that overshoots by so
# little exits exactly what is left.
DUST = Decimal("1e-9")


def dust_of(opening_qty: Decimal) -> Decimal:
    """The largest remainder or overshoot that counts as rounding for this opening qty."""
    return _C.multiply(opening_qty, DUST)


def settle_exit(requested: Decimal, remaining: Decimal, opening_qty: Decimal) -> Decimal | None:
    """The qty an exit of `requested` really takes from `remaining`.

    `remaining` itself when the difference either way is dust (the exit closes the position),
    `requested` when it leaves more than dust, None when it overshoots by more than dust.
    """
    difference = _C.subtract(remaining, requested)
    if difference.copy_abs() <= dust_of(opening_qty):
        return remaining
    if difference < ZERO:  # ZERO, not 0: a Decimal compared with an int converts it
        return None
    return requested


def price_pnl(side: Side, qty: Decimal, entry_price: Decimal, price: Decimal) -> Decimal:
    """PnL of qty moved from entry to price: long gains when price rises, short when it falls."""
    if side is Side.BUY:
        return _C.multiply(qty, _C.subtract(price, entry_price))
    return _C.multiply(qty, _C.subtract(entry_price, price))


def notional(qty: Decimal, entry_price: Decimal) -> Decimal:
    """USD value at the entry price (the seed's position_size)."""
    return _C.multiply(qty, entry_price)


def initial_margin(
    qty: Decimal, entry_price: Decimal, leverage: int, real_initial_margin: Decimal | None
) -> Decimal:
    """The exchange's margin when known, else notional / leverage (zero, so ROE is zero, for a
    leverage below 1 that only a log written around the rules can hold: a projection never
    raises on a stored event; `verify` names it)."""
    if real_initial_margin is not None and real_initial_margin > ZERO:
        return real_initial_margin
    if leverage < 1:
        return ZERO
    # notional(), inlined; an int divisor is taken exactly, as Decimal(leverage) would be
    return _C.divide(_C.multiply(qty, entry_price), leverage)


def roe_pct(unrealized_pnl: Decimal, margin: Decimal) -> Decimal:
    """Return on equity in percent; zero when there is no margin."""
    if margin <= ZERO:
        return ZERO
    return _C.multiply(_C.divide(unrealized_pnl, margin), HUNDRED)


def qty_from_notional(notional_usd: Decimal, entry_price: Decimal) -> Decimal:
    """Quantity worth notional_usd at entry_price."""
    return _C.divide(notional_usd, entry_price)
