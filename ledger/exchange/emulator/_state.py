"""In-memory state of the emulated Bybit account: marks, position slots, wallet, history."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import ROUND_DOWN, ROUND_HALF_UP, Decimal
from typing import Literal

from ledger.exchange.emulator._model import (
    INSTRUMENTS,
    ZERO,
    ClosedPnl,
    CoinBalance,
    Execution,
    Instrument,
    NumberLike,
    Position,
    PositionSide,
    opposite,
    q8,
    side_of,
    to_decimal,
)

__all__ = [
    "INSTRUMENTS",
    "ClosedPnl",
    "CoinBalance",
    "ExchangeState",
    "Execution",
    "Instrument",
    "NumberLike",
    "Position",
    "PositionSide",
    "side_of",
    "to_decimal",
]

_DEFAULT_TAKER_FEE = Decimal("0.00055")
_WEEK_MS = 7 * 24 * 3600 * 1000


@dataclass(slots=True)
class _Slot:
    symbol: str
    position_idx: int
    side: PositionSide | None
    size: Decimal
    avg_price: Decimal
    leverage: Decimal
    open_fee: Decimal  # opening fees not yet charged against a closed-pnl record
    cum_realised_pnl: Decimal
    cur_realised_pnl: Decimal
    created_ms: int  # 0 until the slot's first position opens
    open_ms: int
    updated_ms: int
    seq: int
    take_profit: Decimal | None = None
    stop_loss: Decimal | None = None


class ExchangeState:
    """The account behind the emulator; every mutator returns what it changed.

    Mutators raise ValueError for impossible requests (unknown symbol, reducing more than
    is open, opening against an opposite one-way position); they never do I/O.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], int] | None = None,
        hedge_mode: bool = False,
        taker_fee_rate: NumberLike = _DEFAULT_TAKER_FEE,
        balance: NumberLike = 10_000,
        instruments: Iterable[Instrument] = INSTRUMENTS,
        closed_pnl_delay_ms: int = 0,
        closed_pnl_fees: bool = True,
    ) -> None:
        self._clock = clock or (lambda: int(time.time() * 1000))
        self.clock_skew_ms = 0
        self.closed_pnl_delay_ms = closed_pnl_delay_ms
        self.closed_pnl_fees = closed_pnl_fees
        self.hedge_mode = hedge_mode
        self.taker_fee_rate = to_decimal(taker_fee_rate)
        self.instruments: dict[str, Instrument] = {i.symbol: i for i in instruments}
        self._marks: dict[str, Decimal] = {s: i.default_mark for s, i in self.instruments.items()}
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._wallet: dict[str, Decimal] = {"USDT": to_decimal(balance)}
        self._available: dict[str, Decimal] = {}
        self._coin_realised: dict[str, Decimal] = {}
        self.closed_pnl: list[ClosedPnl] = []
        self.executions: list[Execution] = []
        self._seq = 1_000_000

    # -- lookups ---------------------------------------------------------------------
    def now_ms(self) -> int:
        """The server's clock: `clock` plus the injected skew."""
        return self._clock() + self.clock_skew_ms

    def symbol_id(self, symbol: str) -> str:
        """Bybit id for "BTC/USDT:USDT", "BTC/USDC:USDC" (BTCPERP) or "BTCUSDT".

        Raises ValueError when not listed.
        """
        if "/" in symbol:
            for instrument in self.instruments.values():
                if instrument.ccxt_symbol == symbol.upper():
                    return instrument.symbol
            raise ValueError(f"unknown symbol {symbol!r}")
        market_id = symbol.upper()
        if market_id not in self.instruments:
            raise ValueError(f"unknown symbol {symbol!r}")
        return market_id

    def settle_coin(self, symbol: str) -> str:
        return self.instruments[self.symbol_id(symbol)].settle_coin

    def mark_price(self, symbol: str) -> Decimal:
        return self._marks[self.symbol_id(symbol)]

    def positions(self, *, symbol: str | None = None, settle: str | None = None) -> list[Position]:
        """Position rows sorted by (symbol, positionIdx).

        With a symbol, every slot of the current mode is listed, flat ones included, as
        Bybit does for a symbol query; without one, only open positions (of the `settle`
        coin when given).
        """
        if symbol is None:
            rows = [
                self._snapshot(s)
                for s in self._slots.values()
                if s.size > 0 and (settle is None or self.settle_coin(s.symbol) == settle)
            ]
        else:
            market_id = self.symbol_id(symbol)
            rows = [
                self._snapshot(self._slot(market_id, idx, create=False)) for idx in self._indices()
            ]
        return sorted(rows, key=lambda p: (p.symbol, p.position_idx))

    def balances(self) -> list[CoinBalance]:
        result: list[CoinBalance] = []
        for coin, wallet in self._wallet.items():
            settled = [
                self._snapshot(s)
                for s in self._slots.values()
                if s.size > 0 and self.settle_coin(s.symbol) == coin
            ]
            result.append(
                CoinBalance(
                    coin=coin,
                    wallet_balance=wallet,
                    available=self._available.get(coin),
                    unrealised_pnl=sum((p.unrealised_pnl for p in settled), ZERO),
                    position_im=sum((p.position_im for p in settled), ZERO),
                    position_mm=sum((p.position_mm for p in settled), ZERO),
                    cum_realised_pnl=self._coin_realised.get(coin, ZERO),
                    usd_price=self._usd_price(coin),
                )
            )
        return result

    def time_window(self, start: int | None, end: int | None) -> tuple[int, int]:
        """Bybit's default history window: seven days back from now or from/to the bound given."""
        if start is None and end is None:
            end = self.now_ms()
            return end - _WEEK_MS, end
        if start is None:
            assert end is not None
            return end - _WEEK_MS, end
        if end is None:
            return start, start + _WEEK_MS
        return start, end

    # -- mutators --------------------------------------------------------------------
    def set_hedge_mode(self, enabled: bool) -> None:
        if enabled == self.hedge_mode:
            return
        if any(s.size > 0 for s in self._slots.values()):
            raise ValueError("cannot switch position mode with open positions")
        self.hedge_mode = enabled
        self._slots = {k: s for k, s in self._slots.items() if s.position_idx in self._indices()}

    def set_mark_price(self, symbol: str, price: NumberLike) -> list[Position]:
        market_id = self.symbol_id(symbol)
        mark = self._positive(price, "price")
        self._marks[market_id] = mark
        # A mark move re-values positions but is no position update: updatedTime and seq stay.
        return [
            self._snapshot(s) for s in self._slots.values() if s.symbol == market_id and s.size > 0
        ]

    def set_balance(
        self, total: NumberLike, available: NumberLike | None = None, coin: str = "USDT"
    ) -> None:
        coin = coin.upper()
        self._wallet[coin] = to_decimal(total)
        if available is None:
            self._available.pop(coin, None)
        else:
            self._available[coin] = to_decimal(available)

    def set_leverage(
        self, symbol: str, leverage: NumberLike, position_idx: int | None = None
    ) -> list[Position]:
        market_id = self.symbol_id(symbol)
        lev = self._positive(leverage, "leverage")
        if lev > self.instruments[market_id].max_leverage:
            raise ValueError(f"leverage {lev} above the maximum for {market_id}")
        indices = self._indices() if position_idx is None else (position_idx,)
        changed = []
        for idx in indices:
            slot = self._slot(market_id, idx, create=True)
            slot.leverage = lev
            slot.seq = self._next_seq()
            slot.updated_ms = self.now_ms()
            changed.append(self._snapshot(slot))
        return changed

    def open_position(
        self,
        symbol: str,
        side: str,
        qty: NumberLike,
        price: NumberLike,
        *,
        leverage: NumberLike | None = None,
        position_idx: int | None = None,
    ) -> tuple[Position, Execution]:
        market_id = self.symbol_id(symbol)
        order_side = side_of(side)
        amount = self._positive(qty, "qty")
        fill = self._positive(price, "price")
        idx = self._index_for(order_side, position_idx)
        slot = self._slot(market_id, idx, create=True)
        if slot.size > 0 and slot.side != order_side:
            raise ValueError(
                f"{market_id} holds a {slot.side} one-way position; reduce or close it first"
            )
        now = self.now_ms()
        fee = q8(amount * fill * self.taker_fee_rate)
        if slot.size == 0:
            slot.side = order_side
            slot.avg_price = fill
            slot.size = amount
            slot.open_fee = ZERO
            slot.cur_realised_pnl = ZERO
            slot.open_ms = now
            # createdTime is the slot's first-ever position: set once, never reset
            slot.created_ms = slot.created_ms or now
        else:
            total = slot.size + amount
            slot.avg_price = q8((slot.size * slot.avg_price + amount * fill) / total)
            slot.size = total
        if leverage is not None:
            slot.leverage = self._positive(leverage, "leverage")
        slot.open_fee += fee
        self._realise(slot, -fee)
        slot.updated_ms = now
        slot.seq = self._next_seq()
        execution = self._execution(
            slot,
            order_side,
            "Trade",
            amount,
            fill,
            fee,
            exec_pnl=ZERO,
            closed_size=ZERO,
        )
        return self._snapshot(slot), execution

    def order_slot(self, symbol: str, side: str, *, closing: bool) -> Position:
        """The slot an order on `side` acts on, as it is before the order fills.

        `closing` names the open position's side (a reduce or close of it); otherwise the
        slot an opening order of that side goes to. Raises ValueError like the mutators.
        """
        market_id = self.symbol_id(symbol)
        order_side = side_of(side)
        if closing:
            return self._snapshot(self._open_slot(market_id, order_side))
        idx = self._index_for(order_side, None)
        return self._snapshot(self._slot(market_id, idx, create=True))

    def reduce_position(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike, *, parts: int = 1
    ) -> tuple[Position, list[ClosedPnl], list[Execution]]:
        """Reduce the `side` position; one order filled in `parts` fills, each with its own
        closed-pnl row and execution, all sharing one orderId."""
        market_id = self.symbol_id(symbol)
        slot = self._open_slot(market_id, side_of(side))
        amount = self._positive(qty, "qty")
        if amount > slot.size:
            raise ValueError(f"cannot reduce {amount} from a {slot.size} {market_id} position")
        return self._close_in_parts(slot, amount, self._positive(price, "price"), parts)

    def close_position(
        self, symbol: str, side: str, price: NumberLike, *, parts: int = 1
    ) -> tuple[Position, list[ClosedPnl], list[Execution]]:
        market_id = self.symbol_id(symbol)
        slot = self._open_slot(market_id, side_of(side))
        return self._close_in_parts(slot, slot.size, self._positive(price, "price"), parts)

    def set_trading_stop(
        self,
        symbol: str,
        side: str,
        *,
        take_profit: NumberLike | None = None,
        stop_loss: NumberLike | None = None,
    ) -> Position:
        """Set (or with None clear) the TP/SL orders of the open `side` position."""
        slot = self._open_slot(self.symbol_id(symbol), side_of(side))
        slot.take_profit = None if take_profit is None else self._positive(take_profit, "price")
        slot.stop_loss = None if stop_loss is None else self._positive(stop_loss, "price")
        slot.updated_ms = self.now_ms()
        slot.seq = self._next_seq()
        return self._snapshot(slot)

    def set_created_time(self, symbol: str, created_ms: int) -> list[Position]:
        """Backdate the symbol's slots: their first-ever position was at `created_ms`."""
        market_id = self.symbol_id(symbol)
        changed = []
        for idx in self._indices():
            slot = self._slot(market_id, idx, create=True)
            slot.created_ms = created_ms
            changed.append(self._snapshot(slot))
        return changed

    def add_closed_pnl_history(
        self, symbol: str, side: str, count: int, *, end_ms: int, spacing_ms: int
    ) -> list[ClosedPnl]:
        """`count` closed-pnl rows of earlier trades (1 contract-step each, +1 tick of PnL),
        the newest at `end_ms`, `spacing_ms` apart; positions and the wallet are untouched."""
        market_id = self.symbol_id(symbol)
        instrument = self.instruments[market_id]
        closing = opposite(side_of(side))
        qty = instrument.qty_step
        entry = instrument.default_mark
        exit_price = (
            entry + instrument.tick_size if closing == "Sell" else entry - instrument.tick_size
        )
        fee_in = q8(qty * entry * self.taker_fee_rate)
        fee_out = q8(qty * exit_price * self.taker_fee_rate)
        pnl = q8(instrument.tick_size * qty) - fee_in - fee_out
        records = []
        for n in range(count):
            created = end_ms - (count - 1 - n) * spacing_ms
            record = ClosedPnl(
                symbol=market_id,
                order_id=str(uuid.uuid4()),
                side=closing,
                qty=qty,
                closed_size=qty,
                avg_entry_price=entry,
                avg_exit_price=exit_price,
                closed_pnl=pnl,
                cum_entry_value=q8(entry * qty),
                cum_exit_value=q8(exit_price * qty),
                open_fee=fee_in,
                close_fee=fee_out,
                leverage=Decimal(10),
                created_ms=created,
                updated_ms=created,
                seq=self._next_seq(),
                with_fees=self.closed_pnl_fees,
            )
            records.append(record)
        self.closed_pnl.extend(records)
        return records

    def add_funding_history(
        self,
        symbol: str,
        side: str,
        count: int,
        amount: NumberLike,
        *,
        end_ms: int,
        spacing_ms: int,
    ) -> list[Execution]:
        """`count` Funding executions of `amount` each (negative: paid) on a position of
        `side`, the newest at `end_ms`; positions and the wallet are untouched."""
        market_id = self.symbol_id(symbol)
        order_side = side_of(side)
        credit = to_decimal(amount)
        mark = self._marks[market_id]
        qty = self.instruments[market_id].qty_step
        rows = []
        for n in range(count):
            stamp = end_ms - (count - 1 - n) * spacing_ms
            rows.append(
                Execution(
                    symbol=market_id,
                    exec_id=str(uuid.uuid4()),
                    order_id=str(uuid.uuid4()),
                    side=order_side,
                    exec_type="Funding",
                    exec_qty=qty,
                    exec_price=mark,
                    exec_value=q8(qty * mark),
                    exec_fee=-credit,
                    fee_rate=Decimal("0.0001"),
                    exec_pnl=ZERO,
                    closed_size=ZERO,
                    mark_price=mark,
                    exec_time_ms=stamp,
                    order_qty=ZERO,
                    order_price=ZERO,
                    seq=self._next_seq(),
                )
            )
        self.executions.extend(rows)
        return rows

    def visible_closed_pnl(self) -> list[ClosedPnl]:
        """Closed-pnl rows already written (a record appears `closed_pnl_delay_ms` late)."""
        now = self.now_ms()
        return [r for r in self.closed_pnl if r.updated_ms <= now]

    def pay_funding(self, symbol: str, side: str, amount: NumberLike) -> tuple[Position, Execution]:
        """Credit `amount` of funding to the position (negative when the position pays)."""
        market_id = self.symbol_id(symbol)
        slot = self._open_slot(market_id, side_of(side))
        credit = to_decimal(amount)
        mark = self._marks[market_id]
        value = q8(slot.size * mark)
        fee = -credit
        rate = (
            (fee / value).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP) if value else ZERO
        )
        self._realise(slot, credit)
        slot.updated_ms = self.now_ms()
        slot.seq = self._next_seq()
        assert slot.side is not None
        execution = self._execution(
            slot,
            slot.side,
            "Funding",
            slot.size,
            mark,
            fee,
            exec_pnl=ZERO,
            closed_size=ZERO,
            rate=rate,
        )
        return self._snapshot(slot), execution

    # -- internals -------------------------------------------------------------------
    def _close_in_parts(
        self, slot: _Slot, amount: Decimal, exit_price: Decimal, parts: int
    ) -> tuple[Position, list[ClosedPnl], list[Execution]]:
        if parts < 1:
            raise ValueError("parts must be at least 1")
        step = self.instruments[slot.symbol].qty_step
        part = (amount / parts).quantize(step, rounding=ROUND_DOWN)
        if parts > 1 and part <= 0:
            raise ValueError(f"{amount} cannot be filled in {parts} parts of {step}")
        order_id = str(uuid.uuid4())
        records: list[ClosedPnl] = []
        executions: list[Execution] = []
        position: Position | None = None
        for n in range(parts):
            size = part if n < parts - 1 else amount - part * (parts - 1)
            position, record, execution = self._close(slot, size, exit_price, order_id)
            records.append(record)
            executions.append(execution)
        assert position is not None
        return position, records, executions

    def _close(
        self, slot: _Slot, amount: Decimal, exit_price: Decimal, order_id: str
    ) -> tuple[Position, ClosedPnl, Execution]:
        assert slot.side is not None
        position_side = slot.side
        entry = slot.avg_price
        direction = 1 if position_side == "Buy" else -1
        gross = q8((exit_price - entry) * amount * direction)
        close_fee = q8(amount * exit_price * self.taker_fee_rate)
        open_fee_share = (
            slot.open_fee if amount == slot.size else q8(slot.open_fee * amount / slot.size)
        )
        slot.open_fee -= open_fee_share
        now = self.now_ms()
        leverage = slot.leverage
        slot.size -= amount
        self._realise(slot, gross - close_fee)
        if slot.size == 0:
            slot.side = None
            slot.avg_price = ZERO
            slot.open_fee = ZERO
            slot.open_ms = 0
            slot.take_profit = slot.stop_loss = None  # Bybit cancels a closed position's TP/SL
        slot.updated_ms = now
        slot.seq = self._next_seq()
        closing_side = opposite(position_side)
        execution = self._execution(
            slot,
            closing_side,
            "Trade",
            amount,
            exit_price,
            close_fee,
            exec_pnl=gross,
            closed_size=amount,
            order_id=order_id,
        )
        record = ClosedPnl(
            symbol=slot.symbol,
            order_id=execution.order_id,
            side=closing_side,
            qty=amount,
            closed_size=amount,
            avg_entry_price=entry,
            avg_exit_price=exit_price,
            closed_pnl=gross - close_fee - open_fee_share,
            cum_entry_value=q8(entry * amount),
            cum_exit_value=q8(exit_price * amount),
            open_fee=open_fee_share,
            close_fee=close_fee,
            leverage=leverage,
            created_ms=now,
            # Bybit writes the record apart from the position change, possibly later.
            updated_ms=now + self.closed_pnl_delay_ms,
            seq=slot.seq,
            with_fees=self.closed_pnl_fees,
        )
        self.closed_pnl.append(record)
        return self._snapshot(slot), record, execution

    def _execution(
        self,
        slot: _Slot,
        side: PositionSide,
        exec_type: Literal["Trade", "Funding"],
        qty: Decimal,
        price: Decimal,
        fee: Decimal,
        *,
        exec_pnl: Decimal,
        closed_size: Decimal,
        rate: Decimal | None = None,
        order_id: str | None = None,
    ) -> Execution:
        execution = Execution(
            symbol=slot.symbol,
            exec_id=str(uuid.uuid4()),
            order_id=order_id or str(uuid.uuid4()),
            side=side,
            exec_type=exec_type,
            exec_qty=qty,
            exec_price=price,
            exec_value=q8(qty * price),
            exec_fee=fee,
            fee_rate=self.taker_fee_rate if rate is None else rate,
            exec_pnl=exec_pnl,
            closed_size=closed_size,
            mark_price=self._marks[slot.symbol],
            exec_time_ms=slot.updated_ms,
            order_qty=qty if exec_type == "Trade" else ZERO,
            order_price=price if exec_type == "Trade" else ZERO,
            seq=slot.seq,
        )
        self.executions.append(execution)
        return execution

    def _realise(self, slot: _Slot, amount: Decimal) -> None:
        slot.cum_realised_pnl += amount
        slot.cur_realised_pnl += amount
        coin = self.settle_coin(slot.symbol)
        self._wallet[coin] = self._wallet.get(coin, ZERO) + amount
        self._coin_realised[coin] = self._coin_realised.get(coin, ZERO) + amount

    def _open_slot(self, market_id: str, side: PositionSide) -> _Slot:
        for idx in self._indices():
            slot = self._slots.get((market_id, idx))
            if slot is not None and slot.size > 0 and slot.side == side:
                return slot
        raise ValueError(f"no open {side} position on {market_id}")

    def _slot(self, market_id: str, idx: int, *, create: bool) -> _Slot:
        slot = self._slots.get((market_id, idx))
        if slot is None:
            now = self.now_ms()
            slot = _Slot(
                symbol=market_id,
                position_idx=idx,
                side=None,
                size=ZERO,
                avg_price=ZERO,
                leverage=Decimal(10),
                open_fee=ZERO,
                cum_realised_pnl=ZERO,
                cur_realised_pnl=ZERO,
                created_ms=0,
                open_ms=0,
                updated_ms=now,
                seq=-1,  # Bybit's seq for a symbol never traded
            )
            if create:
                self._slots[(market_id, idx)] = slot
        return slot

    def _indices(self) -> tuple[int, ...]:
        return (1, 2) if self.hedge_mode else (0,)

    def _index_for(self, side: PositionSide, position_idx: int | None) -> int:
        expected = (1 if side == "Buy" else 2) if self.hedge_mode else 0
        if position_idx is not None and position_idx != expected:
            mode = "hedge" if self.hedge_mode else "one-way"
            raise ValueError(
                f"positionIdx {position_idx} does not fit a {side} order in {mode} mode"
            )
        return expected

    def _snapshot(self, slot: _Slot) -> Position:
        return Position(
            symbol=slot.symbol,
            position_idx=slot.position_idx,
            side=slot.side,
            size=slot.size,
            avg_price=slot.avg_price,
            leverage=slot.leverage,
            mark_price=self._marks[slot.symbol],
            cum_realised_pnl=slot.cum_realised_pnl,
            cur_realised_pnl=slot.cur_realised_pnl,
            # A slot never traded has no first position yet: Bybit's value for it is not
            # documented; the emulator shows the current time.
            created_ms=slot.created_ms or self.now_ms(),
            open_ms=slot.open_ms,
            updated_ms=slot.updated_ms,
            seq=slot.seq,
            take_profit=slot.take_profit,
            stop_loss=slot.stop_loss,
        )

    def _usd_price(self, coin: str) -> Decimal:
        if coin in ("USDT", "USDC", "USD"):
            return Decimal(1)
        mark = self._marks.get(f"{coin}USDT")
        return mark if mark is not None else ZERO

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    @staticmethod
    def _positive(value: NumberLike, name: str) -> Decimal:
        result = to_decimal(value)
        if result <= 0:
            raise ValueError(f"{name} must be positive, got {value!r}")
        return result
