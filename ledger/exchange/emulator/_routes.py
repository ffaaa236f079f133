"""The REST routes: one handler per Bybit V5 endpoint, reading and changing ExchangeState."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from typing import TypeAlias, TypeVar
from urllib.parse import quote, unquote

from ledger.exchange.emulator._model import Instrument, Position
from ledger.exchange.emulator._state import ExchangeState
from ledger.exchange.emulator._wire import (
    Json,
    JsonObject,
    closed_pnl_row,
    execution_row,
    instrument_row,
    position_row,
    ticker_row,
    wallet_account,
)

__all__ = ["ApiError", "Handler", "RestRoutes"]

_T = TypeVar("_T")
_K = TypeVar("_K", bound=tuple[object, ...])

Handler: TypeAlias = Callable[[Mapping[str, str], str | None], JsonObject]


class ApiError(Exception):
    """A request Bybit refuses: served as an envelope with retCode `code`."""

    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ApiError(10001, f"params error: {name} invalid") from None


def _limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    value = _int_param(params, "limit")
    if value is None:
        return default
    if value < 1:
        raise ApiError(10001, "params error: limit invalid")
    return min(value, maximum)


def _paginate(
    rows: Sequence[_T],
    key: Callable[[_T], _K],
    parse: Callable[[str], _K],
    *,
    descending: bool,
    limit: int,
    cursor: str | None,
    cursor_on_last_page: bool = True,
) -> tuple[list[_T], str]:
    ordered = sorted(rows, key=key, reverse=descending)
    if cursor:
        try:
            mark = parse(unquote(cursor))
        except (ValueError, IndexError):
            raise ApiError(10001, "params error: cursor invalid") from None
        ordered = [r for r in ordered if (key(r) < mark if descending else key(r) > mark)]
    page = ordered[:limit]
    if not page or (len(ordered) <= limit and not cursor_on_last_page):
        return page, ""
    # Bybit's nextPageCursor is non-empty on the last page too (the position fixture has one
    # row and a cursor): the end is an empty page.
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
        raise ApiError(
            10001,
            "Illegal category" if category else "params error: category is required",
        )
    return category


class RestRoutes:
    """Handlers keyed by (method, path); `push_positions` tells the feeds what changed."""

    def __init__(
        self, state: ExchangeState, push_positions: Callable[[Sequence[Position]], None]
    ) -> None:
        self.state = state
        self._push_positions = push_positions
        self.table: dict[tuple[str, str], Handler] = {
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
            cursor_on_last_page=False,
        )
        return {
            "category": category,
            "list": [instrument_row(i) for i in page],
            "nextPageCursor": cursor,
        }

    def _tickers(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        category = _category(params, ("spot", "linear", "inverse", "option"))
        rows: list[Json] = []
        if category == "linear":
            symbol = params.get("symbol")
            if symbol and symbol not in self.state.instruments:
                raise ApiError(10001, "Not supported symbols")
            rows = [
                ticker_row(i, self.state.mark_price(i.symbol))
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
            raise ApiError(10001, "accountType only support UNIFIED.")
        balances = self.state.balances()
        if coins := params.get("coin"):
            wanted = set(coins.upper().split(","))
            balances = [b for b in balances if b.coin in wanted]
        return {"list": [wallet_account(balances)]}

    def _position_list(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        category = _category(params, ("linear", "inverse", "option"))
        symbol = params.get("symbol") or None
        settle = params.get("settleCoin") or None
        positions: list[Position] = []
        if category == "linear":
            if symbol is None and settle is None:
                raise ApiError(
                    10001,
                    "Missing some parameters that must be filled in, symbol or settleCoin",
                )
            if symbol is not None:
                if symbol not in self.state.instruments:
                    raise ApiError(10001, "params error: symbol invalid")
                positions = self.state.positions(symbol=symbol)
            else:
                # USDT and USDC contracts are both "linear"; each settle coin lists its own.
                positions = self.state.positions(settle=settle)
        page, cursor = _paginate(
            positions,
            lambda p: (p.symbol, p.position_idx),
            _parse_symbol_idx,
            descending=False,
            limit=_limit(params, 20, 200),
            cursor=params.get("cursor"),
        )
        return {
            "list": [position_row(p) for p in page],
            "nextPageCursor": cursor,
            "category": category,
        }

    def _closed_pnl(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        symbol = params.get("symbol")
        return self._linear_history(
            params,
            ("linear", "inverse"),
            self.state.visible_closed_pnl(),
            lambda r: (r.created_ms, r.seq),
            lambda r: not symbol or r.symbol == symbol,
            closed_pnl_row,
        )

    def _execution_list(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        symbol = params.get("symbol")
        exec_type = params.get("execType")
        order_id = params.get("orderId")
        base = params.get("baseCoin")
        settle = params.get("settleCoin")
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
                and (not settle or self.state.settle_coin(e.symbol) == settle)
            ),
            execution_row,
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
            raise ApiError(10001, "params error: symbol invalid")
        buy, sell = params.get("buyLeverage", ""), params.get("sellLeverage", "")
        try:
            buy_leverage, sell_leverage = Decimal(buy), Decimal(sell)
        except ArithmeticError:
            raise ApiError(10001, "params error: leverage invalid") from None
        if not self.state.hedge_mode and buy_leverage != sell_leverage:
            raise ApiError(10001, "buy leverage must equal sell leverage in one-way mode")
        current = self.state.positions(symbol=symbol)
        wanted = {1: buy_leverage, 2: sell_leverage, 0: buy_leverage}
        if all(p.leverage == wanted[p.position_idx] for p in current):
            raise ApiError(110043, "leverage not modified")
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
            raise ApiError(10001, str(error)) from None
        self._push_positions([p for p in changed if p.is_open])
        return {}

    def _switch_mode(self, params: Mapping[str, str], api_key: str | None) -> JsonObject:
        _category(params, ("linear",))
        mode = params.get("mode")
        if mode not in ("0", "3"):
            raise ApiError(10001, "params error: mode invalid")
        hedge = mode == "3"
        if hedge == self.state.hedge_mode:
            raise ApiError(110025, "Position mode is not modified")
        try:
            self.state.set_hedge_mode(hedge)
        except ValueError as error:
            raise ApiError(110025, str(error)) from None
        return {}

    def _window(self, params: Mapping[str, str]) -> tuple[int, int]:
        start, end = self.state.time_window(
            _int_param(params, "startTime"), _int_param(params, "endTime")
        )
        if end < start or end - start > 7 * 24 * 3600 * 1000:
            raise ApiError(
                10001,
                "The time range between startTime and endTime cannot exceed 7 days",
            )
        return start, end
