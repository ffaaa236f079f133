"""Value types and the one place external numbers and times become exact ledger values."""

from __future__ import annotations

import enum
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from ledger.errors import InvalidValue

ZERO = Decimal(0)


class Side(enum.StrEnum):
    BUY = "buy"
    SELL = "sell"

    @classmethod
    def parse(cls, raw: object) -> Side:
        """Accept 'buy'/'sell', 'long'/'short' in any case; raises InvalidValue."""
        text = str(raw).strip().lower()
        aliases = {"buy": cls.BUY, "long": cls.BUY, "sell": cls.SELL, "short": cls.SELL}
        if text not in aliases:
            raise InvalidValue("side", raw, "expected 'buy' or 'sell'")
        return aliases[text]


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
    if isinstance(raw, bool):
        raise InvalidValue(field, raw, "a boolean is not a number")
    if isinstance(raw, Decimal):
        value = raw
    elif isinstance(raw, int):
        value = Decimal(raw)
    elif isinstance(raw, float):
        # repr gives the shortest string that round-trips: 0.1 -> "0.1", not 0.1000000000000000055
        value = Decimal(repr(raw))
    elif isinstance(raw, str):
        try:
            value = Decimal(raw.strip())
        except InvalidOperation:
            raise InvalidValue(field, raw, "not a number") from None
    else:
        raise InvalidValue(field, raw, f"expected a number, got {type(raw).__name__}")
    if not value.is_finite():
        raise InvalidValue(field, raw, "must be finite")
    return value


def positive(field: str, raw: object) -> Decimal:
    """A finite Decimal > 0; raises InvalidValue."""
    value = to_decimal(field, raw)
    if value <= 0:
        raise InvalidValue(field, raw, "must be greater than zero")
    return value


def non_negative(field: str, raw: object) -> Decimal:
    """A finite Decimal >= 0; raises InvalidValue."""
    value = to_decimal(field, raw)
    if value < 0:
        raise InvalidValue(field, raw, "must not be negative")
    return value


def optional_decimal(field: str, raw: object) -> Decimal | None:
    """None stays None; anything else goes through to_decimal."""
    return None if raw is None else to_decimal(field, raw)


def utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive input is taken as UTC."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def parse_time(raw: str) -> datetime:
    """ISO 8601 with or without a zone (UTC when none); raises InvalidValue."""
    text = raw.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return utc(datetime.fromisoformat(text))
    except ValueError:
        raise InvalidValue("time", raw, "expected ISO 8601, e.g. 2025-01-07T17:00:00") from None


def from_millis(ms: int | str) -> datetime:
    """Exchange epoch milliseconds to an aware UTC datetime."""
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def to_micros(moment: datetime) -> int:
    """Microseconds since the epoch, exact (no float on the way); naive input is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def from_micros(micros: int) -> datetime:
    # epoch + timedelta: a third of fromtimestamp(tz=UTC).replace(), exact all the same
    return _EPOCH + timedelta(0, 0, micros)
