"""What the exchange reported, as typed, exact observations parsed from ccxt's unified dicts.

ccxt turns Bybit's strings into floats; every number here is read instead from the exchange's
own strings in the dict's `info` (Bybit V5 fields: size, avgPrice, markPrice, unrealisedPnl,
positionIM, ...), and every exchange time (epoch milliseconds) becomes an aware UTC datetime
once, here. A row that cannot be trusted raises MalformedResponse naming the field; a parser
never returns a partial observation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.errors import InvalidValue, MalformedResponse
from ledger.values import Side, exact, from_millis, market_key, to_decimal

__all__ = [
    "BalanceObservation",
    "ClosedPnlObservation",
    "ExchangeSnapshot",
    "FundingObservation",
    "MalformedResponse",
    "PositionObservation",
    "balance_from_ccxt",
    "closed_pnl_from_ccxt",
    "funding_from_ccxt",
    "mark_from_ticker",
    "market_key",
    "position_from_ccxt",
    "positions_from_ccxt",
]


class PositionObservation(msgspec.Struct, frozen=True, kw_only=True):
    """One open position as the exchange shows it (flat rows are not observations)."""

    symbol: str  # ccxt's unified symbol, e.g. "BTC/USDT:USDT"
    market_id: str  # Bybit's id, e.g. "BTCUSDT"
    side: Side
    position_idx: int  # 0 one-way, 1 long / 2 short in hedge mode
    qty: Decimal  # contracts = base units for USDT linear perpetuals
    entry_price: Decimal
    mark_price: Decimal
    unrealized_pnl: Decimal | None
    initial_margin: Decimal | None
    leverage: Decimal | None
    created_at: datetime  # Bybit's createdTime: the FIRST-ever position on the slot
    updated_at: datetime
    # Bybit's openTime: when THIS position opened (None when Bybit sent 0 or nothing)
    opened_at: datetime | None = None

    @property
    def contracts(self) -> Decimal:
        return self.qty

    @property
    def key(self) -> tuple[str, Side]:
        """What a ledger position is matched on: the market (as ccxt names it, so Bybit's
        BTCPERP is BTC/USDC:USDC's market) and the side."""
        return (market_key(self.symbol), self.side)


class BalanceObservation(msgspec.Struct, frozen=True, kw_only=True):
    """One coin of the unified account: wallet balance and what is free for new margin."""

    currency: str
    total: Decimal
    available: Decimal
    equity: Decimal | None = None
    unrealized_pnl: Decimal | None = None
    at: datetime | None = None


class ClosedPnlObservation(msgspec.Struct, frozen=True, kw_only=True):
    """One closed-PnL record: a reduce or close of a position, with Bybit's realized PnL.

    `side` is the side of the POSITION that was reduced (Bybit's row carries the closing
    order's side: "Sell" closes a long).
    """

    symbol: str
    market_id: str
    side: Side
    qty: Decimal  # closedSize
    entry_price: Decimal
    exit_price: Decimal
    closed_pnl: Decimal  # net of the opening fee share and the closing fee
    order_id: str
    at: datetime  # updatedTime
    open_fee: Decimal | None = None
    close_fee: Decimal | None = None
    leverage: Decimal | None = None
    created_at: datetime | None = None  # the row's createdTime

    @property
    def key(self) -> tuple[str, Side]:
        return (market_key(self.symbol), self.side)

    @property
    def fact_key(self) -> str:
        """This record's identity: one order can close in several rows, so the order id alone
        is not enough; the same row listed twice (or on two pages) gives the same key."""
        created = self.created_at or self.at
        return f"{self.order_id}:{int(created.timestamp() * 1000)}:{self.qty}"


class FundingObservation(msgspec.Struct, frozen=True, kw_only=True):
    """One funding settlement: positive amount received, negative paid."""

    exec_id: str
    symbol: str
    market_id: str
    side: Side  # the side of the position it was settled on
    amount: Decimal
    qty: Decimal
    at: datetime

    @property
    def key(self) -> tuple[str, Side]:
        return (market_key(self.symbol), self.side)


class ExchangeSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one sync fetched, taken before anything is decided.

    complete: the position list is the whole account (a successful REST fetch), so a position
    missing from it is absent; a WebSocket update lists only what changed (complete=False).
    closed_pnl_since / funding_since: the start of the window fetched (None: not fetched).
    """

    fetched_at: datetime
    positions: tuple[PositionObservation, ...] = ()
    closed_pnl: tuple[ClosedPnlObservation, ...] = ()
    funding: tuple[FundingObservation, ...] = ()
    balance: BalanceObservation | None = None
    complete: bool = True
    closed_pnl_since: datetime | None = None
    funding_since: datetime | None = None
    # the settle coins whose positions were listed (empty: all); a ledger position on another
    # settle coin is not absent just because it was not asked for
    settle_coins: tuple[str, ...] = ()


# -- helpers --------------------------------------------------------------------------------


def _unified_symbol(raw: object, market_id: str, settle: str = "USDT") -> str:
    """ccxt's unified symbol when ccxt knew the market, else derived for USDT linear perps."""
    if isinstance(raw, str) and "/" in raw:
        return raw
    if market_id.endswith(settle) and len(market_id) > len(settle):
        return f"{market_id[: -len(settle)]}/{settle}:{settle}"
    return market_id


def _info(unified: Mapping[str, object], what: str) -> Mapping[str, object]:
    info = unified.get("info")
    if not isinstance(info, Mapping):
        raise MalformedResponse(what, "info", type(info).__name__, "expected the raw row")
    return info


def _present(info: Mapping[str, object], what: str, field: str) -> object:
    value = info.get(field)
    if value is None or value == "":
        raise MalformedResponse(what, field, value, "missing")
    return value


def _text(info: Mapping[str, object], what: str, field: str) -> str:
    value = _present(info, what, field)
    if not isinstance(value, str | int):
        raise MalformedResponse(what, field, value, "expected a string")
    return str(value)


def _number(info: Mapping[str, object], what: str, field: str) -> Decimal:
    value = _present(info, what, field)
    if isinstance(value, float):
        # Bybit sends numbers as strings; a float means someone else converted it already
        raise MalformedResponse(what, field, value, "expected the exchange's number string")
    try:
        return to_decimal(field, value)
    except InvalidValue as exc:
        raise MalformedResponse(what, field, value, exc.why) from None


def _optional_number(info: Mapping[str, object], what: str, field: str) -> Decimal | None:
    value = info.get(field)
    if value is None or value == "":
        return None
    return _number(info, what, field)


def _positive(info: Mapping[str, object], what: str, field: str) -> Decimal:
    value = _number(info, what, field)
    if value <= 0:
        raise MalformedResponse(what, field, info.get(field), "must be greater than zero")
    return value


def _time(info: Mapping[str, object], what: str, field: str) -> datetime:
    raw = _text(info, what, field)
    try:
        ms = int(raw)
    except ValueError:
        raise MalformedResponse(what, field, raw, "expected epoch milliseconds") from None
    if ms <= 0:
        raise MalformedResponse(what, field, raw, "expected epoch milliseconds")
    return from_millis(ms)


def _order_side(info: Mapping[str, object], what: str, field: str = "side") -> Side:
    raw = _text(info, what, field)
    if raw not in ("Buy", "Sell"):
        raise MalformedResponse(what, field, raw, "expected 'Buy' or 'Sell'")
    return Side.BUY if raw == "Buy" else Side.SELL


def _position_idx(info: Mapping[str, object], what: str) -> int:
    raw = _text(info, what, "positionIdx")
    if raw not in ("0", "1", "2"):
        raise MalformedResponse(what, "positionIdx", raw, "expected 0, 1 or 2")
    return int(raw)


def _open_time(info: Mapping[str, object], what: str) -> datetime | None:
    """Bybit's openTime (added April 2026; "0" or absent: unknown)."""
    raw = info.get("openTime")
    if raw is None or raw in ("", "0", 0):
        return None
    return _time(info, what, "openTime")


# -- parsers --------------------------------------------------------------------------------


def position_from_ccxt(unified: Mapping[str, object]) -> PositionObservation | None:
    """A position from one of ccxt's fetch_positions / watch_positions dicts; None when flat.

    Raises MalformedResponse naming the field.
    """
    info = _info(unified, "position")
    market_id = _text(info, "position", "symbol")
    what = f"position {market_id}"
    size = _number(info, what, "size")
    if size < 0:
        raise MalformedResponse(what, "size", info.get("size"), "must not be negative")
    if size == 0:
        return None
    # the REST list says avgPrice, the private WebSocket entryPrice
    entry_field = (
        "entryPrice" if info.get("avgPrice") in (None, "") and "entryPrice" in info else "avgPrice"
    )
    leverage = _optional_number(info, what, "leverage")
    if leverage is not None and leverage <= 0:
        raise MalformedResponse(what, "leverage", info.get("leverage"), "must be positive")
    margin = _optional_number(info, what, "positionIM")
    if margin is not None and margin < 0:
        raise MalformedResponse(what, "positionIM", info.get("positionIM"), "is negative")
    return PositionObservation(
        symbol=_unified_symbol(unified.get("symbol"), market_id),
        market_id=market_id,
        side=_order_side(info, what),
        position_idx=_position_idx(info, what),
        qty=size,
        entry_price=_positive(info, what, entry_field),
        mark_price=_positive(info, what, "markPrice"),
        unrealized_pnl=_optional_number(info, what, "unrealisedPnl"),
        initial_margin=margin,
        leverage=leverage,
        created_at=_time(info, what, "createdTime"),
        updated_at=_time(info, what, "updatedTime"),
        opened_at=_open_time(info, what),
    )


def positions_from_ccxt(rows: Sequence[Mapping[str, object]]) -> list[PositionObservation]:
    """Every open position in a fetch; raises MalformedResponse on the first bad row."""
    observed = [position_from_ccxt(row) for row in rows]
    return [o for o in observed if o is not None]


@exact  # its classic account's free margin is a difference: the ledger's, not the caller's
def balance_from_ccxt(unified: Mapping[str, object], currency: str = "USDT") -> BalanceObservation:
    """The currency's wallet balance and free margin from ccxt's fetch_balance (unified account).

    available is the unified account's totalAvailableBalance (USD, cross margin: Bybit's
    free margin for new orders; availableToWithdraw is deprecated for unified accounts since
    January 2025 and sent empty). Without it (a classic account): availableToWithdraw, else
    walletBalance - locked - totalPositionIM - totalOrderIM. A unified account without the
    coin holds none of it (zero). Raises MalformedResponse.
    """
    response = _info(unified, "balance")
    result = response.get("result")
    accounts = result.get("list") if isinstance(result, Mapping) else None
    if not isinstance(accounts, list):
        raise MalformedResponse("balance", "result.list", accounts, "expected a list")
    at_raw = response.get("time")
    at = (
        from_millis(str(at_raw))
        if isinstance(at_raw, str | int) and str(at_raw).isdigit()
        else None
    )
    for account in accounts:
        if not isinstance(account, Mapping):
            raise MalformedResponse("balance", "list[]", account, "expected an object")
        if account.get("accountType") not in ("UNIFIED", "CONTRACT"):
            continue
        account_free = (
            _optional_number(account, "balance account", "totalAvailableBalance")
            if account.get("accountType") == "UNIFIED"
            else None
        )
        coins = account.get("coin")
        if not isinstance(coins, list):
            raise MalformedResponse("balance", "coin", coins, "expected a list")
        for coin in coins:
            if not isinstance(coin, Mapping) or coin.get("coin") != currency:
                continue
            what = f"balance {currency}"
            total = _number(coin, what, "walletBalance")
            free = account_free
            if free is None:
                free = _optional_number(coin, what, "availableToWithdraw")
            if free is None:
                used = sum(
                    (
                        _optional_number(coin, what, name) or Decimal(0)
                        for name in ("locked", "totalPositionIM", "totalOrderIM")
                    ),
                    Decimal(0),
                )
                free = total - used
            return BalanceObservation(
                currency=currency,
                total=total,
                available=free,
                equity=_optional_number(coin, what, "equity"),
                unrealized_pnl=_optional_number(coin, what, "unrealisedPnl"),
                at=at,
            )
        return BalanceObservation(
            currency=currency, total=Decimal(0), available=account_free or Decimal(0), at=at
        )
    raise MalformedResponse("balance", "accountType", None, "no unified or contract account")


def closed_pnl_from_ccxt(unified: Mapping[str, object]) -> ClosedPnlObservation:
    """A closed-PnL record from ccxt's fetch_positions_history dict (or its parse_position).

    Raises MalformedResponse.
    """
    info = _info(unified, "closed-pnl record")
    market_id = _text(info, "closed-pnl record", "symbol")
    order_id = _text(info, f"closed-pnl record {market_id}", "orderId")
    what = f"closed-pnl record {market_id} {order_id}"
    closing_side = _order_side(info, what)
    return ClosedPnlObservation(
        symbol=_unified_symbol(unified.get("symbol"), market_id),
        market_id=market_id,
        side=Side.SELL if closing_side is Side.BUY else Side.BUY,
        qty=_positive(info, what, "closedSize"),
        entry_price=_positive(info, what, "avgEntryPrice"),
        exit_price=_positive(info, what, "avgExitPrice"),
        closed_pnl=_number(info, what, "closedPnl"),
        order_id=order_id,
        at=_time(info, what, "updatedTime"),
        open_fee=_optional_number(info, what, "openFee"),
        close_fee=_optional_number(info, what, "closeFee"),
        leverage=_optional_number(info, what, "leverage"),
        created_at=_time(info, what, "createdTime") if info.get("createdTime") else None,
    )


def mark_from_ticker(unified: Mapping[str, object]) -> tuple[str, Decimal] | None:
    """(ccxt symbol, Bybit's markPrice) from a ccxt.pro watch_tickers ticker (the public
    `tickers.{symbol}` topic); None when the update carries no mark (Bybit sends deltas).

    Raises MalformedResponse.
    """
    info = _info(unified, "ticker")
    symbol = unified.get("symbol")
    if not isinstance(symbol, str) or not symbol:
        raise MalformedResponse("ticker", "symbol", symbol, "missing")
    if info.get("markPrice") in (None, ""):
        return None
    return symbol, _positive(info, f"ticker {symbol}", "markPrice")


def funding_from_ccxt(unified: Mapping[str, object]) -> FundingObservation | None:
    """A funding settlement from ccxt's parse_trade of an execution row; None for a trade.

    Bybit's execFee on a Funding row is what the account paid: the amount is its negation.
    Raises MalformedResponse.
    """
    info = _info(unified, "execution")
    exec_id = _text(info, "execution", "execId")
    what = f"execution {exec_id}"
    if _text(info, what, "execType") != "Funding":
        return None
    market_id = _text(info, what, "symbol")
    return FundingObservation(
        exec_id=exec_id,
        symbol=_unified_symbol(unified.get("symbol"), market_id),
        market_id=market_id,
        side=_order_side(info, what),
        amount=-_number(info, what, "execFee"),
        qty=_number(info, what, "execQty"),
        at=_time(info, what, "execTime"),
    )
