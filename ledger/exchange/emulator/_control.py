"""The control API: what a test does "by hand" on the emulated exchange, and its faults."""

from __future__ import annotations

from ledger.exchange.emulator._faults import FaultInjector, FaultKind
from ledger.exchange.emulator._feeds import WsFeeds
from ledger.exchange.emulator._model import ClosedPnl, Execution, NumberLike, Position, side_of
from ledger.exchange.emulator._state import ExchangeState

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
        """Open, or add to the same-side position at an averaged entry, by a market order.

        `leverage` None keeps the slot's leverage (10 on a fresh slot); `position_idx` None
        picks 0 in one-way mode, 1 (buy) or 2 (sell) in hedge mode. Pushes the position on
        the order's creation and on its fill, as Bybit does for every order.
        """
        created = self.state.order_slot(symbol, side, closing=False)
        position, execution = self.state.open_position(
            symbol, side, qty, price, leverage=leverage, position_idx=position_idx
        )
        self._order_pushes(created, position)
        self._feeds.push_executions([execution])
        return position

    def reduce_position(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike
    ) -> ClosedPnl:
        """Reduce the `side` position by qty at price; writes closed-pnl and execution rows."""
        return self.reduce_in_parts(symbol, side, qty, price, parts=1)[0]

    def reduce_in_parts(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike, *, parts: int = 2
    ) -> list[ClosedPnl]:
        """One reduce order filled in `parts` fills: a closed-pnl row and an execution per
        fill, every row carrying the same orderId. Reducing the whole size closes."""
        created = self.state.order_slot(symbol, side, closing=True)
        position, records, executions = self.state.reduce_position(
            symbol, side, qty, price, parts=parts
        )
        self._order_pushes(created, position)
        self._feeds.push_executions(executions)
        return records

    def close_position(
        self, symbol: str, side: str, price: NumberLike, *, parts: int = 1
    ) -> ClosedPnl:
        """Close the whole `side` position at price; writes closed-pnl and execution rows.

        Returns the last record (with `parts` > 1, `state.closed_pnl` holds them all).
        """
        created = self.state.order_slot(symbol, side, closing=True)
        position, records, executions = self.state.close_position(symbol, side, price, parts=parts)
        self._order_pushes(created, position)
        self._feeds.push_executions(executions)
        return records[-1]

    def flip_position(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike
    ) -> tuple[ClosedPnl, Position]:
        """Close the open one-way position and open `qty` on `side` (the other way) at price,
        as one order that crosses zero: a closed-pnl row for the old, a new openTime."""
        if self.state.hedge_mode:
            raise ValueError("a flip crosses zero on one slot: one-way mode only")
        created = self.state.order_slot(symbol, side, closing=False)
        if created.side is None or created.side == side_of(side):
            raise ValueError(f"no opposite position on {symbol} to flip from")
        _, records, closes = self.state.close_position(symbol, created.side, price)
        position, execution = self.state.open_position(symbol, side, qty, price)
        self._order_pushes(created, position)
        self._feeds.push_executions([*closes, execution])
        return records[-1], position

    def set_trading_stop(
        self,
        symbol: str,
        side: str,
        *,
        take_profit: NumberLike | None = None,
        stop_loss: NumberLike | None = None,
    ) -> Position:
        """Place (amend) the TP/SL orders of the open `side` position; one push. A later full
        close cancels each of them, and each cancel pushes the (flat) position again."""
        position = self.state.set_trading_stop(
            symbol, side, take_profit=take_profit, stop_loss=stop_loss
        )
        self._feeds.push_positions([position])
        return position

    def set_mark_price(self, symbol: str, price: NumberLike) -> list[Position]:
        """Move the mark: a `tickers.{symbol}` push on the public stream, no position push.

        Returns the re-marked open positions on the symbol (REST shows the new mark).
        """
        changed = self.state.set_mark_price(symbol, price)
        self._feeds.push_ticker(self.state.symbol_id(symbol))
        return changed

    def set_created_time(self, symbol: str, created_ms: int) -> None:
        """Give the symbol an old history: its slots' createdTime (first-ever position)."""
        self.state.set_created_time(symbol, created_ms)

    def set_clock_skew(self, skew_ms: int) -> None:
        """Shift the server clock by `skew_ms` (negative: the server is behind the client,
        so a client clock 1 s fast is `set_clock_skew(-1000)`)."""
        self.state.clock_skew_ms = skew_ms

    def set_closed_pnl_delay(self, delay_ms: int) -> None:
        """Closed-pnl rows of later closes are listed only `delay_ms` after the close."""
        if delay_ms < 0:
            raise ValueError("delay_ms must not be negative")
        self.state.closed_pnl_delay_ms = delay_ms

    def set_closed_pnl_fees(self, listed: bool) -> None:
        """Whether closed-pnl rows of later closes carry openFee/closeFee (2024 rows do not)."""
        self.state.closed_pnl_fees = listed

    def add_closed_pnl_history(
        self, symbol: str, side: str, count: int, *, end_ms: int, spacing_ms: int = 60_000
    ) -> list[ClosedPnl]:
        """`count` closed-pnl rows of earlier `side` trades, newest at `end_ms`."""
        return self.state.add_closed_pnl_history(
            symbol, side, count, end_ms=end_ms, spacing_ms=spacing_ms
        )

    def add_funding_history(
        self,
        symbol: str,
        side: str,
        count: int,
        amount: NumberLike,
        *,
        end_ms: int,
        spacing_ms: int = 8 * 3600 * 1000,
    ) -> list[Execution]:
        """`count` Funding executions of `amount` (negative: paid), newest at `end_ms`."""
        return self.state.add_funding_history(
            symbol, side, count, amount, end_ms=end_ms, spacing_ms=spacing_ms
        )

    def _order_pushes(self, created: Position, filled: Position) -> None:
        # Bybit pushes the position on every order create/amend/cancel, changed or not
        # (websocket/private/position.mdx): a market order's creation and its fill (both
        # showing the filled state: the emulator fills at once), then each TP/SL order
        # cancelled because the position went flat. Several pushes within milliseconds.
        self._feeds.push_positions([filled])
        self._feeds.push_positions([filled])
        if not filled.is_open:
            cancelled = (created.take_profit is not None) + (created.stop_loss is not None)
            for _ in range(cancelled):
                self._feeds.push_positions([filled])

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

    def inject_fault(
        self, kind: FaultKind, count: int = 1, *, path: str | None = None, public: bool = False
    ) -> None:
        """Fail the next `count` private requests (with `public`, every request: an IP ban
        also refuses /v5/market/*), or requests to `path`, with `kind`."""
        self._faults.inject(kind, count, path=path, public=public)

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
