"""Profit-and-loss arithmetic on exact Decimals."""

from __future__ import annotations

from decimal import Decimal

from ledger.values import ZERO, Side

HUNDRED = Decimal(100)


def price_pnl(side: Side, qty: Decimal, entry_price: Decimal, price: Decimal) -> Decimal:
    """PnL of qty moved from entry to price: long gains when price rises, short when it falls."""
    if side is Side.BUY:
        return qty * (price - entry_price)
    return qty * (entry_price - price)


def notional(qty: Decimal, entry_price: Decimal) -> Decimal:
    """USD value at the entry price (the seed's position_size)."""
    return qty * entry_price


def initial_margin(
    qty: Decimal, entry_price: Decimal, leverage: int, real_initial_margin: Decimal | None
) -> Decimal:
    """The exchange's margin when known, else notional / leverage."""
    if real_initial_margin is not None and real_initial_margin > 0:
        return real_initial_margin
    return notional(qty, entry_price) / leverage


def roe_pct(unrealized_pnl: Decimal, margin: Decimal) -> Decimal:
    """Return on equity in percent; zero when there is no margin."""
    if margin <= 0:
        return ZERO
    return unrealized_pnl / margin * HUNDRED


def qty_from_notional(notional_usd: Decimal, entry_price: Decimal) -> Decimal:
    """Quantity worth notional_usd at entry_price."""
    return notional_usd / entry_price
