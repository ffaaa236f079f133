"""Bybit V5 HTTP and WebSocket emulator on aiohttp: routes, wire format, injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import TracebackType
from typing import Literal, Self, TypeAlias, TypeVar, get_args
from urllib.parse import quote, unquote

from aiohttp import WSMsgType, web

from ledger.exchange.emulator._state import (
    INSTRUMENTS,
    ClosedPnl,
    CoinBalance,
    ExchangeState,
    Execution,
    Instrument,
    NumberLike,
    Position,
)

__all__ = ["BybitEmulator", "FaultKind", "RequestRecord"]

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
JsonObject: TypeAlias = dict[str, Json]

FaultKind = Literal[
    "timeout",
    "http_500",
    "http_503",
    "rate_limit",
    "invalid_key",
    "malformed_json",
    "empty_with_error",
    "missing_fields",
]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Fields a "missing_fields" fault removes from each row, per endpoint.
_DROPPABLE: dict[str, tuple[str, ...]] = {
    "/v5/position/list": ("size", "side", "avgPrice", "positionIdx", "markPrice"),
    "/v5/position/closed-pnl": ("closedPnl", "avgExitPrice", "closedSize", "side"),
    "/v5/execution/list": ("execFee", "execQty", "execType", "execId"),
    "/v5/account/wallet-balance": ("walletBalance", "equity"),
}

_T = TypeVar("_T")
_K = TypeVar("_K", bound=tuple[object, ...])


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request as the emulator saw it (no headers, so no keys)."""

    method: str
    path: str
    params: Mapping[str, str]


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    remaining: int
    path: str | None


@dataclass(eq=False, slots=True)
class _WsConnection:
    ws: web.WebSocketResponse
    request: web.Request
    private: bool
    conn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    authed: bool = False
    topics: set[str] = field(default_factory=set)
    outbox: asyncio.Queue[JsonObject | None] = field(default_factory=asyncio.Queue)


class _ApiError(Exception):
    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _s(value: Decimal) -> str:
    """Bybit's number strings: plain notation, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _fixed(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _ApiError(10001, f"params error: {name} invalid") from None


def _limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    value = _int_param(params, "limit")
    if value is None:
        return default
    if value < 1:
        raise _ApiError(10001, "params error: limit invalid")
    return min(value, maximum)


def _paginate(
    rows: Sequence[_T],
    key: Callable[[_T], _K],
    parse: Callable[[str], _K],
    *,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[_T], str]:
    ordered = sorted(rows, key=key, reverse=descending)
    if cursor:
        try:
            mark = parse(unquote(cursor))
        except (ValueError, IndexError):
            raise _ApiError(10001, "params error: cursor invalid") from None
        ordered = [r for r in ordered if (key(r) < mark if descending else key(r) > mark)]
    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, ""
    return page, quote(",".join(str(part) for part in key(page[-1])), safe="")


def _parse_time_seq(text: str) -> tuple[int, int]:
    time_part, seq_part = text.split(",")
    return int(time_part), int(seq_part)


def _parse_symbol_idx(text: str) -> tuple[str, int]:
    symbol, idx = text.split(",")
    return symbol, int(idx)


def _parse_symbol(text: str) -> tuple[str]:
    return (text,)


def _category(params: Mapping[str, str], allowed: Iterable[str]) -> str:
    category = params.get("category", "")
    if category not in allowed:
        raise _ApiError(
            10001,
            "Illegal category" if category else "params error: category is required",
        )
    return category


# -- wire rows -------------------------------------------------------------------------
def _position_row(p: Position, *, ws: bool = False) -> JsonObject:
    flat = not p.is_open
    row: JsonObject = {
        "positionIdx": p.position_idx,
        "riskId": 1,
        "riskLimitValue": "2000000",
        "symbol": p.symbol,
        "side": p.side or "",
        "size": _s(p.size),
        "avgPrice": _s(p.avg_price),
        "positionValue": "" if flat else _s(p.position_value),
        "tradeMode": 0,
        "autoAddMargin": 0,
        "positionStatus": "Normal",
        "leverage": _s(p.leverage),
        "markPrice": _s(p.mark_price),
        "liqPrice": "",
        "bustPrice": "",
        "positionIM": _s(p.position_im),
        "positionMM": _s(p.position_mm),
        "positionBalance": _s(p.position_im),
        "tpslMode": "Full",
        "takeProfit": "",
        "stopLoss": "",
        "trailingStop": "0",
        "sessionAvgPrice": "",
        "unrealisedPnl": _s(p.unrealised_pnl),
        "curRealisedPnl": _s(p.cur_realised_pnl),
        "cumRealisedPnl": _s(p.cum_realised_pnl),
        "adlRankIndicator": 0 if flat else 2,
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        "createdTime": str(p.created_ms),
        "updatedTime": str(p.updated_ms),
        "seq": p.seq,
    }
    if ws:
        # The private stream names the entry price entryPrice and tags each row's category.
        row["entryPrice"] = row.pop("avgPrice")
        row["category"] = "linear"
    return row


def _closed_pnl_row(r: ClosedPnl) -> JsonObject:
    return {
        "symbol": r.symbol,
        "orderType": "Market",
        "leverage": _s(r.leverage),
        "updatedTime": str(r.updated_ms),
        "side": r.side,
        "orderId": r.order_id,
        "closedPnl": _s(r.closed_pnl),
        "openFee": _s(r.open_fee),
        "closeFee": _s(r.close_fee),
        "avgEntryPrice": _s(r.avg_entry_price),
        "qty": _s(r.qty),
        "cumEntryValue": _s(r.cum_entry_value),
        "createdTime": str(r.created_ms),
        "orderPrice": _s(r.avg_exit_price),
        "closedSize": _s(r.closed_size),
        "avgExitPrice": _s(r.avg_exit_price),
        "execType": "Trade",
        "fillCount": "1",
        "cumExitValue": _s(r.cum_exit_value),
    }


def _execution_row(e: Execution, *, ws: bool = False) -> JsonObject:
    trade = e.exec_type == "Trade"
    row: JsonObject = {
        "symbol": e.symbol,
        "orderType": "Market" if trade else "UNKNOWN",
        "underlyingPrice": "",
        "orderLinkId": "",
        "orderId": e.order_id,
        "stopOrderType": "" if trade else "UNKNOWN",
        "execTime": str(e.exec_time_ms),
        "feeCurrency": "",
        "createType": "CreateByUser" if trade else "",
        "feeRate": _s(e.fee_rate),
        "tradeIv": "",
        "blockTradeId": "",
        "markPrice": _s(e.mark_price),
        "execPrice": _s(e.exec_price),
        "markIv": "",
        "orderQty": _s(e.order_qty),
        "orderPrice": _s(e.order_price),
        "execValue": _s(e.exec_value),
        "closedSize": _s(e.closed_size),
        "execType": e.exec_type,
        "seq": e.seq,
        "side": e.side,
        "indexPrice": "",
        "leavesQty": "0",
        "isMaker": False,
        "execFee": _s(e.exec_fee),
        "execId": e.exec_id,
        "marketUnit": "",
        "execPnl": _s(e.exec_pnl),
        "execQty": _s(e.exec_qty),
    }
    if ws:
        row["category"] = "linear"
    return row


def _instrument_row(i: Instrument) -> JsonObject:
    return {
        "symbol": i.symbol,
        "contractType": "LinearPerpetual",
        "status": "Trading",
        "baseCoin": i.base,
        "quoteCoin": i.quote,
        "launchTime": str(i.launch_ms),
        "deliveryTime": "0",
        "deliveryFeeRate": "",
        "priceScale": str(i.price_scale),
        "leverageFilter": {
            "minLeverage": "1",
            "maxLeverage": _fixed(i.max_leverage, 2),
            "leverageStep": "0.01",
        },
        "priceFilter": {
            "minPrice": format(i.tick_size, "f"),
            "maxPrice": _fixed(i.default_mark * 100, i.price_scale),
            "tickSize": format(i.tick_size, "f"),
        },
        "lotSizeFilter": {
            "maxOrderQty": format(i.max_qty, "f"),
            "minOrderQty": format(i.min_qty, "f"),
            "qtyStep": format(i.qty_step, "f"),
            "postOnlyMaxOrderQty": format(i.max_qty, "f"),
            "maxMktOrderQty": format(i.max_qty / 2, "f"),
            "minNotionalValue": "5",
        },
        "unifiedMarginTrade": True,
        "fundingInterval": 480,
        "settleCoin": i.quote,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.1"},
        "displayName": "",
    }


def _ticker_row(i: Instrument, mark: Decimal) -> JsonObject:
    price = _fixed(mark, i.price_scale)
    return {
        "symbol": i.symbol,
        "lastPrice": price,
        "indexPrice": price,
        "markPrice": price,
        "prevPrice24h": price,
        "price24hPcnt": "0",
        "highPrice24h": price,
        "lowPrice24h": price,
        "prevPrice1h": price,
        "openInterest": "0",
        "openInterestValue": "0",
        "turnover24h": "0",
        "volume24h": "0",
        "fundingRate": "0.0001",
        "nextFundingTime": "0",
        "predictedDeliveryPrice": "",
        "basisRate": "",
        "deliveryFeeRate": "",
        "deliveryTime": "0",
        "ask1Size": "1",
        "bid1Price": price,
        "ask1Price": price,
        "bid1Size": "1",
        "basis": "",
        "preOpenPrice": "",
        "preQty": "",
        "curPreListingPhase": "",
    }


def _coin_row(b: CoinBalance) -> JsonObject:
    return {
        "availableToBorrow": "",
        "bonus": "0",
        "accruedInterest": "0",
        "availableToWithdraw": "" if b.available is None else _s(b.available),
        "totalOrderIM": "0",
        "equity": _s(b.equity),
        "totalPositionMM": _s(b.position_mm),
        "usdValue": _s(b.usd_value),
        "unrealisedPnl": _s(b.unrealised_pnl),
        "collateralSwitch": True,
        "spotHedgingQty": "0",
        "borrowAmount": "0.000000000000000000",
        "totalPositionIM": _s(b.position_im),
        "walletBalance": _s(b.wallet_balance),
        "cumRealisedPnl": _s(b.cum_realised_pnl),
        "locked": "0",
        "marginCollateral": True,
        "coin": b.coin,
    }


def _wallet_account(balances: Sequence[CoinBalance]) -> JsonObject:
    zero = Decimal(0)
    wallet = sum((b.wallet_balance * b.usd_price for b in balances), zero)
    upl = sum((b.unrealised_pnl * b.usd_price for b in balances), zero)
    initial = sum((b.position_im * b.usd_price for b in balances), zero)
    maintenance = sum((b.position_mm * b.usd_price for b in balances), zero)
    margin = wallet + upl
    pinned = [b.available * b.usd_price for b in balances if b.available is not None]
    available = sum(pinned, zero) if pinned else margin - initial
    return {
        "totalEquity": _s(sum((b.usd_value for b in balances), zero)),
        "accountIMRate": _fixed(initial / margin, 4) if margin > 0 else "0",
        "totalMarginBalance": _s(margin),
        "totalInitialMargin": _s(initial),
        "accountType": "UNIFIED",
        "totalAvailableBalance": _s(available),
        "accountMMRate": _fixed(maintenance / margin, 4) if margin > 0 else "0",
        "totalPerpUPL": _s(upl),
        "totalWalletBalance": _s(wallet),
        "accountLTV": "0",
        "totalMaintenanceMargin": _s(maintenance),
        "coin": [_coin_row(b) for b in balances],
    }


def _drop_fields(path: str, result: Json) -> None:
    fields = _DROPPABLE.get(path, ())
    if not isinstance(result, dict):
        return
    rows = result.get("list")
    if not isinstance(rows, list):
        return
    for row in rows:
        if not isinstance(row, dict):
            continue
        targets = row.get("coin") if path == "/v5/account/wallet-balance" else [row]
        for target in targets if isinstance(targets, list) else []:
            if isinstance(target, dict):
                for name in fields:
                    target.pop(name, None)


class BybitEmulator:
    """A local Bybit V5 (unified account, linear USDT perps) for ccxt, driven by a control API.

    Use ``async with BybitEmulator() as ex:``; ``ex.url`` is the HTTP base and ``ex.ws_url``
    the WebSocket base (private stream at ``/v5/private``, public at ``/v5/public/linear``).
    The control methods are plain methods to call from the emulator's event loop; only
    ``start``, ``stop`` and ``wait_for_subscribers`` are coroutines. Control methods raise
    ValueError for impossible requests (unknown symbol, reducing more than is open).
    """

    def __init__(
        self,
        *,
        hedge_mode: bool = False,
        api_key: str | None = None,
        balance: NumberLike = 10_000,
        taker_fee_rate: NumberLike = Decimal("0.00055"),
        clock: Callable[[], int] | None = None,
        timeout_fault_seconds: float = 30.0,
        host: str = "127.0.0.1",
        instruments: Iterable[Instrument] = INSTRUMENTS,
    ) -> None:
        self.state = ExchangeState(
            clock=clock,
            hedge_mode=hedge_mode,
            taker_fee_rate=taker_fee_rate,
            balance=balance,
            instruments=instruments,
        )
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)
        self.unhandled: list[str] = []
        self._api_key = api_key
        self._timeout_fault_seconds = timeout_fault_seconds
        self._host = host
        self._faults: list[_Fault] = []
        self._connections: set[_WsConnection] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing: asyncio.Event | None = None
        self._subscriptions_changed: asyncio.Event | None = None
        self._routes: dict[
            tuple[str, str], Callable[[Mapping[str, str], str | None], JsonObject]
        ] = {
            ("GET", "/v5/market/time"): self._market_time,
            ("GET", "/v5/market/instruments-info"): self._instruments_info,
            ("GET", "/v5/market/tickers"): self._tickers,
            ("GET", "/v5/asset/coin/query-info"): self._coin_info,
            ("GET", "/v5/user/query-api"): self._query_api,
            ("GET", "/v5/account/info"): self._account_info,
            ("GET", "/v5/account/wallet-balance"): self._wallet_balance,
            ("GET", "/v5/position/list"): self._position_list,
            ("GET", "/v5/position/closed-pnl"): self._closed_pnl,
            ("GET", "/v5/execution/list"): self._execution_list,
            ("GET", "/v5/order/realtime"): self._no_orders,
            ("GET", "/v5/order/history"): self._no_orders,
            ("POST", "/v5/position/set-leverage"): self._set_leverage,
            ("POST", "/v5/position/switch-mode"): self._switch_mode,
        }

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind an ephemeral port on the host and start serving."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self._closing = asyncio.Event()
        self._subscriptions_changed = asyncio.Event()
        app = web.Application()
        app.router.add_get("/v5/private", self._ws_private)
        app.router.add_get("/v5/public/{category}", self._ws_public)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Cancelling handlers when the client hangs up ends a "timeout" fault's sleep early.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        """Close every socket and stop serving; pending "timeout" faults end at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        for connection in list(self._connections):
            self._forget(connection)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(connection.ws.close(code=1001, message=b"shutdown"), 1.0)
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._require_port()}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._require_port()}"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    # -- control API -----------------------------------------------------------------
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
        self._push_positions([position])
        self._push_executions([execution])
        return position

    def reduce_position(
        self, symbol: str, side: str, qty: NumberLike, price: NumberLike
    ) -> ClosedPnl:
        """Reduce the `side` position by qty at price; writes closed-pnl and execution rows."""
        position, record, execution = self.state.reduce_position(symbol, side, qty, price)
        self._push_positions([position])
        self._push_executions([execution])
        return record

    def close_position(self, symbol: str, side: str, price: NumberLike) -> ClosedPnl:
        """Close the whole `side` position at price; writes closed-pnl and execution rows."""
        position, record, execution = self.state.close_position(symbol, side, price)
        self._push_positions([position])
        self._push_executions([execution])
        return record

    def set_mark_price(self, symbol: str, price: NumberLike) -> list[Position]:
        """Move the mark; open positions on the symbol are re-marked and pushed."""
        changed = self.state.set_mark_price(symbol, price)
        self._push_positions(changed)
        self._push_ticker(self.state.symbol_id(symbol))
        return changed

    def set_balance(
        self, total: NumberLike, available: NumberLike | None = None, coin: str = "USDT"
    ) -> None:
        """Set a coin's wallet balance; `available`, if given, stays pinned until the next call."""
        self.state.set_balance(total, available, coin)

    def pay_funding(self, symbol: str, side: str, amount: NumberLike) -> Execution:
        """Credit funding to the `side` position (negative: it pays); execFee is -amount."""
        position, execution = self.state.pay_funding(symbol, side, amount)
        self._push_positions([position])
        self._push_executions([execution])
        return execution

    def inject_fault(self, kind: FaultKind, count: int = 1, *, path: str | None = None) -> None:
        """Fail the next `count` private requests, or requests to `path`, with `kind`."""
        if kind not in _FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(_FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        self._faults.append(_Fault(kind, count, path))

    def clear_faults(self) -> None:
        self._faults.clear()

    def drop_websockets(self) -> int:
        """Abort every WebSocket connection without a close frame; returns how many were dropped."""
        dropped = 0
        for connection in list(self._connections):
            self._forget(connection)
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped

    def subscribers(self, topic: str = "position") -> int:
        """Live authenticated (for private topics) connections subscribed to `topic`."""
        return sum(
            1 for c in self._connections if topic in c.topics and (c.authed or not c.private)
        )

    async def wait_for_subscribers(
        self, topic: str = "position", count: int = 1, timeout: float = 5.0
    ) -> None:
        """Wait until `count` connections subscribe to `topic`; raises TimeoutError."""
        changed = self._subscriptions_changed
        if changed is None:
            raise RuntimeError("emulator not started")
        async with asyncio.timeout(timeout):
            while self.subscribers(topic) < count:
                changed.clear()
                await changed.wait()

    # -- HTTP ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        params: dict[str, str] = dict(request.query)
        if request.method == "POST" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return self._error_response(10001, "params error: body is not JSON")
            if isinstance(body, dict):
                params.update({str(k): str(v) for k, v in body.items()})
        self.requests.append(RequestRecord(request.method, path, params))
        private = not path.startswith("/v5/market/")
        api_key = request.headers.get("X-BAPI-API-KEY", "")
        if private and (not api_key or (self._api_key is not None and api_key != self._api_key)):
            return self._error_response(10003, "API key is invalid.", status=401)
        fault = self._take_fault(path, private)
        if fault is not None:
            early = await self._fault_response(fault)
            if early is not None:
                return early
        route = self._routes.get((request.method, path))
        if route is None:
            self.unhandled.append(f"{request.method} {path}")
            return web.Response(status=404, text="404 page not found", content_type="text/plain")
        try:
            result = route(params, api_key or None)
        except _ApiError as error:
            return self._error_response(error.code, error.message, status=error.status)
        if fault == "empty_with_error":
            result = {
                "category": params.get("category", ""),
                "list": [],
                "nextPageCursor": "",
            }
            return self._envelope(
                result, code=10016, message="System error. Please try again later."
            )
        if fault == "missing_fields":
            _drop_fields(path, result)
        response = self._envelope(result)
        if fault == "malformed_json":
            text = response.text or ""
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        return response

    def _take_fault(self, path: str, private: bool) -> FaultKind | None:
        for fault in self._faults:
            if (fault.path == path) if fault.path is not None else private:
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.kind
        return None

    async def _fault_response(self, kind: FaultKind) -> web.StreamResponse | None:
        if kind == "timeout":
            closing = self._closing
            assert closing is not None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self._timeout_fault_seconds)
            return None
        if kind == "http_500":
            return web.Response(
                status=500,
                text="<html><body>500 Internal Server Error</body></html>",
                content_type="text/html",
            )
        if kind == "http_503":
            return web.Response(
                status=503,
                text="<html><body>503 Service Temporarily Unavailable</body></html>",
                content_type="text/html",
            )
        if kind == "rate_limit":
            response = self._error_response(10006, "Too many visits!")
            response.headers["X-Bapi-Limit"] = "10"
            response.headers["X-Bapi-Limit-Status"] = "0"
            response.headers["X-Bapi-Limit-Reset-Timestamp"] = str(self.state.now_ms() + 1000)
            return response
        if kind == "invalid_key":
            return self._error_response(10003, "API key is invalid.", status=401)
        return None

    def _envelope(
        self, result: Json, *, code: int = 0, message: str = "OK", status: int = 200
    ) -> web.Response:
        body: JsonObject = {
            "retCode": code,
            "retMsg": message,
            "result": result,
            "retExtInfo": {},
            "time": self.state.now_ms(),
        }
        return web.Response(status=status, text=json.dumps(body), content_type="application/json")

    def _error_response(self, code: int, message: str, *, status: int = 200) -> web.Response:
        return self._envelope({}, code=code, message=message, status=status)

    # -- routes ----------------------------------------------------------------------
    def _market_time(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        now = self.state.now_ms()
        return {"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)}

    def _instruments_info(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        category = _category(params, ("spot", "linear", "inverse", "option"))
        rows: list[Instrument] = []
        if category == "linear" and params.get("status", "Trading") == "Trading":
            rows = list(self.state.instruments.values())
            if symbol := params.get("symbol"):
                rows = [i for i in rows if i.symbol == symbol]
            if base := params.get("baseCoin"):
                rows = [i for i in rows if i.base == base]
        page, cursor = _paginate(
            rows,
            lambda i: (i.symbol,),
            _parse_symbol,
            descending=False,
            limit=_limit(params, 500, 1000),
            cursor=params.get("cursor"),
        )
        return {
            "category": category,
            "list": [_instrument_row(i) for i in page],
            "nextPageCursor": cursor,
        }

    def _tickers(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        category = _category(params, ("spot", "linear", "inverse", "option"))
        rows: list[Json] = []
        if category == "linear":
            symbol = params.get("symbol")
            if symbol and symbol not in self.state.instruments:
                raise _ApiError(10001, "Not supported symbols")
            rows = [
                _ticker_row(i, self.state.mark_price(i.symbol))
                for i in self.state.instruments.values()
                if not symbol or i.symbol == symbol
            ]
        return {"category": category, "list": rows}

    def _coin_info(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        coins = sorted({"USDT", "USDC", *(i.base for i in self.state.instruments.values())})
        if coin := params.get("coin"):
            coins = [c for c in coins if c == coin]
        return {
            "rows": [{"name": c, "coin": c, "remainAmount": "1000000", "chains": []} for c in coins]
        }

    def _query_api(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        return {
            "id": "1",
            "note": "emulator",
            "apiKey": api_key or "",
            "readOnly": 0,
            "secret": "",
            "permissions": {
                "ContractTrade": ["Order", "Position"],
                "Spot": ["SpotTrade"],
                "Wallet": ["AccountTransfer"],
                "Options": ["OptionsTrade"],
                "Derivatives": ["DerivativesTrade"],
                "CopyTrading": [],
                "BlockTrade": [],
                "Exchange": [],
                "NFT": [],
                "Affiliate": [],
            },
            "ips": ["*"],
            "type": 1,
            "deadlineDay": -1,
            "expiredAt": "",
            "createdAt": "2024-01-01T00:00:00Z",
            "unified": 0,
            "uta": 1,
            "userID": 1001,
            "inviterID": 0,
            "vipLevel": "No VIP",
            "mktMakerLevel": "0",
            "affiliateID": 0,
            "rsaPublicKey": "",
            "isMaster": True,
            "parentUid": "0",
        }

    def _account_info(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        return {
            "marginMode": "REGULAR_MARGIN",
            "updatedTime": str(self.state.now_ms()),
            "unifiedMarginStatus": 6,
            "dcpStatus": "OFF",
            "timeWindow": 10,
            "smpGroup": 0,
            "isMasterTrader": False,
            "spotHedgingStatus": "OFF",
        }

    def _wallet_balance(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        account_type = params.get("accountType", "")
        if account_type != "UNIFIED":
            raise _ApiError(10001, "accountType only support UNIFIED.")
        balances = self.state.balances()
        if coins := params.get("coin"):
            wanted = set(coins.upper().split(","))
            balances = [b for b in balances if b.coin in wanted]
        return {"list": [_wallet_account(balances)]}

    def _position_list(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        category = _category(params, ("linear", "inverse", "option"))
        symbol = params.get("symbol") or None
        settle = params.get("settleCoin") or None
        positions: list[Position] = []
        if category == "linear":
            if symbol is None and settle is None:
                raise _ApiError(
                    10001,
                    "Missing some parameters that must be filled in, symbol or settleCoin",
                )
            if symbol is not None:
                if symbol not in self.state.instruments:
                    raise _ApiError(10001, "params error: symbol invalid")
                positions = self.state.positions(symbol=symbol)
            elif settle == "USDT":
                positions = self.state.positions()
        page, cursor = _paginate(
            positions,
            lambda p: (p.symbol, p.position_idx),
            _parse_symbol_idx,
            descending=False,
            limit=_limit(params, 20, 200),
            cursor=params.get("cursor"),
        )
        return {
            "list": [_position_row(p) for p in page],
            "nextPageCursor": cursor,
            "category": category,
        }

    def _closed_pnl(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        symbol = params.get("symbol")
        return self._linear_history(
            params,
            ("linear", "inverse"),
            self.state.closed_pnl,
            lambda r: (r.updated_ms, r.seq),
            lambda r: not symbol or r.symbol == symbol,
            _closed_pnl_row,
        )

    def _execution_list(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        symbol = params.get("symbol")
        exec_type = params.get("execType")
        order_id = params.get("orderId")
        base = params.get("baseCoin")
        return self._linear_history(
            params,
            ("spot", "linear", "inverse", "option"),
            self.state.executions,
            lambda e: (e.exec_time_ms, e.seq),
            lambda e: (
                (not symbol or e.symbol == symbol)
                and (not exec_type or e.exec_type == exec_type)
                and (not order_id or e.order_id == order_id)
                and (not base or self.state.instruments[e.symbol].base == base)
            ),
            _execution_row,
        )

    def _linear_history(
        self,
        params: Mapping[str, str],
        categories: tuple[str, ...],
        records: Sequence[_T],
        stamp: Callable[[_T], tuple[int, int]],
        keep: Callable[[_T], bool],
        row: Callable[[_T], JsonObject],
    ) -> JsonObject:
        """A time-windowed history endpoint: records of the linear category whose stamp
        (time in ms, seq) falls in the request's window and that `keep` accepts, newest first,
        paged by a "time,seq" cursor; other categories have none."""
        category = _category(params, categories)
        start, end = self._window(params)
        rows: list[_T] = []
        if category == "linear":
            rows = [r for r in records if start <= stamp(r)[0] <= end and keep(r)]
        page, cursor = _paginate(
            rows,
            stamp,
            _parse_time_seq,
            descending=True,
            limit=_limit(params, 50, 100),
            cursor=params.get("cursor"),
        )
        return {
            "nextPageCursor": cursor,
            "category": category,
            "list": [row(r) for r in page],
        }

    def _no_orders(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        # The emulator has no order book: positions appear through the control API only.
        category = _category(params, ("spot", "linear", "inverse", "option"))
        return {"list": [], "nextPageCursor": "", "category": category}

    def _set_leverage(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        _category(params, ("linear",))
        symbol = params.get("symbol", "")
        if symbol not in self.state.instruments:
            raise _ApiError(10001, "params error: symbol invalid")
        buy, sell = params.get("buyLeverage", ""), params.get("sellLeverage", "")
        try:
            buy_leverage, sell_leverage = Decimal(buy), Decimal(sell)
        except ArithmeticError:
            raise _ApiError(10001, "params error: leverage invalid") from None
        if not self.state.hedge_mode and buy_leverage != sell_leverage:
            raise _ApiError(10001, "buy leverage must equal sell leverage in one-way mode")
        current = self.state.positions(symbol=symbol)
        wanted = {1: buy_leverage, 2: sell_leverage, 0: buy_leverage}
        if all(p.leverage == wanted[p.position_idx] for p in current):
            raise _ApiError(110043, "leverage not modified")
        try:
            changed = [
                *self.state.set_leverage(
                    symbol, buy_leverage, 0 if not self.state.hedge_mode else 1
                ),
                *(
                    self.state.set_leverage(symbol, sell_leverage, 2)
                    if self.state.hedge_mode
                    else []
                ),
            ]
        except ValueError as error:
            raise _ApiError(10001, str(error)) from None
        self._push_positions([p for p in changed if p.is_open])
        return {}

    def _switch_mode(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        _category(params, ("linear",))
        mode = params.get("mode")
        if mode not in ("0", "3"):
            raise _ApiError(10001, "params error: mode invalid")
        hedge = mode == "3"
        if hedge == self.state.hedge_mode:
            raise _ApiError(110025, "Position mode is not modified")
        try:
            self.state.set_hedge_mode(hedge)
        except ValueError as error:
            raise _ApiError(110025, str(error)) from None
        return {}

    def _window(self, params: Mapping[str, str]) -> tuple[int, int]:
        start, end = self.state.time_window(
            _int_param(params, "startTime"), _int_param(params, "endTime")
        )
        if end < start or end - start > 7 * 24 * 3600 * 1000:
            raise _ApiError(
                10001,
                "The time range between startTime and endTime cannot exceed 7 days",
            )
        return start, end

    # -- WebSocket -------------------------------------------------------------------
    async def _ws_private(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ws(request, private=True)

    async def _ws_public(self, request: web.Request) -> web.StreamResponse:
        return await self._serve_ws(request, private=False)

    async def _serve_ws(self, request: web.Request, *, private: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = _WsConnection(ws=ws, request=request, private=private)
        self._connections.add(connection)
        sender = asyncio.create_task(self._ws_sender(connection))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._ws_on_text(connection, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._forget(connection)
            connection.outbox.put_nowait(None)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(sender, 1.0)
        return ws

    async def _ws_sender(self, connection: _WsConnection) -> None:
        while (message := await connection.outbox.get()) is not None:
            if connection.ws.closed:
                return
            try:
                await connection.ws.send_str(json.dumps(message))
            except ConnectionError:
                return

    def _ws_on_text(self, connection: _WsConnection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        op = message.get("op")
        req_id = message.get("req_id")
        reply: JsonObject = {
            "conn_id": connection.conn_id,
            "op": op if isinstance(op, str) else "",
        }
        if isinstance(req_id, str | int):
            reply["req_id"] = str(req_id)
        args = message.get("args")
        arg_list = [a for a in args if isinstance(a, str)] if isinstance(args, list) else []
        if op == "ping":
            if connection.private:
                reply.update(op="pong", args=[str(self.state.now_ms())])
            else:
                reply.update(success=True, ret_msg="pong")
        elif op == "auth":
            key = arg_list[0] if arg_list else ""
            ok = bool(key) and (self._api_key is None or key == self._api_key)
            connection.authed = connection.authed or ok
            reply.update(success=ok, ret_msg="" if ok else "Params Error")
        elif op in ("subscribe", "unsubscribe"):
            if connection.private and not connection.authed:
                reply.update(success=False, ret_msg="Request not authorized")
            else:
                if op == "subscribe":
                    connection.topics.update(arg_list)
                else:
                    connection.topics.difference_update(arg_list)
                reply.update(success=True, ret_msg="")
                self._notify_subscriptions()
        else:
            reply.update(success=False, ret_msg=f"Invalid op: {op}")
        connection.outbox.put_nowait(reply)

    def _forget(self, connection: _WsConnection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._notify_subscriptions()

    def _notify_subscriptions(self) -> None:
        if self._subscriptions_changed is not None:
            self._subscriptions_changed.set()

    def _publish(
        self, topic: str, data: Json, *, private: bool, extra: JsonObject | None = None
    ) -> None:
        now = self.state.now_ms()
        for connection in self._connections:
            if connection.private != private or topic not in connection.topics:
                continue
            if private:
                message: JsonObject = {
                    "id": str(uuid.uuid4()),
                    "topic": topic,
                    "creationTime": now,
                    "data": data,
                }
            else:
                message = {
                    "topic": topic,
                    "ts": now,
                    "type": "snapshot",
                    "cs": now,
                    "data": data,
                }
            if extra:
                message.update(extra)
            connection.outbox.put_nowait(message)

    def _push_positions(self, positions: Sequence[Position]) -> None:
        if positions:
            self._publish("position", [_position_row(p, ws=True) for p in positions], private=True)

    def _push_executions(self, executions: Sequence[Execution]) -> None:
        if executions:
            self._publish(
                "execution",
                [_execution_row(e, ws=True) for e in executions],
                private=True,
            )

    def _push_ticker(self, symbol: str) -> None:
        instrument = self.state.instruments[symbol]
        self._publish(
            f"tickers.{symbol}",
            _ticker_row(instrument, self.state.mark_price(symbol)),
            private=False,
        )
