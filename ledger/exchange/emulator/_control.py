"""The control API: what a test does "by hand" on the emulated exchange, and its faults."""

from __future__ import annotations

from ledger.exchange.emulator._faults import FaultInjector, FaultKind
from ledger.exchange.emulator._feeds import WsFeeds
from ledger.exchange.emulator._state import (
    ClosedPnl,
    ExchangeState,
    Execution,
    NumberLike,
    Position,
)

__all__ = ["ControlApi"]


class ControlApi:
    """Mixed into BybitEmulator: plain methods, called from the emulator's event loop.

    Each raises ValueError for an impossible request (unknown symbol, reducing more than is
    open) and pushes what changed to the WebSocket feeds.
    """

    state: ExchangeState
    _feeds: WsFeeds
    _faults: FaultInjector

    def set_hedge_mode(self, enabled: bool) -> None:
        """Switch between one-way (positionIdx 0) and hedge mode (1 long, 2 short)."""
        self.state.set_hedge_mode(enabled)

    def open_position(
        self,
        symbol: str,
        side: str,
        qty: NumberLike,
        price: NumberLike,
        *,
        leverage: NumberLike | None = None,
        position_idx: int | None = None,
    ) -> Position:
        """Open, or add to the same-side position at an averaged entry.

        `leverage` None keeps the slot's leverage (10 on a fresh slot); `position_idx` None
        picks 0 in one-way mode, 1 (buy) or 2 (sell) in hedge mode.
        """
        position, execution = self.state.open_position(
            symbol, side, qty, price, leverage=leverage, position_idx=position_idx
        )
        self._feeds.push_positions([position])
        self._feeds.push_executions([execution])
        return position

    def reduce_position(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike
    ) -> ClosedPnl:
        """Reduce the `side` position by qty at price; writes closed-pnl and execution rows."""
        position, record, execution = self.state.reduce_position(symbol, side, qty, price)
        self._feeds.push_positions([position])
        self._feeds.push_executions([execution])
        return record

    def close_position(self, symbol: str, side: str, price: NumberLike) -> ClosedPnl:
        """Close the whole `side` position at price; writes closed-pnl and execution rows."""
        position, record, execution = self.state.close_position(symbol, side, price)
        self._feeds.push_positions([position])
        self._feeds.push_executions([execution])
        return record

    def set_mark_price(self, symbol: str, price: NumberLike) -> list[Position]:
        """Move the mark; open positions on the symbol are re-marked and pushed."""
        changed = self.state.set_mark_price(symbol, price)
        self._feeds.push_positions(changed)
        self._feeds.push_ticker(self.state.symbol_id(symbol))
        return changed

    def set_balance(
        self, total: NumberLike, available: NumberLike | None = None, coin: str = "USDT"
    ) -> None:
        """Set a coin's wallet balance; `available`, if given, stays pinned until the next call."""
        self.state.set_balance(total, available, coin)

    def pay_funding(self, symbol: str, side: str, amount: NumberLike) -> Execution:
        """Credit funding to the `side` position (negative: it pays); execFee is -amount."""
        position, execution = self.state.pay_funding(symbol, side, amount)
        self._feeds.push_positions([position])
        self._feeds.push_executions([execution])
        return execution

    def inject_fault(self, kind: FaultKind, count: int = 1, *, path: str | None = None) -> None:
        """Fail the next `count` private requests, or requests to `path`, with `kind`."""
        self._faults.inject(kind, count, path=path)

    def clear_faults(self) -> None:
        self._faults.clear()

    def drop_websockets(self) -> int:
        """Abort every WebSocket connection without a close frame; returns how many were dropped."""
        return self._feeds.drop()

    def subscribers(self, topic: str = "position") -> int:
        """Live authenticated (for private topics) connections subscribed to `topic`."""
        return self._feeds.subscribers(topic)

    async def wait_for_subscribers(
        self, topic: str = "position", count: int = 1, timeout: float = 5.0
    ) -> None:
        """Wait until `count` connections subscribe to `topic`; raises TimeoutError."""
        await self._feeds.wait_for_subscribers(topic, count, timeout)
