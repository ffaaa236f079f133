"""Recorded Bybit responses, parsed by ccxt's own parsers, into exact ledger observations."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import ccxt
import pytest

from ledger.errors import ExchangeError
from ledger.exchange.observations import (
    MalformedResponse,
    balance_from_ccxt,
    closed_pnl_from_ccxt,
    funding_from_ccxt,
    market_key,
    position_from_ccxt,
    positions_from_ccxt,
)
from ledger.values import Side

# A copy of ../shared/fixtures/bybit (real Bybit responses recorded by ccxt's test suite, MIT).
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"


def cases(name: str) -> list[dict[str, Any]]:
    document = json.loads((FIXTURES / name).read_text())
    result: list[dict[str, Any]] = document["cases"]
    return result


def first_row(name: str) -> dict[str, Any]:
    row: dict[str, Any] = cases(name)[0]["httpResponse"]["result"]["list"][0]
    return row


def ms(text: str) -> datetime:
    return datetime.fromtimestamp(int(text) / 1000, tz=UTC)


@pytest.fixture
def bybit() -> ccxt.bybit:
    return ccxt.bybit()


def test_position_fixture_through_ccxt_parse_position(bybit: ccxt.bybit) -> None:
    row = first_row("fetchPositions.json")
    unified = bybit.parse_position(dict(row))
    observed = position_from_ccxt(unified)
    assert observed is not None
    assert observed.market_id == row["symbol"] == "LTCUSDT"
    assert observed.symbol == "LTC/USDT:USDT"
    assert observed.side is Side.BUY and unified["side"] == "long"
    assert observed.position_idx == int(row["positionIdx"])
    assert observed.qty == observed.contracts == Decimal(row["size"])
    assert observed.entry_price == Decimal(row["avgPrice"]) == Decimal("64.59947917")
    assert observed.mark_price == Decimal(row["markPrice"])
    assert observed.unrealized_pnl == Decimal(row["unrealisedPnl"])
    assert observed.initial_margin == Decimal(row["positionIM"])
    assert observed.leverage == Decimal(row["leverage"])
    assert observed.created_at == ms(row["createdTime"])
    assert observed.updated_at == ms(row["updatedTime"])
    assert observed.created_at.tzinfo is UTC
    # the exact strings, not ccxt's floats (which round-trip here but need not)
    assert isinstance(unified["contracts"], float)
    assert Decimal(repr(unified["contracts"])) == observed.qty


def test_balance_fixture_through_ccxt_parse_balance(bybit: ccxt.bybit) -> None:
    response = cases("fetchBalance.json")[0]["httpResponse"]
    unified = bybit.parse_balance(response)
    observed = balance_from_ccxt(unified, "USDT")
    coin = next(
        c for c in response["result"]["list"][0]["coin"] if c["coin"] == "USDT"
    )  # the USDT row
    assert observed.total == Decimal(coin["walletBalance"]) == Decimal("3322.25896609")
    # a unified account: Bybit's cross-margin free balance (USD, all collateral), not the
    # coin's deprecated availableToWithdraw (empty in this January 2025 fixture)
    assert coin["availableToWithdraw"] == ""
    account = response["result"]["list"][0]
    assert account["accountType"] == "UNIFIED"
    assert observed.available == Decimal(account["totalAvailableBalance"])
    classic = {**response, "result": {"list": [{**account, "accountType": "CONTRACT"}]}}
    used = (
        Decimal(coin["locked"]) + Decimal(coin["totalPositionIM"]) + Decimal(coin["totalOrderIM"])
    )
    fallback = balance_from_ccxt({"info": classic}, "USDT")
    assert fallback.available == Decimal(coin["walletBalance"]) - used
    assert observed.equity == Decimal(coin["equity"])
    assert observed.unrealized_pnl == Decimal(coin["unrealisedPnl"])
    assert observed.at == ms(response["time"])
    usdc = balance_from_ccxt(unified, "USDC")
    assert usdc.total == Decimal("5848.20013918")


def test_closed_pnl_fixture_through_the_positions_history_parser(bybit: ccxt.bybit) -> None:
    # fetch_positions_history runs parse_position over the closed-pnl rows
    row = first_row("fetchPositionsHistory.json")
    unified = bybit.parse_position(dict(row))
    observed = closed_pnl_from_ccxt(unified)
    assert observed.market_id == "BTCUSDT" and observed.symbol == "BTC/USDT:USDT"
    assert row["side"] == "Sell"  # the closing order's side ...
    assert observed.side is Side.BUY and unified["side"] == "long"  # ... closed a long
    assert observed.qty == Decimal(row["closedSize"])
    assert observed.entry_price == Decimal(row["avgEntryPrice"])
    assert observed.exit_price == Decimal(row["avgExitPrice"])
    assert observed.closed_pnl == Decimal(row["closedPnl"]) == Decimal("-0.43582528")
    assert observed.order_id == row["orderId"]
    assert observed.at == ms(row["updatedTime"])
    assert observed.leverage == Decimal(row["leverage"])
    assert observed.open_fee is None and observed.close_fee is None  # not in this recording


def test_execution_fixtures_through_ccxt_parse_trade(bybit: ccxt.bybit) -> None:
    parsed = []
    for case in cases("fetchMyTrades.json"):
        row = case["httpResponse"]["result"]["list"][0]
        parsed.append((row, funding_from_ccxt(bybit.parse_trade(dict(row)))))
    funding = [(row, obs) for row, obs in parsed if obs is not None]
    assert len(parsed) == 4 and len(funding) == 1  # three trades, one funding settlement
    row, observed = funding[0]
    assert observed is not None
    assert row["execType"] == "Funding"
    assert observed.exec_id == row["execId"]
    assert observed.market_id == "LTCUSDT" and observed.symbol == "LTC/USDT:USDT"
    assert observed.side is Side.BUY
    assert observed.amount == -Decimal(row["execFee"]) == Decimal("-0.00867")  # paid
    assert observed.qty == Decimal(row["execQty"])
    assert observed.at == ms(row["execTime"])


def unified_position(**changes: object) -> dict[str, Any]:
    row: dict[str, Any] = {**first_row("fetchPositions.json"), **changes}
    for name, value in changes.items():
        if value is None:
            del row[name]
    return {"info": row, "symbol": "LTC/USDT:USDT"}


@pytest.mark.parametrize(
    "field",
    [
        "symbol",
        "size",
        "side",
        "avgPrice",
        "markPrice",
        "positionIdx",
        "createdTime",
        "updatedTime",
    ],
)
def test_a_position_row_missing_a_field_names_it(field: str) -> None:
    with pytest.raises(MalformedResponse) as caught:
        position_from_ccxt(unified_position(**{field: None}))
    assert caught.value.field == field
    assert isinstance(caught.value, ExchangeError)
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", "1.2x"),
        ("size", "-1"),
        ("side", "Long"),
        ("avgPrice", "0"),
        ("markPrice", "NaN"),
        ("positionIdx", "7"),
        ("createdTime", "yesterday"),
        ("leverage", "-5"),
        ("unrealisedPnl", 7.8),  # a float: someone converted the exchange's string
    ],
)
def test_a_position_row_with_nonsense_names_the_field(field: str, value: object) -> None:
    with pytest.raises(MalformedResponse) as caught:
        position_from_ccxt(unified_position(**{field: value}))
    assert caught.value.field == field


def test_flat_rows_are_not_positions(bybit: ccxt.bybit) -> None:
    flat = {"size": "0", "side": "", "avgPrice": "0", "positionValue": ""}
    assert position_from_ccxt(unified_position(**flat)) is None
    rows = [unified_position(**flat), bybit.parse_position(first_row("fetchPositions.json"))]
    assert [o.market_id for o in positions_from_ccxt(rows)] == ["LTCUSDT"]


def test_websocket_rows_name_the_entry_price_entry_price() -> None:
    observed = position_from_ccxt(unified_position(avgPrice=None, entryPrice="64.5"))
    assert observed is not None and observed.entry_price == Decimal("64.5")


def test_optional_position_fields_may_be_empty() -> None:
    observed = position_from_ccxt(unified_position(positionIM="", leverage="", unrealisedPnl=""))
    assert observed is not None
    assert observed.initial_margin is None and observed.leverage is None
    assert observed.unrealized_pnl is None


def test_no_info_is_malformed() -> None:
    with pytest.raises(MalformedResponse) as caught:
        position_from_ccxt({"symbol": "LTC/USDT:USDT", "contracts": 1.2})
    assert caught.value.field == "info"


def balance_response(
    coin: Mapping[str, object] | None, account_type: str = "UNIFIED"
) -> dict[str, Any]:
    coins = [] if coin is None else [{"coin": "USDT", **coin}]
    return {
        "info": {
            "retCode": 0,
            "time": 1736866023302,
            "result": {"list": [{"accountType": account_type, "coin": coins}]},
        }
    }


def test_balance_prefers_available_to_withdraw_when_sent() -> None:
    observed = balance_from_ccxt(
        balance_response({"walletBalance": "100.5", "availableToWithdraw": "80.25"})
    )
    assert (observed.total, observed.available) == (Decimal("100.5"), Decimal("80.25"))


def test_balance_without_the_coin_is_zero_and_without_an_account_is_malformed() -> None:
    observed = balance_from_ccxt(balance_response(None))
    assert (observed.total, observed.available) == (Decimal(0), Decimal(0))
    with pytest.raises(MalformedResponse):
        balance_from_ccxt(balance_response(None, account_type="SPOT"))
    with pytest.raises(MalformedResponse) as caught:
        balance_from_ccxt(balance_response({"equity": "5"}))
    assert caught.value.field == "walletBalance"


@pytest.mark.parametrize("field", ["closedPnl", "avgExitPrice", "closedSize", "side", "orderId"])
def test_a_closed_pnl_row_missing_a_field_names_it(field: str) -> None:
    row = dict(first_row("fetchPositionsHistory.json"))
    del row[field]
    with pytest.raises(MalformedResponse) as caught:
        closed_pnl_from_ccxt({"info": row})
    assert caught.value.field == field


@pytest.mark.parametrize("field", ["execId", "execType", "execFee", "execTime", "side"])
def test_a_funding_row_missing_a_field_names_it(field: str) -> None:
    row = dict(cases("fetchMyTrades.json")[1]["httpResponse"]["result"]["list"][0])
    del row[field]
    with pytest.raises(MalformedResponse) as caught:
        funding_from_ccxt({"info": row})
    assert caught.value.field == field


@pytest.mark.parametrize("spelling", ["BTC/USDT:USDT", "BTC/USDT", "BTCUSDT", "btc/usdt:usdt"])
def test_market_key_accepts_every_common_spelling(spelling: str) -> None:
    assert market_key(spelling) == "BTCUSDT"
