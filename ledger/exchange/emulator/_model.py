"""The emulated account's value types: instruments, position snapshots, history rows."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Literal

__all__ = [
    "INSTRUMENTS",
    "ZERO",
    "ClosedPnl",
    "CoinBalance",
    "Execution",
    "Instrument",
    "NumberLike",
    "Position",
    "PositionSide",
    "opposite",
    "q8",
    "side_of",
    "to_decimal",
]

NumberLike = Decimal | int | str | float
PositionSide = Literal["Buy", "Sell"]

_E8 = Decimal("0.00000001")
ZERO = Decimal(0)
_MAINTENANCE_RATE = Decimal("0.005")


def to_decimal(value: NumberLike) -> Decimal:
    """Convert a control-API number to Decimal; floats go through their shortest repr.

    Raises ValueError for anything that is not a finite number.
    """
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    elif isinstance(value, int | str):
        result = Decimal(value)
    else:
        result = Decimal(repr(value))
    if not result.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return result


def q8(value: Decimal) -> Decimal:
    return value.quantize(_E8, rounding=ROUND_HALF_UP)


@dataclass(frozen=True, slots=True)
class Instrument:
    """A linear perpetual the emulator lists (USDT-settled, or USDC-settled like BTCPERP)."""

    symbol: str
    base: str
    quote: str
    tick_size: Decimal
    qty_step: Decimal
    min_qty: Decimal
    max_qty: Decimal
    max_leverage: Decimal
    price_scale: int
    launch_ms: int
    default_mark: Decimal
    settle: str = ""  # the settle coin; "" means the quote coin

    @property
    def settle_coin(self) -> str:
        return self.settle or self.quote

    @property
    def ccxt_symbol(self) -> str:
        return f"{self.base}/{self.quote}:{self.settle_coin}"


def _instrument(
    base: str,
    tick: str,
    step: str,
    max_qty: str,
    max_lev: str,
    mark: str,
    launch_ms: int,
    *,
    quote: str = "USDT",
) -> Instrument:
    tick_size = Decimal(tick)
    return Instrument(
        # Bybit names USDC perpetuals BASEPERP (BTCPERP is ccxt's BTC/USDC:USDC).
        symbol=f"{base}USDT" if quote == "USDT" else f"{base}PERP",
        base=base,
        quote=quote,
        settle=quote,
        tick_size=tick_size,
        qty_step=Decimal(step),
        min_qty=Decimal(step),
        max_qty=Decimal(max_qty),
        max_leverage=Decimal(max_lev),
        price_scale=-int(tick_size.normalize().as_tuple().exponent),
        launch_ms=launch_ms,
        default_mark=Decimal(mark),
    )


INSTRUMENTS: tuple[Instrument, ...] = (
    _instrument("ADA", "0.0001", "1", "2000000", "75", "0.4", 1_650_000_000_000),
    _instrument("BNB", "0.01", "0.01", "3000", "75", "600", 1_640_000_000_000),
    _instrument("BTC", "0.10", "0.001", "1190", "100", "60000", 1_585_526_400_000),
    _instrument("DOGE", "0.00001", "1", "30000000", "75", "0.15", 1_620_000_000_000),
    _instrument("ETH", "0.01", "0.01", "7240", "100", "3000", 1_615_766_400_000),
    _instrument("LTC", "0.01", "0.1", "35000", "75", "80", 1_618_000_000_000),
    _instrument("SOL", "0.010", "0.1", "79770", "100", "150", 1_633_000_000_000),
    _instrument("XRP", "0.0001", "1", "6500000", "75", "0.5", 1_625_000_000_000),
    _instrument("BTC", "0.5", "0.001", "1190", "100", "60000", 1_641_000_000_000, quote="USDC"),
    _instrument("ETH", "0.05", "0.01", "7240", "100", "3000", 1_641_000_000_000, quote="USDC"),
)


@dataclass(frozen=True, slots=True)
class Position:
    """A snapshot of one position slot (symbol, positionIdx), flat when size is zero."""

    symbol: str
    position_idx: int
    side: PositionSide | None
    size: Decimal
    avg_price: Decimal
    leverage: Decimal
    mark_price: Decimal
    cum_realised_pnl: Decimal
    cur_realised_pnl: Decimal
    created_ms: int  # the first-ever position on this slot (Bybit's createdTime)
    open_ms: int  # the current position's open (Bybit's openTime); 0 when flat
    updated_ms: int
    seq: int
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None

    @property
    def is_open(self) -> bool:
        return self.size > 0

    @property
    def position_value(self) -> Decimal:
        """Value at the entry price, as Bybit reports it (the recorded fixture shows this)."""
        return q8(self.size * self.avg_price)

    @property
    def unrealised_pnl(self) -> Decimal:
        if self.side is None:
            return ZERO
        diff = self.mark_price - self.avg_price
        return q8(diff * self.size if self.side == "Buy" else -diff * self.size)

    @property
    def position_im(self) -> Decimal:
        return q8(self.position_value / self.leverage) if self.leverage else ZERO

    @property
    def position_mm(self) -> Decimal:
        return q8(self.position_value * _MAINTENANCE_RATE)


@dataclass(frozen=True, slots=True)
class ClosedPnl:
    """One closed-pnl record, written for every manual reduce or close."""

    symbol: str
    order_id: str
    side: PositionSide  # the closing order's side: "Sell" closes a long
    qty: Decimal
    closed_size: Decimal
    avg_entry_price: Decimal
    avg_exit_price: Decimal
    closed_pnl: Decimal
    cum_entry_value: Decimal
    cum_exit_value: Decimal
    open_fee: Decimal
    close_fee: Decimal
    leverage: Decimal
    created_ms: int
    updated_ms: int  # when the record was written: `created_ms` + the configured delay
    seq: int
    with_fees: bool = True  # whether the row lists openFee and closeFee


@dataclass(frozen=True, slots=True)
class Execution:
    """One execution row: a fill (execType Trade) or a funding settlement (Funding)."""

    symbol: str
    exec_id: str
    order_id: str
    side: PositionSide
    exec_type: Literal["Trade", "Funding"]
    exec_qty: Decimal
    exec_price: Decimal
    exec_value: Decimal
    exec_fee: Decimal
    fee_rate: Decimal
    exec_pnl: Decimal
    closed_size: Decimal
    mark_price: Decimal
    exec_time_ms: int
    order_qty: Decimal
    order_price: Decimal
    seq: int


@dataclass(frozen=True, slots=True)
class CoinBalance:
    """Wallet state of one coin, with position figures summed over its settled positions."""

    coin: str
    wallet_balance: Decimal
    available: Decimal | None  # pinned by set_balance; None means derived
    unrealised_pnl: Decimal
    position_im: Decimal
    position_mm: Decimal
    cum_realised_pnl: Decimal
    usd_price: Decimal

    @property
    def equity(self) -> Decimal:
        return self.wallet_balance + self.unrealised_pnl

    @property
    def usd_value(self) -> Decimal:
        return q8(self.equity * self.usd_price)


def side_of(side: str) -> PositionSide:
    lowered = side.lower()
    if lowered in ("buy", "long"):
        return "Buy"
    if lowered in ("sell", "short"):
        return "Sell"
    raise ValueError(f"side must be 'buy' or 'sell', got {side!r}")


def opposite(side: PositionSide) -> PositionSide:
    return "Sell" if side == "Buy" else "Buy"
