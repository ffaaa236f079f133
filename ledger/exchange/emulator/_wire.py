"""Bybit V5 wire format: the JSON rows and the response envelope the emulator serves."""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import TypeAlias

from aiohttp import web

from ledger.exchange.emulator._model import (
    ClosedPnl,
    CoinBalance,
    Execution,
    Instrument,
    Position,
)

__all__ = [
    "Json",
    "JsonObject",
    "closed_pnl_row",
    "coin_row",
    "envelope",
    "error_response",
    "execution_row",
    "fixed_num",
    "instrument_row",
    "num",
    "position_row",
    "ticker_row",
    "wallet_account",
]

Json: TypeAlias = "bool | int | float | str | list[Json] | dict[str, Json] | None"
JsonObject: TypeAlias = dict[str, Json]


def num(value: Decimal) -> str:
    """Bybit's number strings: plain notation, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def fixed_num(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def position_row(p: Position, *, ws: bool = False) -> JsonObject:
    flat = not p.is_open
    row: JsonObject = {
        "positionIdx": p.position_idx,
        "riskId": 1,
        "riskLimitValue": "2000000",
        "symbol": p.symbol,
        "side": p.side or "",
        "size": num(p.size),
        "avgPrice": num(p.avg_price),
        "positionValue": "" if flat else num(p.position_value),
        "tradeMode": 0,
        "autoAddMargin": 0,
        "positionStatus": "Normal",
        "leverage": num(p.leverage),
        "markPrice": num(p.mark_price),
        "liqPrice": "",
        "bustPrice": "",
        "positionIM": num(p.position_im),
        "positionMM": num(p.position_mm),
        "positionBalance": num(p.position_im),
        "tpslMode": "Full",
        "takeProfit": "" if p.take_profit is None else num(p.take_profit),
        "stopLoss": "" if p.stop_loss is None else num(p.stop_loss),
        "trailingStop": "0",
        "sessionAvgPrice": "",
        "unrealisedPnl": num(p.unrealised_pnl),
        "curRealisedPnl": num(p.cur_realised_pnl),
        "cumRealisedPnl": num(p.cum_realised_pnl),
        "adlRankIndicator": 0 if flat else 2,
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        # createdTime: the slot's first-ever position (position.mdx); openTime: this one's.
        "createdTime": str(p.created_ms),
        "updatedTime": str(p.updated_ms),
        "openTime": p.open_ms,
        "seq": p.seq,
    }
    if ws:
        # The private stream names the entry price entryPrice and tags each row's category.
        row["entryPrice"] = row.pop("avgPrice")
        row["category"] = "linear"
    return row


def closed_pnl_row(r: ClosedPnl) -> JsonObject:
    row: JsonObject = {
        "symbol": r.symbol,
        "orderType": "Market",
        "leverage": num(r.leverage),
        "updatedTime": str(r.updated_ms),
        "side": r.side,
        "orderId": r.order_id,
        "closedPnl": num(r.closed_pnl),
        "openFee": num(r.open_fee),
        "closeFee": num(r.close_fee),
        "avgEntryPrice": num(r.avg_entry_price),
        "qty": num(r.qty),
        "cumEntryValue": num(r.cum_entry_value),
        "createdTime": str(r.created_ms),
        "orderPrice": num(r.avg_exit_price),
        "closedSize": num(r.closed_size),
        "avgExitPrice": num(r.avg_exit_price),
        "execType": "Trade",
        "fillCount": "1",
        "cumExitValue": num(r.cum_exit_value),
    }
    if not r.with_fees:
        # The 2024 fixture and close-pnl.mdx's example have neither field (added June 2025).
        del row["openFee"], row["closeFee"]
    return row


def execution_row(e: Execution, *, ws: bool = False) -> JsonObject:
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
        "feeRate": num(e.fee_rate),
        "tradeIv": "",
        "blockTradeId": "",
        "markPrice": num(e.mark_price),
        "execPrice": num(e.exec_price),
        "markIv": "",
        "orderQty": num(e.order_qty),
        "orderPrice": num(e.order_price),
        "execValue": num(e.exec_value),
        "closedSize": num(e.closed_size),
        "execType": e.exec_type,
        "seq": e.seq,
        "side": e.side,
        "indexPrice": "",
        "leavesQty": "0",
        "isMaker": False,
        "execFee": num(e.exec_fee),
        "execId": e.exec_id,
        "marketUnit": "",
        "execQty": num(e.exec_qty),
    }
    if ws:
        # The private stream's rows carry category and execPnl (websocket/private/
        # execution.mdx); the REST list documents neither (order/execution.mdx).
        row["category"] = "linear"
        row["execPnl"] = num(e.exec_pnl)
    return row


def instrument_row(i: Instrument) -> JsonObject:
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
            "maxLeverage": fixed_num(i.max_leverage, 2),
            "leverageStep": "0.01",
        },
        "priceFilter": {
            "minPrice": format(i.tick_size, "f"),
            "maxPrice": fixed_num(i.default_mark * 100, i.price_scale),
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
        "settleCoin": i.settle_coin,
        "copyTrading": "both",
        "upperFundingRate": "0.005",
        "lowerFundingRate": "-0.005",
        "isPreListing": False,
        "preListingInfo": None,
        "riskParameters": {"priceLimitRatioX": "0.05", "priceLimitRatioY": "0.1"},
        "displayName": "",
    }


def ticker_row(i: Instrument, mark: Decimal) -> JsonObject:
    price = fixed_num(mark, i.price_scale)
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


def coin_row(b: CoinBalance) -> JsonObject:
    return {
        "availableToBorrow": "",
        "bonus": "0",
        "accruedInterest": "0",
        # Deprecated for unified accounts since 9 Jan 2025: "" in the Jan 2025 fixture.
        "availableToWithdraw": "",
        "totalOrderIM": "0",
        "equity": num(b.equity),
        "totalPositionMM": num(b.position_mm),
        "usdValue": num(b.usd_value),
        "unrealisedPnl": num(b.unrealised_pnl),
        "collateralSwitch": True,
        "spotHedgingQty": "0",
        "borrowAmount": "0.000000000000000000",
        "totalPositionIM": num(b.position_im),
        "walletBalance": num(b.wallet_balance),
        "cumRealisedPnl": num(b.cum_realised_pnl),
        "locked": "0",
        "marginCollateral": True,
        "coin": b.coin,
    }


def wallet_account(balances: Sequence[CoinBalance]) -> JsonObject:
    zero = Decimal(0)
    wallet = sum((b.wallet_balance * b.usd_price for b in balances), zero)
    upl = sum((b.unrealised_pnl * b.usd_price for b in balances), zero)
    initial = sum((b.position_im * b.usd_price for b in balances), zero)
    maintenance = sum((b.position_mm * b.usd_price for b in balances), zero)
    margin = wallet + upl
    pinned = [b.available * b.usd_price for b in balances if b.available is not None]
    available = sum(pinned, zero) if pinned else margin - initial
    return {
        "totalEquity": num(sum((b.usd_value for b in balances), zero)),
        "accountIMRate": fixed_num(initial / margin, 4) if margin > 0 else "0",
        "totalMarginBalance": num(margin),
        "totalInitialMargin": num(initial),
        "accountType": "UNIFIED",
        "totalAvailableBalance": num(available),
        "accountMMRate": fixed_num(maintenance / margin, 4) if margin > 0 else "0",
        "totalPerpUPL": num(upl),
        "totalWalletBalance": num(wallet),
        "accountLTV": "0",
        "totalMaintenanceMargin": num(maintenance),
        "coin": [coin_row(b) for b in balances],
    }


def envelope(
    result: Json, *, now_ms: int, code: int = 0, message: str = "OK", status: int = 200
) -> web.Response:
    """Bybit's response envelope: retCode, retMsg, result, retExtInfo, time."""
    body: JsonObject = {
        "retCode": code,
        "retMsg": message,
        "result": result,
        "retExtInfo": {},
        "time": now_ms,
    }
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")


def error_response(code: int, message: str, *, now_ms: int, status: int = 200) -> web.Response:
    """An error envelope with an empty result."""
    return envelope({}, now_ms=now_ms, code=code, message=message, status=status)
