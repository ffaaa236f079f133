"""Partial-exit rules on ROE (the seed's partial_exit_50_roe, partial_exit_100_roe): pure logic.

A rule exits a fraction of what is left of a position once its ROE reaches a level, at most once
per position. Whether a rule already fired is read from the position itself (the `rule` of its
partial exits), so it holds across restarts and across processes sharing the log.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from decimal import Decimal

import msgspec

from ledger.errors import InvalidValue
from ledger.values import ZERO, positive, to_decimal
from projections.positions import Position

__all__ = [
    "DEFAULT_RULES",
    "ExitOrder",
    "ExitRule",
    "due_exits",
    "fired_rules",
    "order_link_id",
    "parse_rules",
]


class ExitRule(msgspec.Struct, frozen=True, kw_only=True):
    """Exit `fraction` of the qty left once ROE% >= `roe_pct`; `name` goes into the exit."""

    name: str
    roe_pct: Decimal
    fraction: Decimal

    def __post_init__(self) -> None:
        if not self.name.strip():
            raise InvalidValue("name", self.name, "a rule needs a name")
        if not ZERO < self.fraction <= 1:
            raise InvalidValue("fraction", self.fraction, "must be in (0, 1]")


DEFAULT_RULES: tuple[ExitRule, ...] = (
    ExitRule(name="partial_exit_50_roe", roe_pct=Decimal(50), fraction=Decimal("0.5")),
    ExitRule(name="partial_exit_100_roe", roe_pct=Decimal(100), fraction=Decimal("0.5")),
)


class ExitOrder(msgspec.Struct, frozen=True, kw_only=True):
    """A partial exit a rule asks for: qty of the position at (about) price."""

    position_id: str
    rule: str
    qty: Decimal
    price: Decimal
    roe_pct: Decimal
    # the exchange order's link id (Bybit orderLinkId): the same for the same position and
    # rule, so an order placed before a crash is recognisable after the restart
    order_link_id: str = ""


def order_link_id(position_id: str, rule: str) -> str:
    """A deterministic Bybit orderLinkId (at most 36 characters) for a rule's exit."""
    digest = hashlib.sha256(f"{position_id}:{rule}".encode()).hexdigest()[:30]
    return f"pl-{digest}"


def fired_rules(position: Position) -> frozenset[str]:
    """The rules that already exited part of this position, or whose exit the service placed
    (an ExitIntended not yet followed by its exit): never fired twice, even across restarts."""
    done = {e.rule for e in position.partial_exits if e.rule}
    return frozenset(done | set(position.pending_exits))


def due_exits(
    position: Position, rules: Sequence[ExitRule], *, skip: Collection[str] = ()
) -> list[ExitOrder]:
    """The exits due now, lowest level first, each sized on what the previous ones leave.

    Nothing for a closed position, nor for a rule that fired before or is in `skip`.
    """
    if not position.is_open or position.qty <= 0:
        return []
    done = fired_rules(position) | frozenset(skip)
    left = position.qty
    orders: list[ExitOrder] = []
    for rule in sorted(rules, key=lambda r: (r.roe_pct, r.name)):
        if rule.name in done or position.roe_percentage < rule.roe_pct or left <= 0:
            continue
        qty = left if rule.fraction == 1 else left * rule.fraction
        orders.append(
            ExitOrder(
                position_id=position.position_id,
                rule=rule.name,
                qty=qty,
                price=position.current_price,
                roe_pct=position.roe_percentage,
                order_link_id=order_link_id(position.position_id, rule.name),
            )
        )
        left -= qty
    return orders


def parse_rules(text: str) -> tuple[ExitRule, ...]:
    """Rules from "name=roe_pct:fraction,..." e.g. "partial_exit_50_roe=50:0.5".

    Raises InvalidValue naming the bad part.
    """
    rules: list[ExitRule] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, spec = part.partition("=")
        level, colon, fraction = spec.partition(":")
        if not sep or not colon:
            raise InvalidValue("exit rule", part, "expected name=roe_pct:fraction")
        rules.append(
            ExitRule(
                name=name.strip(),
                roe_pct=to_decimal("roe_pct", level),
                fraction=positive("fraction", fraction),
            )
        )
    names = [r.name for r in rules]
    if len(set(names)) != len(names):
        raise InvalidValue("exit rules", text, "rule names must be unique")
    return tuple(rules)
