"""Quantities and money finish exactly: the dust rule, the ledger's own decimal context, bounds."""

from __future__ import annotations

import decimal
import threading
from collections.abc import Awaitable, Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import anyio
import msgspec
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.codec import encode_event
from ledger.errors import ExitExceedsPosition, InvalidValue, UnknownPosition
from ledger.events import FundingRecorded, PartialExitRecorded, PositionClosed
from ledger.service import Ledger
from ledger.settings import Settings

pytestmark = pytest.mark.anyio


def ref_pnl(side: str, qty: Fraction, entry: Fraction, price: Fraction) -> Fraction:
    """The independent reference: plain rational arithmetic, long gains when price rises."""
    return qty * (price - entry) if side == "buy" else qty * (entry - price)


async def test_100_usd_at_7_exited_as_50_and_50_closes(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("SOLUSDT", "buy", entry_price=7, notional=100, leverage=2)
        await ledger.register_partial_exit(pos.position_id, notional=50, price=8)
        done = await ledger.register_partial_exit(pos.position_id, notional=50, price=9)
        assert not done.is_open and done.qty == 0
        assert ledger.active_positions() == []
        # the position no longer blocks re-entry on the same market and side
        await ledger.open_position("SOLUSDT", "buy", entry_price=7, notional=100, leverage=2)
        qty = Fraction(100, 7)
        expected = ref_pnl("buy", qty / 2, Fraction(7), Fraction(8)) + ref_pnl(
            "buy", qty / 2, Fraction(7), Fraction(9)
        )
        assert abs(Fraction(done.realized_pnl) - expected) < Fraction(1, 10**20)


async def test_an_overshoot_beyond_dust_is_refused_and_within_dust_exits_all(
    db_path: Path,
) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "sell", entry_price=100, qty=10, leverage=2)
        head = ledger.last_seq
        with pytest.raises(ExitExceedsPosition):
            await ledger.register_partial_exit(pos.position_id, qty="10.0001", price=90)
        assert ledger.last_seq == head
        # 10 + 5e-9 overshoots by less than 1e-9 of the opening 10: rounding, exits the 10
        done = await ledger.register_partial_exit(pos.position_id, qty="10.000000005", price=90)
        assert not done.is_open
        events = [r.event for r in await ledger.history(pos.position_id)]
        exits = [e for e in events if isinstance(e, PartialExitRecorded)]
        assert [e.qty for e in exits] == [Decimal(10)]


async def test_a_remainder_within_dust_closes_and_one_above_it_stays_open(
    db_path: Path,
) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("ETHUSDT", "buy", entry_price=100, qty=10, leverage=2)
        left = await ledger.register_partial_exit(pos.position_id, qty="9.99999998", price=101)
        assert left.is_open and left.qty == Decimal("0.00000002")
        other = await ledger.open_position("XRPUSDT", "buy", entry_price=1, qty=10, leverage=2)
        done = await ledger.register_partial_exit(other.position_id, qty="9.999999995", price=2)
        assert not done.is_open and done.qty == 0
        exit_event = (await ledger.history(other.position_id))[1].event
        assert isinstance(exit_event, PartialExitRecorded) and exit_event.qty == 10


def test_three_exits_of_a_third_through_the_seed_api_close_on_the_third(tmp_path: Path) -> None:
    with ThreadSafePositionManager(tmp_path / "positions.json") as manager:
        pid = manager.thread_safe_create_position(
            symbol="BTCUSDT", side="buy", entry_price=50000.0, position_size=100.0, leverage=5
        )
        for n in range(3):
            assert manager.register_partial_exit(pid, 100.0 / 3, 51000.0, None, f"tp{n}")
        assert manager.get_position(pid) is None
        assert [p.position_id for p in manager.get_closed_positions()] == [pid]


async def _run_session(path: Path) -> tuple[list[bytes], bytes]:
    async with Ledger(path) as ledger:
        pos = await ledger.open_position(
            "BTCUSDT", "buy", entry_price="60000.123", notional=1000, leverage=7, position_id="p1"
        )
        await ledger.mark(pos.position_id, "61234.567")
        await ledger.register_partial_exit(pos.position_id, notional=333, price="62000.77")
        await ledger.record_funding(pos.position_id, "-0.1234567", execution_id="f1")
        await ledger.close_position(pos.position_id, price="59999.999", fee="0.13")
        short = await ledger.open_position(
            "ETHUSDT", "sell", entry_price=3, notional="13.66653", leverage=3, position_id="p2"
        )
        await ledger.register_partial_exit(short.position_id, notional=1, price="2.7")
        summary = msgspec.json.encode(ledger.session_summary())
        events = [encode_event(r.event) for r in await ledger.history("p1")]
        events += [encode_event(r.event) for r in await ledger.history("p2")]
        return events, summary


async def test_the_callers_decimal_context_never_reaches_the_figures(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    reference = await _run_session(tmp_path / "a" / "ledger.db")
    with decimal.localcontext() as caller:
        caller.prec = 6
        caller.rounding = decimal.ROUND_DOWN
        caller.traps[decimal.Inexact] = True
        caller.traps[decimal.Rounded] = True
        hostile = await _run_session(tmp_path / "b" / "ledger.db")
    assert hostile == reference
    # 13.66653 USD at 3 is 4.55551 exactly: six digits would have stored 4.55551 too, so the
    # long BTC quotient (1000 / 60000.123) is the figure a prec=6 context would have cut
    assert b'"qty":"4.55551"' in b"".join(reference[0])
    btc_qty = decimal.Context(prec=28).divide(Decimal(1000), Decimal("60000.123"))
    assert f'"qty":"{btc_qty}"'.encode() in reference[0][0]


def test_the_callers_decimal_context_never_reaches_the_blocking_figures(tmp_path: Path) -> None:
    def session(folder: Path) -> list[object]:
        folder.mkdir()
        with ThreadSafePositionManager(folder / "positions.json") as manager:
            pid = manager.thread_safe_create_position(
                symbol="ETHUSDT", side="sell", entry_price=3.0, position_size=13.66653, leverage=3
            )
            manager.update_position_price(pid, 2.9)
            manager.register_partial_exit(pid, 13.66653 / 3, 2.8, None, "tp")
            position = manager.ledger.book.open[pid]
            return [position.qty, position.realized_pnl, position.unrealized_pnl]

    reference = session(tmp_path / "a")
    seen: list[object] = []

    def hostile() -> None:  # decimal contexts are per thread: set it in the calling thread
        decimal.getcontext().prec = 6
        decimal.getcontext().traps[decimal.Inexact] = True
        seen.extend(session(tmp_path / "b"))

    worker = threading.Thread(target=hostile)
    worker.start()
    worker.join()
    assert seen == reference


@pytest.mark.parametrize(
    "bad",
    [
        "1e16",
        "-1e16",
        "9e999999",
        "1e-13",
        "1e-999999999",
        "NaN",
        "sNaN",
        "Infinity",
        float("inf"),
        float("nan"),
        10**16,
        True,
        "1" * 40,
    ],
)
async def test_numbers_outside_the_bounds_are_refused_before_anything_is_decided(
    db_path: Path, bad: object
) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price=100, qty=1, leverage=2)
        head = ledger.last_seq
        attempts: list[Callable[[], Awaitable[object]]] = [
            lambda: ledger.open_position("ETHUSDT", "buy", entry_price=bad, qty=1, leverage=2),  # type: ignore[arg-type]
            lambda: ledger.open_position("ETHUSDT", "buy", entry_price=1, qty=bad, leverage=2),  # type: ignore[arg-type]
            lambda: ledger.register_partial_exit(pos.position_id, qty=bad, price=101),  # type: ignore[arg-type]
            lambda: ledger.register_partial_exit(pos.position_id, notional=bad, price=101),  # type: ignore[arg-type]
            lambda: ledger.register_partial_exit(pos.position_id, qty=1, price=bad),  # type: ignore[arg-type]
            lambda: ledger.mark(pos.position_id, bad),  # type: ignore[arg-type]
            lambda: ledger.close_position(pos.position_id, price=bad),  # type: ignore[arg-type]
            lambda: ledger.close_position(pos.position_id, price=1, realized_pnl=bad),  # type: ignore[arg-type]
            lambda: ledger.record_funding(pos.position_id, bad, execution_id="x"),  # type: ignore[arg-type]
            lambda: ledger.observe_balance(bad, 1),  # type: ignore[arg-type]
        ]
        for attempt in attempts:
            with pytest.raises(InvalidValue):
                await attempt()
        assert ledger.last_seq == head


async def test_a_derived_quantity_below_the_bounds_is_refused(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        with pytest.raises(InvalidValue):  # 1e-12 USD at 1e15: 1e-27 of a coin
            await ledger.open_position(
                "BTCUSDT", "buy", entry_price="1e15", notional="1e-12", leverage=2
            )
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price="1e12", qty=1, leverage=2)
        with pytest.raises(InvalidValue):
            await ledger.register_partial_exit(pos.position_id, notional="1e-6", price=1)
        assert ledger.last_seq == 1


async def test_no_event_with_a_zero_quantity_is_committed(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price=100, qty=1, leverage=2)
        for zero in (0, "0", "0E-999999999", "-0"):
            with pytest.raises(InvalidValue):
                await ledger.register_partial_exit(pos.position_id, qty=zero, price=101)
            with pytest.raises(InvalidValue):
                await ledger.open_position("ETHUSDT", "buy", entry_price=1, qty=zero, leverage=2)
        assert ledger.last_seq == 1


async def test_funding_the_bot_records_is_idempotent_by_execution_id(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price=100, qty=1, leverage=2)
        first = await ledger.record_funding(pos.position_id, "-0.25", execution_id="exec-1")
        again = await ledger.record_funding(pos.position_id, "-0.25", execution_id="exec-1")
        assert first.funding == again.funding == Decimal("-0.25")
        other = await ledger.record_funding(pos.position_id, "0.05", execution_id="exec-2")
        assert other.funding == Decimal("-0.20")
        stored = [r.event for r in await ledger.history(pos.position_id)]
        assert [e.execution_id for e in stored if isinstance(e, FundingRecorded)] == [
            "exec-1",
            "exec-2",
        ]
        done = await ledger.close_position(pos.position_id, price=100)
        # a retry after the close is still the same payment, counted once
        retried = await ledger.record_funding(pos.position_id, "0.05", execution_id="exec-2")
        assert retried.funding == done.funding == Decimal("-0.20")
        assert retried.realized_pnl == done.realized_pnl
        # funding settled while open and reported after the close amends the closed position
        late = await ledger.record_funding(pos.position_id, "-0.5", execution_id="exec-3")
        assert late.funding == Decimal("-0.70")
        assert late.realized_pnl == done.realized_pnl - Decimal("0.5")
        assert ledger.session_summary().total_realized_pnl == late.realized_pnl
        with pytest.raises(UnknownPosition):
            await ledger.record_funding("pos_nobody", "1", execution_id="exec-4")
    async with Ledger(db_path) as reopened:  # the key holds across processes' restarts too
        head = reopened.last_seq
        await reopened.open_position("ETHUSDT", "buy", entry_price=1, qty=1, leverage=2)
        closed = [r.event for r in await reopened.history(pos.position_id)]
        assert isinstance(closed[-2], PositionClosed)
        assert isinstance(closed[-1], FundingRecorded) and closed[-1].execution_id == "exec-3"
        assert reopened.last_seq == head + 1


async def test_a_full_exit_by_float_notional_closes_both_sides(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        for side in ("buy", "sell"):
            pos = await ledger.open_position(
                f"{side.upper()}USDT", side, entry_price=0.3, notional=0.7, leverage=3
            )
            for part in (0.1, 0.2, 0.4):
                last = await ledger.register_partial_exit(
                    pos.position_id, notional=part, price=0.31
                )
            assert not last.is_open
        assert ledger.active_positions() == []


def test_settings_limits_default_is_the_recorded_default() -> None:
    # the audit treats an unrecorded log as written under these: the settings' defaults must
    # be the same numbers
    from ledger.commands import DEFAULT_LIMITS

    assert Settings().limits == DEFAULT_LIMITS


async def test_a_number_that_would_overflow_a_fold_fails_alone_in_its_group(
    db_path: Path,
) -> None:
    """qty 9e999999 is refused as InvalidValue before anything is decided, whether it comes
    through the API, a hand-built command or a raw decider, while the ten valid commands
    queued beside it in the same group commit are stored."""
    from ledger.commands import OpenPosition
    from ledger.events import PositionOpened
    from ledger.service import Plan
    from ledger.values import Side

    huge = Decimal("9e999999")

    def raw_decider(book: object) -> list[Plan]:
        event = PositionOpened(
            position_id="raw", symbol="RAWUSDT", side=Side.BUY, qty=huge,
            entry_price=Decimal(10), leverage=2,
        )  # fmt: skip
        return [Plan(event)]

    poisoned = OpenPosition(
        position_id="cmd", symbol="CMDUSDT", side=Side.BUY, qty=huge,
        entry_price=Decimal(10), leverage=2,
    )  # fmt: skip
    async with Ledger(db_path, settings=Settings(max_concurrent_positions=20)) as ledger:
        outcomes: dict[str, object] = {}

        async def run(name: str, job: Callable[[], Awaitable[object]]) -> None:
            try:
                await job()
                outcomes[name] = "ok"
            except InvalidValue as exc:
                outcomes[name] = exc

        async with anyio.create_task_group() as group:
            for n in range(10):
                group.start_soon(
                    run,
                    f"valid{n}",
                    lambda n=n: ledger.open_position(
                        f"V{n}USDT", "buy", entry_price=10, qty=1, leverage=2
                    ),
                )
            group.start_soon(
                run,
                "api",
                lambda: ledger.open_position(
                    "BADUSDT", "buy", entry_price=10, qty=huge, leverage=2
                ),
            )
            group.start_soon(run, "command", lambda: ledger.execute(poisoned))
            group.start_soon(run, "raw", lambda: ledger.transact(raw_decider))
        assert [outcomes[f"valid{n}"] for n in range(10)] == ["ok"] * 10
        for name in ("api", "command", "raw"):
            assert isinstance(outcomes[name], InvalidValue), name
        assert len(ledger.active_positions()) == 10
        opened = sum(1 for n in range(10) if ledger.has_position_for_symbol(f"V{n}USDT"))
        assert opened == 10


def test_resizing_to_the_size_read_back_is_no_trade_and_to_zero_closes(tmp_path: Path) -> None:
    with ThreadSafePositionManager(tmp_path / "positions.json") as manager:
        pid = manager.thread_safe_create_position(
            symbol="SOLUSDT", side="sell", entry_price=7.0, position_size=100.0, leverage=3
        )
        head = manager.ledger.last_seq
        seen = manager.get_position(pid)
        assert seen is not None
        # the float the seed API hands back, given back: a rounding of the size, not a trade
        assert manager.update_position_size(pid, float(seen.position_size) * (1 + 1e-15))
        assert manager.ledger.last_seq == head
        assert manager.update_position_size(pid, float(seen.position_size) * 0.5, 6.5)
        assert manager.update_position_size(pid, 0.0, 6.0)
        assert manager.get_position(pid) is None
        closed = manager.exact.get_closed_positions()[0]
        # reference: 100/7 coins short from 7, half closed at 6.5, the rest at 6
        half = Fraction(100, 7) / 2
        expected = half * Fraction(1, 2) + half * 1
        assert abs(Fraction(closed.realized_pnl) - expected) < Fraction(1, 10**20)


def test_to_decimal_takes_a_decimal_as_it_is_only_within_the_bounds() -> None:
    """A Decimal given as it is (to_decimal's quick way) is the same object back when finite
    and zero or within 1e-12..1e15 in magnitude; anything else is refused with InvalidValue."""
    from ledger.values import to_decimal

    texts = [
        "0", "-0", "0E-30", "1e15", "-1e15", "1.000000000000000000001e15", "-1.0000000000000001e15",
        "1e-12", "-1e-12", "9.99999999999999999e-13", "1e-13", "123.456", "1E+999999",
        "1e-999999", "NaN", "-sNaN", "Infinity", "-Infinity",
    ]  # fmt: skip
    for text in texts:
        value = Decimal(text)
        # the reference, in exact fractions: finite, and zero or 1e-12 <= |value| <= 1e15
        finite = text.lstrip("-").lower() not in ("nan", "snan", "infinity")
        size = abs(Fraction(value)) if finite else None
        fits = size is not None and (size == 0 or Fraction(1, 10**12) <= size <= Fraction(10**15))
        if fits:
            assert to_decimal("x", value) is value, text
        else:
            with pytest.raises(InvalidValue):
                to_decimal("x", value)


def test_to_decimal_of_floats_and_ints_is_exact_and_bounded() -> None:
    """A float is its shortest repr, an int itself, exactly, when zero or within 1e-12..1e15
    in magnitude; beyond, a NaN, an infinity or a bool is refused. Subclasses of float, int
    and Decimal are read as their base type's value, under the same bounds."""
    from ledger.values import to_decimal

    class Real(float):
        pass

    class Whole(int):
        pass

    class Exact(Decimal):
        pass

    values: list[object] = [
        0.1, 1e15, 1.0000000000000002e15, 1e-12, 9.9e-13, 0.0, -0.0, 1e16, -123.456, 5e-324,
        float("nan"), float("inf"), float("-inf"), 5, 0, -7, 10**15, 10**15 + 1, -(10**15) - 1,
        True, False, Real(0.5), Real(1e16), Whole(3), Whole(10**16), Exact("2.5"), Exact("1e16"),
    ]  # fmt: skip
    for raw in values:
        if isinstance(raw, bool):
            reference = None  # a boolean is not a number
        elif isinstance(raw, float):
            finite = raw == raw and raw not in (float("inf"), float("-inf"))
            reference = Fraction(repr(float(raw))) if finite else None
        else:
            reference = Fraction(raw)  # type: ignore[call-overload]
        fits = reference is not None and (
            reference == 0 or Fraction(1, 10**12) <= abs(reference) <= 10**15
        )
        if fits:
            assert Fraction(to_decimal("x", raw)) == reference, raw
        else:
            with pytest.raises(InvalidValue):
                to_decimal("x", raw)


def test_the_ledger_arithmetic_is_the_ledger_contexts_own() -> None:
    """LEDGER_ARITHMETIC's methods (what the rules and folds compute with) are LEDGER_CONTEXT's
    own, bound to that very context object: 28 digits, half-even, whatever context the caller
    set (checked against exact fractions rounded here)."""
    from ledger.values import LEDGER_ARITHMETIC, LEDGER_CONTEXT

    for name in ("add", "subtract", "multiply", "divide", "minus"):
        method = getattr(LEDGER_ARITHMETIC, name)
        assert method.__self__ is LEDGER_CONTEXT, name
        assert method.__name__ == name

    def rounded(value: Fraction) -> Decimal:
        """value to 28 significant digits, half to even (for the values below: 0 < value)."""
        digits = 0
        while value * 10**digits < 10**27:
            digits += 1
        while value * 10**digits >= 10**28:
            digits -= 1
        scaled = value * Fraction(10) ** digits
        whole, rest = divmod(scaled.numerator, scaled.denominator)
        if 2 * rest > scaled.denominator or (2 * rest == scaled.denominator and whole % 2):
            whole += 1
        return Decimal(whole).scaleb(-digits)

    third, big, tiny = Decimal(2), Decimal("123456789.123456789"), Decimal("1e-20")
    with decimal.localcontext(decimal.Context(prec=3, rounding=decimal.ROUND_DOWN)):
        got = [
            LEDGER_ARITHMETIC.divide(third, Decimal(3)),
            LEDGER_ARITHMETIC.add(big, tiny),
            LEDGER_ARITHMETIC.multiply(big, big),
            LEDGER_ARITHMETIC.subtract(big, tiny),
        ]
        negated = LEDGER_ARITHMETIC.minus(Decimal("-1.5"))
    expected = [
        rounded(Fraction(2, 3)),
        rounded(Fraction(big) + Fraction(tiny)),
        rounded(Fraction(big) * Fraction(big)),
        rounded(Fraction(big) - Fraction(tiny)),
    ]
    assert got == expected
    assert negated == Decimal("1.5")
