"""Attack (adversary): `to_decimal`'s int lane (an int within 1e15 made a Decimal without the
bound comparisons) and the sign checks built on it (`positive`, `non_negative`), against a
reference written here: an int's value is `int.__repr__` of it (what it is, whatever a
subclass says of itself), within [-1e15, 1e15] it is that Decimal, beyond it a refusal naming
the bound; a bool is never a number; an int subclass is read by its value, never by its
__str__, __int__ or __index__; zero (and a negative zero, where a Decimal or float has one)
is not positive but is non-negative.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import InvalidValue
from ledger.values import non_negative, positive, to_decimal

BOUND = 10**15


def reference(value: int) -> Decimal | None:
    """The Decimal an int stands for, or None where it is out of bounds."""
    exact = int(int.__repr__(value))
    return Decimal(int.__repr__(value)) if -BOUND <= exact <= BOUND else None


class Liar(int):
    """An int whose every other way of saying its value lies."""

    def __str__(self) -> str:
        return "999"

    def __repr__(self) -> str:
        return "Liar(999)"

    def __int__(self) -> int:
        return 999

    def __index__(self) -> int:
        return 999

    def __abs__(self) -> int:
        return 0

    def __neg__(self) -> int:
        return 0


near = st.sampled_from([BOUND - 1, BOUND, BOUND + 1, -BOUND - 1, -BOUND, -BOUND + 1]).flatmap(
    lambda edge: st.integers(edge - 3, edge + 3)
)


@given(st.one_of(st.integers(), near, st.integers(-(2**70), 2**70)))
def test_an_int_is_its_decimal_within_the_bounds_and_refused_beyond(value: int) -> None:
    expected = reference(value)
    if expected is None:
        with pytest.raises(InvalidValue, match="magnitude above 1e15"):
            to_decimal("x", value)
        return
    got = to_decimal("x", value)
    assert type(got) is Decimal and got == expected and str(got) == str(expected)


@pytest.mark.parametrize("value", [0, 1, 7, BOUND, BOUND + 1, -BOUND - 1, 2**64])
def test_an_int_subclass_is_read_by_its_value_not_by_what_it_says(value: int) -> None:
    liar = Liar(value)
    expected = reference(liar)
    if expected is None:
        with pytest.raises(InvalidValue, match="magnitude above 1e15"):
            to_decimal("x", liar)
        return
    got = to_decimal("x", liar)
    assert type(got) is Decimal and got == expected


@pytest.mark.parametrize("value", [True, False])
def test_a_bool_is_never_a_number(value: bool) -> None:
    for check in (to_decimal, positive, non_negative):
        with pytest.raises(InvalidValue, match="boolean"):
            check("x", value)


@pytest.mark.parametrize("zero", [0, Liar(0), 0.0, -0.0, Decimal(0), Decimal("-0"), "0", "-0"])
def test_zero_in_every_spelling_is_not_positive_but_is_non_negative(zero: object) -> None:
    with pytest.raises(InvalidValue, match="greater than zero"):
        positive("x", zero)
    assert non_negative("x", zero) == 0


@pytest.mark.parametrize("value", [-1, Liar(-1), -(10**15), -1e-12, Decimal("-1e-12"), "-5"])
def test_below_zero_in_every_spelling_is_refused_by_both(value: object) -> None:
    with pytest.raises(InvalidValue, match="greater than zero"):
        positive("x", value)
    with pytest.raises(InvalidValue, match="must not be negative"):
        non_negative("x", value)


@pytest.mark.parametrize("value", [1, Liar(1), BOUND, 1e-12, Decimal("1e-12"), "1e15"])
def test_the_smallest_and_largest_positive_values_are_taken(value: object) -> None:
    got = positive("x", value)
    assert got == non_negative("x", value) > 0
