"""Adversary: `initial_margin` divides the notional by the int leverage itself, no longer by
Decimal(leverage) (f284054). Against a reference written here, in a context of its own, and
against the exact quotient (a Fraction): odd leverages, leverages beyond 28 digits and 2**63,
notionals at the commands' smallest and largest, whatever decimal context the caller set
(few digits, other rounding, Inexact and Rounded trapped), on this thread or another.
"""

from __future__ import annotations

import decimal
import threading
from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from projections.pnl import initial_margin

# the reference's own arithmetic: 28 digits, banker's rounding (the ledger's, per DESIGN)
REFERENCE = decimal.Context(prec=28, rounding=decimal.ROUND_HALF_EVEN, Emin=-999_999, Emax=999_999)

HOSTILE = [
    decimal.Context(prec=3, rounding=decimal.ROUND_DOWN),
    decimal.Context(prec=2, rounding=decimal.ROUND_UP, traps=[decimal.Inexact, decimal.Rounded]),
    decimal.Context(prec=50, rounding=decimal.ROUND_CEILING, Emin=-5, Emax=5),
]


def _reference(qty: Decimal, price: Decimal, leverage: int) -> Decimal:
    return REFERENCE.divide(REFERENCE.multiply(qty, price), Decimal(leverage))  # exact, any size


def _correctly_rounded(result: Decimal, dividend: Decimal, leverage: int) -> bool:
    """Within half a unit of result's last digit of the exact quotient."""
    exact = Fraction(dividend) / leverage
    if not exact:
        return result == 0
    ulp = Fraction(10) ** (result.adjusted() - 27)
    return abs(Fraction(result) - exact) <= ulp / 2


numbers = st.decimals(min_value=Decimal("1e-12"), max_value=Decimal("1e15"), places=None).filter(
    lambda d: d.is_finite() and d > 0
) | st.sampled_from([Decimal("1e-12"), Decimal("1e15"), Decimal("999999999999999.999999999999")])
leverages = st.integers(1, 125) | st.sampled_from(
    [3, 7, 9, 11, 13, 17, 97, 10**28 + 1, 10**40 + 3, 2**63 + 1, 3**60]
)


@settings(max_examples=300, deadline=None)
@given(numbers, numbers, leverages, st.sampled_from(range(len(HOSTILE) + 1)))
def test_margin_by_an_int_leverage_is_the_reference_quotient_whatever_the_callers_context(
    qty: Decimal, price: Decimal, leverage: int, hostile: int
) -> None:
    expected = _reference(qty, price, leverage)
    if hostile == len(HOSTILE):
        got = initial_margin(qty, price, leverage, None)
    else:
        with decimal.localcontext(HOSTILE[hostile]):
            got = initial_margin(qty, price, leverage, None)
    assert type(got) is Decimal
    assert str(got) == str(expected)  # the same digits and exponent, not merely equal
    assert _correctly_rounded(got, REFERENCE.multiply(qty, price), leverage)


def test_margin_on_a_thread_whose_context_traps_inexact_is_the_reference_quotient() -> None:
    cases = [
        (Decimal("0.333"), Decimal("67123.45"), 7),
        (Decimal("1e-12"), Decimal("1e-12"), 3),
        (Decimal("1e15"), Decimal("1e15"), 2**63 + 1),
        (Decimal("123456789.123456789"), Decimal("987654321.987654321"), 10**40 + 3),
    ]
    got: list[Decimal] = []

    def work() -> None:
        decimal.setcontext(decimal.Context(prec=1, traps=[decimal.Inexact, decimal.Rounded]))
        got.extend(initial_margin(q, p, lev, None) for q, p, lev in cases)

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert [str(g) for g in got] == [str(_reference(q, p, lev)) for q, p, lev in cases]
