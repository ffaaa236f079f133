"""Wire contract: the same assertions run on the recorded Bybit responses and on the emulator's.

The recorded responses (tests/fixtures/bybit, from ccxt's static tests) are the reference:
every assertion here passes on them first, so the emulator cannot drift from Bybit's
recorded format (field names, string vs number types, row shapes, cursor semantics) without
this file failing. Fields Bybit documents after the recordings (openTime, openFee/closeFee)
are optional here: when present they must have the documented type.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client

pytestmark = pytest.mark.anyio

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "bybit"

Json = Any  # parsed JSON
Check = Callable[[object], bool]

_DECIMAL = re.compile(r"-?\d+(\.\d+)?")
_DIGITS = re.compile(r"-?\d+")


def dec(value: object) -> bool:
    """A number as Bybit's strings write it: plain notation, never a JSON number."""
    return isinstance(value, str) and _DECIMAL.fullmatch(value) is not None


def dec_or_empty(value: object) -> bool:
    return value == "" or dec(value)


def ms(value: object) -> bool:
    """A millisecond timestamp as a string of 13 digits."""
    return isinstance(value, str) and re.fullmatch(r"\d{13}", value) is not None


def ms_or_empty(value: object) -> bool:
    return value == "" or ms(value)


def integer(value: object) -> bool:
    """Docs type these integer; the recordings hold them as digit strings: both are Bybit."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (isinstance(value, str) and bool(_DIGITS.fullmatch(value)))


def text(value: object) -> bool:
    return isinstance(value, str)


def nonempty(value: object) -> bool:
    return isinstance(value, str) and value != ""


def boolean(value: object) -> bool:
    return isinstance(value, bool)


def one_of(*allowed: str) -> Check:
    return lambda value: value in allowed


POSITION: dict[str, Check] = {
    "symbol": nonempty, "leverage": dec, "autoAddMargin": integer, "avgPrice": dec,
    "liqPrice": dec_or_empty, "riskLimitValue": dec, "takeProfit": dec_or_empty,
    "positionValue": dec_or_empty, "isReduceOnly": boolean, "tpslMode": text,
    "riskId": integer, "trailingStop": dec, "unrealisedPnl": dec, "markPrice": dec,
    "adlRankIndicator": integer, "cumRealisedPnl": dec, "positionMM": dec, "createdTime": ms,
    "positionIdx": integer, "positionIM": dec, "seq": integer, "updatedTime": ms,
    "side": one_of("Buy", "Sell", ""), "bustPrice": dec_or_empty, "positionBalance": dec,
    "leverageSysUpdatedTime": ms_or_empty, "size": dec,
    "positionStatus": one_of("Normal", "Liq", "Adl"), "mmrSysUpdatedTime": ms_or_empty,
    "stopLoss": dec_or_empty, "tradeMode": integer,
}  # fmt: skip
# in position.mdx, not in the recording: openTime (April 2026), curRealisedPnl, sessionAvgPrice
POSITION_LATER: dict[str, Check] = {
    "openTime": integer,
    "curRealisedPnl": dec,
    "sessionAvgPrice": dec_or_empty,
}

CLOSED_PNL: dict[str, Check] = {
    "symbol": nonempty, "orderType": one_of("Market", "Limit"), "leverage": dec,
    "updatedTime": ms, "side": one_of("Buy", "Sell"), "orderId": nonempty, "closedPnl": dec,
    "avgEntryPrice": dec, "qty": dec, "cumEntryValue": dec, "createdTime": ms,
    "orderPrice": dec, "closedSize": dec, "avgExitPrice": dec, "execType": text,
    "fillCount": integer, "cumExitValue": dec,
}  # fmt: skip
CLOSED_PNL_LATER: dict[str, Check] = {"openFee": dec, "closeFee": dec}  # close-pnl.mdx, 2025

EXECUTION: dict[str, Check] = {
    "symbol": nonempty, "orderType": text, "underlyingPrice": dec_or_empty,
    "orderLinkId": text, "orderId": nonempty, "stopOrderType": text, "execTime": ms,
    "feeRate": dec, "tradeIv": dec_or_empty, "blockTradeId": text, "markPrice": dec_or_empty,
    "execPrice": dec, "markIv": dec_or_empty, "orderQty": dec, "orderPrice": dec,
    "execValue": dec, "closedSize": dec_or_empty, "execType": one_of("Trade", "Funding"),
    "seq": integer, "side": one_of("Buy", "Sell"), "indexPrice": dec_or_empty,
    "leavesQty": dec, "isMaker": boolean, "execFee": dec, "execId": nonempty, "execQty": dec,
}  # fmt: skip
# in the newer recordings or execution.mdx, not in every recorded row
EXECUTION_LATER: dict[str, Check] = {
    "feeCurrency": text,
    "createType": text,
    "marketUnit": text,
}

ACCOUNT: dict[str, Check] = {
    "totalEquity": dec, "accountIMRate": dec, "totalMarginBalance": dec,
    "totalInitialMargin": dec, "accountType": one_of("UNIFIED"),
    "totalAvailableBalance": dec, "accountMMRate": dec, "totalPerpUPL": dec,
    "totalWalletBalance": dec, "accountLTV": dec, "totalMaintenanceMargin": dec,
    "coin": lambda value: isinstance(value, list) and len(value) > 0,
}  # fmt: skip
COIN: dict[str, Check] = {
    "availableToBorrow": dec_or_empty, "bonus": dec, "accruedInterest": dec,
    # deprecated for unified accounts from 9 Jan 2025 (wallet-balance.mdx): "" since
    "availableToWithdraw": one_of(""),
    "totalOrderIM": dec, "equity": dec, "totalPositionMM": dec, "usdValue": dec,
    "unrealisedPnl": dec, "collateralSwitch": boolean, "spotHedgingQty": dec,
    "borrowAmount": dec, "totalPositionIM": dec, "walletBalance": dec,
    "cumRealisedPnl": dec, "locked": dec, "marginCollateral": boolean, "coin": nonempty,
}  # fmt: skip

# The recordings carry a nextPageCursor inside the first row: ccxt copied it there
# (add_pagination_cursor_to_result) before recording; Bybit never sends it in rows.
_CCXT_ADDED = {"nextPageCursor"}


def check_row(row: dict[str, object], spec: dict[str, Check], later: dict[str, Check]) -> None:
    missing = set(spec) - set(row)
    assert not missing, f"missing fields {sorted(missing)}"
    bad = {
        name: row[name]
        for name, check in {**spec, **later}.items()
        if name in row and not check(row[name])
    }
    assert not bad, f"fields of the wrong type or value: {bad}"
    unknown = set(row) - set(spec) - set(later) - _CCXT_ADDED
    assert not unknown, f"fields neither recorded nor documented {sorted(unknown)}"


def check_envelope(response: Json) -> None:
    assert set(response) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert integer(response["retCode"]) and int(response["retCode"]) == 0
    assert response["retMsg"] == "OK" and response["retExtInfo"] == {}
    assert integer(response["time"]) and len(str(response["time"])) == 13


def check_page(response: Json) -> list[dict[str, object]]:
    """A paged linear list; a page with rows carries a non-empty cursor, the last one too."""
    result = response["result"]
    assert result["category"] == "linear" and isinstance(result["list"], list)
    assert isinstance(result["nextPageCursor"], str)
    if result["list"]:
        assert result["nextPageCursor"] != ""
    rows: list[dict[str, object]] = result["list"]
    return rows


# -- the two sources ----------------------------------------------------------------------
Responses = dict[str, list[Json]]


def recorded() -> Responses:
    def cases(name: str) -> list[Json]:
        data = json.loads((FIXTURES / f"{name}.json").read_text())
        return [case["httpResponse"] for case in data["cases"]]

    return {
        "positions": cases("fetchPositions"),
        "closed_pnl": cases("fetchPositionsHistory"),
        # the emulator serves linear perps only: the spot cases are another market's shape
        "executions": [r for r in cases("fetchMyTrades") if r["result"]["category"] == "linear"],
        "wallet": cases("fetchBalance"),
    }


async def emulated() -> Responses:
    """The emulator's answers to the same requests, over a history that has every row shape:
    open, flat and USDC slots, closes with and without fees, Trade and Funding executions."""
    async with BybitEmulator(api_key="k", api_secret="s") as ex:
        client = make_ccxt_client(ex, api_key="k", secret="s")
        client.enableRateLimit = False
        try:
            ex.open_position("LTC/USDT:USDT", "buy", "1.2", "64.5", leverage=6)
            ex.pay_funding("LTCUSDT", "buy", "-0.00867")
            ex.reduce_position("LTCUSDT", "buy", "0.2", "70")
            ex.set_closed_pnl_fees(False)
            ex.open_position("BTC/USDC:USDC", "sell", "0.01", "60000")
            ex.close_position("BTC/USDC:USDC", "sell", "59000")
            ex.open_position("BTC/USDT:USDT", "buy", "0.001", "55937.5")
            ex.set_mark_price("LTCUSDT", "71.1")
            linear = {"category": "linear"}
            get = client.private_get_v5_position_list
            return {
                "positions": [
                    await get({**linear, "symbol": "LTCUSDT"}),
                    await get({**linear, "symbol": "BTCPERP"}),  # a flat slot
                    await get({**linear, "settleCoin": "USDT"}),
                ],
                "closed_pnl": [await client.private_get_v5_position_closed_pnl(linear)],
                "executions": [
                    await client.private_get_v5_execution_list(linear),
                    await client.private_get_v5_execution_list({**linear, "execType": "Funding"}),
                ],
                "wallet": [
                    await client.private_get_v5_account_wallet_balance({"accountType": "UNIFIED"})
                ],
            }
        finally:
            await client.close()


@pytest.fixture(params=["recorded", "emulator"])
async def responses(request: pytest.FixtureRequest) -> AsyncIterator[Responses]:
    yield recorded() if request.param == "recorded" else await emulated()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# -- the contract ---------------------------------------------------------------------------
async def test_envelope(responses: Responses) -> None:
    for group in responses.values():
        for response in group:
            check_envelope(response)


async def test_position_rows(responses: Responses) -> None:
    rows = [row for r in responses["positions"] for row in check_page(r)]
    assert rows
    for row in rows:
        check_row(row, POSITION, POSITION_LATER)
        # a flat slot is a zero-size row with side "" and no position value
        assert (row["size"] == "0") == (row["side"] == "") == (row["positionValue"] == "")
        assert int(str(row["createdTime"])) <= int(str(row["updatedTime"]))


async def test_closed_pnl_rows(responses: Responses) -> None:
    rows = [row for r in responses["closed_pnl"] for row in check_page(r)]
    assert rows
    for row in rows:
        check_row(row, CLOSED_PNL, CLOSED_PNL_LATER)
        assert ("openFee" in row) == ("closeFee" in row)
        assert int(str(row["createdTime"])) <= int(str(row["updatedTime"]))
    stamps = [int(str(row["createdTime"])) for row in rows]
    assert stamps == sorted(stamps, reverse=True)  # newest first


async def test_execution_rows(responses: Responses) -> None:
    pages = [check_page(r) for r in responses["executions"]]
    rows = [row for page in pages for row in page]
    assert {row["execType"] for row in rows} == {"Trade", "Funding"}
    for page in pages:
        times = [int(str(row["execTime"])) for row in page]
        assert times == sorted(times, reverse=True)
    for row in rows:
        check_row(row, EXECUTION, EXECUTION_LATER)
        if row["execType"] == "Funding":  # funding: no order, no closed size
            assert (row["orderType"], row["orderQty"], row["closedSize"]) == ("UNKNOWN", "0", "0")


async def test_wallet_rows(responses: Responses) -> None:
    for response in responses["wallet"]:
        [account] = response["result"]["list"]
        check_row(account, ACCOUNT, {})
        for coin in account["coin"]:
            check_row(coin, COIN, {})


async def test_the_emulator_ends_paging_with_an_empty_page() -> None:
    """What the recordings cannot show: after the last page's cursor comes an empty page."""
    async with BybitEmulator() as ex:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        try:
            ex.open_position("LTC/USDT:USDT", "buy", "1.2", "64.5")
            params = {"category": "linear", "settleCoin": "USDT"}
            first = await client.private_get_v5_position_list(params)
            assert len(check_page(first)) == 1
            cursor = first["result"]["nextPageCursor"]
            last = await client.private_get_v5_position_list({**params, "cursor": cursor})
            assert last["result"]["list"] == [] and last["result"]["nextPageCursor"] == ""
        finally:
            await client.close()
