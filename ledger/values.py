"""Value types and the one place external numbers and times become exact ledger values."""

from __future__ import annotations

import decimal
import enum
from collections.abc import Callable
from contextlib import AbstractContextManager
from contextvars import copy_context
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from ledger.errors import InvalidValue

ZERO = Decimal(0)

# The ledger's own arithmetic: 28 significant digits, banker's rounding, and the signals that
# mean a bug (not rounding) trapped. Every fold, rule and parse runs in it, whatever context
# the caller set: a bot with prec=6 or a trapped Inexact must get the same events and figures.
LEDGER_CONTEXT = decimal.Context(
    prec=28,
    rounding=decimal.ROUND_HALF_EVEN,
    Emin=-999_999,
    Emax=999_999,
    capitals=1,
    clamp=0,
    flags=[],
    traps=[decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


class _Arithmetic:
    """LEDGER_CONTEXT's arithmetic, each method bound once. decimal.Context has an attribute
    lookup of its own, so `LEDGER_CONTEXT.add(a, b)` makes a bound method (and frees it) on
    every call: a third of what a sum cost the folds and rules. These are the same methods of
    the same context object (tests/test_exact_values.py::
    test_the_ledger_arithmetic_is_the_ledger_contexts_own)."""

    __slots__ = ("add", "divide", "minus", "multiply", "subtract")

    def __init__(self, context: decimal.Context) -> None:
        self.add = context.add
        self.subtract = context.subtract
        self.multiply = context.multiply
        self.divide = context.divide
        self.minus = context.minus


# `LEDGER_ARITHMETIC.add(a, b)`: LEDGER_CONTEXT.add(a, b), without a bound method per call
LEDGER_ARITHMETIC = _Arithmetic(LEDGER_CONTEXT)

# Sane bounds for any number a caller hands the ledger (prices, sizes, money): inside them no
# sum, product or quotient the ledger makes can overflow, underflow or lose a whole digit.
MAX_MAGNITUDE = Decimal("1e15")
MIN_MAGNITUDE = Decimal("1e-12")
_MAX_INT = 10**15  # MAX_MAGNITUDE as an int
_MIN_INT = -_MAX_INT

P = ParamSpec("P")
R = TypeVar("R")


def ledger_context() -> AbstractContextManager[decimal.Context]:
    """`with ledger_context():` runs the block in the ledger's decimal context."""
    return decimal.localcontext(LEDGER_CONTEXT)


def exact(fn: Callable[P, R]) -> Callable[P, R]:
    """Run fn in the ledger's decimal context (an entry point of ledger arithmetic).

    In a copy of the caller's context variables (the decimal context is one), a copy of
    LEDGER_CONTEXT current there: Context.run leaves it in C however fn ends, where a `with
    localcontext()` exit interrupted before its __exit__ left the caller's thread in the
    ledger's context (tests/test_adv_decimal_context.py)."""

    def in_ledger_context(args: tuple[Any, ...], kwargs: dict[str, Any]) -> R:
        decimal.setcontext(LEDGER_CONTEXT.copy())
        return fn(*args, **kwargs)

    @wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return copy_context().run(in_ledger_context, args, kwargs)

    return run


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @classmethod
    def parse(cls, raw: object) -> Side:
        """Accept 'buy'/'sell', 'long'/'short' in any case; raises InvalidValue."""
        if not isinstance(raw, str):
            raise InvalidValue("side", raw, f"expected 'buy' or 'sell', got {type(raw).__name__}")
        side = _SIDES.get(raw)  # the usual spellings, as they are
        if side is None:
            side = _SIDES.get(raw.strip().lower())
            if side is None:
                raise InvalidValue("side", raw, "expected 'buy' or 'sell'")
        return side


_SIDES = {"buy": Side.BUY, "long": Side.BUY, "sell": Side.SELL, "short": Side.SELL}


class Source(enum.StrEnum):
    """Who caused a fact: the bot's own command, or an observation of the exchange."""

    BOT = "bot"
    EXCHANGE = "exchange"
    IMPORT = "import"


def market_key(symbol: str) -> str:
    """The exchange market id for a symbol in any common spelling.

    "BTC/USDT:USDT", "BTC/USDT" and "BTCUSDT" all give "BTCUSDT": one market, however a bot or
    the exchange wrote it, for matching rows and for the one-position-per-side rule.
    """
    text = symbol.strip().upper()
    text = text.split(":", 1)[0]
    return text.replace("/", "").replace("-", "")


def to_decimal(field: str, raw: object) -> Decimal:
    """Exact Decimal from str/int/Decimal, or a float through its shortest repr.

    Raises InvalidValue for bools, NaN, infinities and anything unparseable.
    """
    # The usual cases first, known by their exact type: a Decimal as it is, a float through its
    # repr, an int; finite and zero or within the bounds, the value. Anything else (a bool, a
    # subclass, text, a value out of bounds) takes the checks below, which decide and name it.
    kind = type(raw)
    if kind is Decimal:
        value: Decimal = raw  # type: ignore[assignment]
    elif kind is int:
        # an int is zero or at least 1 in magnitude: within the bounds up to 1e15
        if _MIN_INT <= raw <= _MAX_INT:  # type: ignore[operator]
            return Decimal(raw)  # type: ignore[arg-type]
        return _to_decimal(field, raw)
    elif kind is float:
        value = Decimal(repr(raw))
    else:
        return _to_decimal(field, raw)
    if value.is_finite():
        size = value.copy_abs()
        if size <= MAX_MAGNITUDE and (size >= MIN_MAGNITUDE or not size):
            return value
    return _to_decimal(field, raw)


def _to_decimal(field: str, raw: object) -> Decimal:
    """to_decimal of any value, each check in turn; raises InvalidValue."""
    if isinstance(raw, bool):
        raise InvalidValue(field, raw, "a boolean is not a number")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, float):
        # repr gives the shortest string that round-trips: 0.1 -> "0.1", not 0.1000000000000000055
        # (float's own: a subclass's may say anything)
        value = Decimal(float.__repr__(raw))
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise InvalidValue(field, raw, "not a number") from None
    else:
        raise InvalidValue(field, raw, f"expected a number, got {type(raw).__name__}")
    # Decimal's own methods: a subclass may override them (a NaN saying it is finite would
    # reach a comparison, which raises an untyped InvalidOperation)
    if not Decimal.is_finite(value):
        raise InvalidValue(field, raw, "must be finite")
    return bounded(field, value, raw)


def bounded(field: str, value: Decimal, raw: object = None) -> Decimal:
    """value itself when zero or within [1e-12, 1e15] in magnitude; raises InvalidValue.

    copy_abs and comparisons are exact: nothing here depends on any decimal context.
    """
    size = Decimal.copy_abs(value)  # Decimal's own (a subclass may override it)
    if size > MAX_MAGNITUDE:
        raise InvalidValue(field, value if raw is None else raw, "magnitude above 1e15")
    if size and size < MIN_MAGNITUDE:
        raise InvalidValue(field, value if raw is None else raw, "non-zero below 1e-12")
    return value


def text(field: str, raw: object) -> str:
    """A str (reasons, symbols, names); anything else, None included, raises InvalidValue."""
    if not isinstance(raw, str):
        raise InvalidValue(field, raw, f"expected a string, got {type(raw).__name__}")
    return raw


def optional_text(field: str, raw: object) -> str | None:
    return None if raw is None else text(field, raw)


def identifier(field: str, raw: object) -> str:
    """A non-empty str id (position ids, execution ids); raises InvalidValue."""
    value = text(field, raw)
    if not value.strip():
        raise InvalidValue(field, raw, "must not be empty")
    return value


def integer(field: str, raw: object) -> int:
    """An int (not a bool, which is an int subclass); raises InvalidValue."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise InvalidValue(field, raw, f"expected an integer, got {type(raw).__name__}")
    return raw


def flag(field: str, raw: object) -> bool:
    if not isinstance(raw, bool):
        raise InvalidValue(field, raw, f"expected True or False, got {type(raw).__name__}")
    return raw


def positive(field: str, raw: object) -> Decimal:
    """A finite Decimal > 0; raises InvalidValue."""
    value = to_decimal(field, raw)
    if value <= ZERO:  # ZERO, not 0: a Decimal compared with an int converts it each time
        raise InvalidValue(field, raw, "must be greater than zero")
    return value


def non_negative(field: str, raw: object) -> Decimal:
    """A finite Decimal >= 0; raises InvalidValue."""
    value = to_decimal(field, raw)
    if value < ZERO:
        raise InvalidValue(field, raw, "must not be negative")
    return value


def optional_decimal(field: str, raw: object) -> Decimal | None:
    """None stays None; anything else goes through to_decimal."""
    return None if raw is None else to_decimal(field, raw)


_LATEST = datetime.max.replace(tzinfo=UTC)
_EARLIEST = datetime.min.replace(tzinfo=UTC)


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive input is taken as UTC.

    A moment past the ends of datetime's range once moved to UTC (9999-12-31T23:59:59-14:00,
    0001-01-01T00:00:00+14:00) is clamped to the end it passed: as a bound it means "all".
    """
    if type(moment) is not datetime:
        moment = plain_datetime(moment)
    if moment.tzinfo is None or moment.utcoffset() is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        offset = moment.utcoffset()
        return _LATEST if offset is not None and offset < timedelta(0) else _EARLIEST


def parse_time(raw: str, field: str = "time") -> datetime:
    """ISO 8601 with or without a zone (UTC when none); raises InvalidValue."""
    if not isinstance(raw, str):
        raise InvalidValue(field, raw, f"expected an ISO 8601 string, got {type(raw).__name__}")
    text = raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise InvalidValue(field, raw, "expected ISO 8601, e.g. 2025-01-07T17:00:00") from None


def aware_time(field: str, raw: object) -> datetime:
    """An aware UTC moment from a datetime or an ISO 8601 string; raises InvalidValue.

    The one rule for naive times, everywhere (API, CLI, seed files): a datetime or text
    without a zone is UTC, as the seed's own files are read. A moment past either end of the
    calendar once in UTC is clamped to that end.
    """
    if isinstance(raw, datetime):
        return utc(raw)
    if isinstance(raw, str):
        return parse_time(raw, field)
    raise InvalidValue(field, raw, f"expected a datetime or ISO 8601, got {type(raw).__name__}")


def from_millis(ms: int | str) -> datetime:
    """Exchange epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def plain_datetime(moment: datetime) -> datetime:
    """A datetime subclass's moment (pandas.Timestamp is one) as a plain datetime of the same
    fields, read with datetime's own methods: the stores take a time's microseconds from its
    arithmetic (moment - epoch), which a subclass may override, and positions.json's codec
    writes plain datetimes only (tests/test_adv_time_subclass.py)."""
    return datetime.combine(datetime.date(moment), datetime.timetz(moment))


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exact (no float on the way); naive input is taken as UTC."""
    if type(moment) is not datetime:
        moment = plain_datetime(moment)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    # epoch + timedelta: a third of fromtimestamp(tz=UTC).replace(), exact all the same
    return _EPOCH + timedelta(0, 0, micros)
