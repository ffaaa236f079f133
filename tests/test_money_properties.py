"""Hypothesis drives the seed's real call patterns (floats, `size * 0.5`, `size / 3`, exits by
notional, random splits into k exits, both sides) and checks every position closes exactly,
with a realized PnL equal to a reference computed here in plain rational arithmetic."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from decimal import Decimal
from fractions import Fraction

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.blocking import ThreadSafePositionManager
from ledger.service import Ledger
from ledger.settings import Settings

EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
_serial = itertools.count()


def exact(number: float | str | Decimal) -> Fraction:
    """The exact rational a float means as the seed wrote it (its shortest repr)."""
    if isinstance(number, float):
        return Fraction(Decimal(repr(number)))
    return Fraction(Decimal(number))


def reference_realized(
    side: str, entry: Fraction, opened_qty: Fraction, exits: list[tuple[Fraction, Fraction]]
) -> Fraction:
    """Realized PnL of exits [(qty, price)], the last one taking whatever is left."""
    total = Fraction(0)
    left = opened_qty
    for n, (qty, price) in enumerate(exits):
        taken = left if n == len(exits) - 1 else qty
        move = price - entry if side == "buy" else entry - price
        total += taken * move
        left -= taken
    return total


def close_enough(actual: Decimal, expected: Fraction, scale: Fraction) -> bool:
    # 28 significant digits per step: a few units in the 24th digit of the figures involved
    return abs(Fraction(actual) - expected) <= (abs(scale) + 1) * Fraction(1, 10**22)


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadSafePositionManager]:
    folder = tmp_path_factory.mktemp("seed-patterns")
    with ThreadSafePositionManager(
        folder / "positions.json", settings=Settings(max_concurrent_positions=50)
    ) as running:
        yield running


sides = st.sampled_from(["buy", "sell"])
sizes = st.floats(min_value=1.0, max_value=1e6, allow_nan=False, allow_infinity=False)
entries = st.floats(min_value=1e-3, max_value=1e5, allow_nan=False, allow_infinity=False)
moves = st.floats(min_value=-0.5, max_value=0.5, allow_nan=False, allow_infinity=False)


def open_seed(manager: ThreadSafePositionManager, side: str, size: float, entry: float) -> str:
    return manager.thread_safe_create_position(
        symbol=f"P{next(_serial)}USDT",
        side=side,
        entry_price=entry,
        position_size=size,
        leverage=5,
    )


def closed_realized(manager: ThreadSafePositionManager, pid: str) -> Decimal:
    assert manager.get_position(pid) is None, "the position must be closed"
    closed = {p.position_id: p for p in manager.exact.get_closed_positions()}
    return closed[pid].realized_pnl


def exit_seed(
    manager: ThreadSafePositionManager, pid: str, size: float, price: float
) -> tuple[Fraction, Fraction]:
    assert manager.register_partial_exit(pid, size, price, None, "tp")
    return exact(size), exact(price)


@EXAMPLES
@given(side=sides, size=sizes, entry=entries, k=st.integers(2, 7), move=moves)
def test_k_exits_of_size_over_k_close_on_the_last(
    manager: ThreadSafePositionManager, side: str, size: float, entry: float, k: int, move: float
) -> None:
    pid = open_seed(manager, side, size, entry)
    price = entry * (1 + move) or entry
    exits = []
    for n in range(k):
        if n < k - 1:
            assert manager.get_position(pid) is not None, "closed before the last exit"
        exits.append(exit_seed(manager, pid, size / k, price))
    e = exact(entry)
    opened_qty = exact(size) / e
    pieces = [(x / e, p) for x, p in exits]
    expected = reference_realized(side, e, opened_qty, pieces)
    assert close_enough(closed_realized(manager, pid), expected, exact(size))


@EXAMPLES
@given(side=sides, size=sizes, entry=entries, first=moves, second=moves)
def test_half_and_half_by_size_times_point_five(
    manager: ThreadSafePositionManager,
    side: str,
    size: float,
    entry: float,
    first: float,
    second: float,
) -> None:
    pid = open_seed(manager, side, size, entry)
    position = manager.get_position(pid)
    assert position is not None
    half = float(position.position_size) * 0.5  # the seed's own arithmetic on its own float
    exits = [exit_seed(manager, pid, half, entry * (1 + first))]
    assert manager.get_position(pid) is not None
    exits.append(exit_seed(manager, pid, half, entry * (1 + second)))
    e = exact(entry)
    expected = reference_realized(side, e, exact(size) / e, [(x / e, p) for x, p in exits])
    assert close_enough(closed_realized(manager, pid), expected, exact(size))


@EXAMPLES
@given(
    side=sides,
    size=sizes,
    entry=entries,
    weights=st.lists(st.integers(1, 100), min_size=1, max_size=6),
    price_moves=st.lists(moves, min_size=7, max_size=7),
)
def test_random_splits_then_whatever_is_left_close_exactly(
    manager: ThreadSafePositionManager,
    side: str,
    size: float,
    entry: float,
    weights: list[int],
    price_moves: list[float],
) -> None:
    """The bot sizes exits as fractions of the float it was given, then exits what the
    manager says is left (its float position_size), as a seed bot's final take-profit does."""
    pid = open_seed(manager, side, size, entry)
    whole = sum(weights) + 1  # the last share is "whatever is left"
    exits = []
    for weight, move in zip(weights, price_moves, strict=False):
        exits.append(exit_seed(manager, pid, size * weight / whole, entry * (1 + move)))
        assert manager.get_position(pid) is not None
    position = manager.get_position(pid)
    assert position is not None
    exits.append(
        exit_seed(manager, pid, float(position.position_size), entry * (1 + price_moves[-1]))
    )
    e = exact(entry)
    expected = reference_realized(side, e, exact(size) / e, [(x / e, p) for x, p in exits])
    assert close_enough(closed_realized(manager, pid), expected, exact(size))


@settings(max_examples=30, deadline=None)
@given(
    side=sides,
    qty=st.decimals(min_value=Decimal("0.001"), max_value=Decimal(10**6), places=6),
    entry=st.decimals(min_value=Decimal("0.01"), max_value=Decimal(10**5), places=4),
    parts=st.lists(st.integers(1, 1000), min_size=2, max_size=8),
    move=st.decimals(min_value=Decimal("-0.5"), max_value=Decimal("0.5"), places=4),
)
def test_exits_by_qty_and_notional_split_k_ways_close_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    side: str,
    qty: Decimal,
    entry: Decimal,
    parts: list[int],
    move: Decimal,
) -> None:
    """Through the async Ledger: a position split into k exits, alternately by qty and by
    notional (each a rounded share), closes on the k-th with the reference PnL."""
    price = entry * (1 + move)
    total = sum(parts)
    db = tmp_path_factory.mktemp("split") / "ledger.db"

    async def run() -> tuple[bool, Decimal, list[tuple[Fraction, Fraction]]]:
        async with Ledger(db) as ledger:
            pos = await ledger.open_position(
                "SPLITUSDT", side, entry_price=entry, qty=qty, leverage=3
            )
            exits = []
            for n, part in enumerate(parts):
                share = Fraction(qty) * part / total
                if n % 2:
                    notional = Decimal(float(share * Fraction(entry)))  # a rounded notional
                    after = await ledger.register_partial_exit(
                        pos.position_id, notional=notional, price=price
                    )
                    exits.append((Fraction(notional) / Fraction(entry), Fraction(price)))
                else:
                    shared = Decimal(float(share))  # a rounded qty
                    after = await ledger.register_partial_exit(
                        pos.position_id, qty=shared, price=price
                    )
                    exits.append((Fraction(shared), Fraction(price)))
                if n < len(parts) - 1:
                    assert after.is_open
            return not after.is_open, after.realized_pnl, exits

    closed, realized, exits = anyio.run(run)
    assert closed
    expected = reference_realized(side, Fraction(entry), Fraction(qty), exits)
    assert close_enough(realized, expected, Fraction(qty) * Fraction(entry))


def test_the_reference_itself_is_plain_arithmetic() -> None:
    # 500 at entry 100: two exits of 150 then the rest, at 110: 1.5 x 10 twice, then 2 x 10
    e = Fraction(100)
    exits = [
        (Fraction(3, 2), Fraction(110)),
        (Fraction(3, 2), Fraction(110)),
        (Fraction(9), Fraction(110)),
    ]
    assert reference_realized("buy", e, Fraction(5), exits) == 50
    assert reference_realized("sell", e, Fraction(5), exits) == -50
