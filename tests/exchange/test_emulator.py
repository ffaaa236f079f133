"""The Bybit V5 emulator, driven through unmodified ccxt (REST and pro) and raw HTTP/WS."""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import time
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from ccxt.base.errors import (
    AuthenticationError,
    BadRequest,
    ExchangeError,
    ExchangeNotAvailable,
    InvalidNonce,
    NetworkError,
    NoChange,
    RateLimitExceeded,
    RequestTimeout,
)

from ledger.exchange.emulator import INSTRUMENTS, BybitEmulator, FaultKind
from ledger.exchange.emulator.client import make_ccxt_client

pytestmark = pytest.mark.anyio

BTC = "BTC/USDT:USDT"
DAY_MS = 24 * 3600 * 1000
Client = Any  # ccxt ships no type information
MakeClient = Callable[..., Client]


class FakeClock:
    def __init__(self, now_ms: int) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def ex() -> AsyncIterator[BybitEmulator]:
    async with BybitEmulator(timeout_fault_seconds=10) as emulator:
        yield emulator


@pytest.fixture
async def connect(ex: BybitEmulator) -> AsyncIterator[MakeClient]:
    made: list[Client] = []

    def make(emulator: BybitEmulator | None = None, **options: Any) -> Client:
        client = make_ccxt_client(emulator or ex, **options)
        # ccxt's throttle would add ~100 ms a call; the emulator has no limit to respect.
        client.enableRateLimit = False
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def _warm(client: Client) -> None:
    """Load markets and the unified-account probe so later faults hit the call under test."""
    await client.load_markets()
    await client.fetch_balance()


def _requests(ex: BybitEmulator, path: str) -> list[dict[str, str]]:
    return [dict(r.params) for r in ex.requests if r.path == path]


# -- load_markets ---------------------------------------------------------------------
async def test_default_load_markets_asks_every_category(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect(trim_markets=False)
    markets = await client.load_markets()
    assert set(markets) == {i.ccxt_symbol for i in INSTRUMENTS}
    asked = _requests(ex, "/v5/market/instruments-info")
    assert {r["category"] for r in asked} == {"spot", "linear", "inverse", "option"}
    assert {r["baseCoin"] for r in asked if r["category"] == "option"} >= {"BTC", "ETH", "SOL"}
    assert {"category": "linear", "limit": "1000", "status": "PreLaunch"} in asked
    assert _requests(ex, "/v5/asset/coin/query-info") == [{}]
    assert client.currencies["USDT"]["id"] == "USDT"
    assert ex.unhandled == []


async def test_trimmed_load_markets_asks_linear_only(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    markets = await client.load_markets()
    btc = markets[BTC]
    assert (btc["id"], btc["swap"], btc["linear"], btc["settle"]) == ("BTCUSDT", True, True, "USDT")
    assert btc["precision"]["amount"] == 0.001
    assert btc["limits"]["leverage"]["max"] == 100
    assert {r["category"] for r in _requests(ex, "/v5/market/instruments-info")} == {"linear"}
    assert _requests(ex, "/v5/asset/coin/query-info") == []


async def test_instruments_info_pages_through_cursor(connect: MakeClient) -> None:
    client = connect()
    symbols: list[str] = []
    cursor = ""
    for _ in range(10):
        params = {"category": "linear", "limit": "3", **({"cursor": cursor} if cursor else {})}
        result = (await client.public_get_v5_market_instruments_info(params))["result"]
        symbols += [row["symbol"] for row in result["list"]]
        cursor = result["nextPageCursor"]
        if not cursor:
            break
    assert symbols == sorted(i.symbol for i in INSTRUMENTS)


# -- positions ------------------------------------------------------------------------
async def test_positions_follow_open_add_reduce_close(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    ex.open_position(BTC, "buy", "0.01", 60000)
    ex.open_position("BTCUSDT", "buy", "0.03", 62000)
    [position] = await client.fetch_positions()
    assert (position["symbol"], position["side"], position["hedged"]) == (BTC, "long", False)
    assert (position["info"]["size"], position["info"]["avgPrice"]) == ("0.04", "61500")

    ex.set_mark_price(BTC, 63000)
    [position] = await client.fetch_positions()
    assert position["info"]["unrealisedPnl"] == "60"
    assert position["info"]["positionValue"] == "2460"  # at entry, as Bybit reports it
    assert position["markPrice"] == 63000

    reduced = ex.reduce_position(BTC, "buy", "0.01", 63000)
    # gross 15, closing fee 0.3465, a quarter of the 1.353 opening fees
    assert reduced.closed_pnl == Decimal("14.31525")
    [position] = await client.fetch_positions([BTC])
    assert position["contracts"] == 0.03
    assert position["info"]["avgPrice"] == "61500"

    closed = ex.close_position(BTC, "long", 61000)
    assert closed.closed_size == Decimal("0.03")
    assert await client.fetch_positions() == []
    [flat] = await client.fetch_positions([BTC])  # a symbol query lists the flat slot
    assert (flat["contracts"], flat["side"], flat["info"]["side"]) == (0, None, "")
    expected_realised = Decimal("14.31525") + closed.closed_pnl
    assert Decimal(flat["info"]["cumRealisedPnl"]) == expected_realised


async def test_hedge_mode_holds_two_positions_on_one_symbol(connect: MakeClient) -> None:
    async with BybitEmulator(hedge_mode=True) as hedged:
        client = connect(hedged)
        hedged.open_position(BTC, "buy", "0.1", 60000)
        hedged.open_position(BTC, "sell", "0.2", 61000, leverage=5)
        positions = {p["side"]: p for p in await client.fetch_positions()}
        assert set(positions) == {"long", "short"}
        assert positions["long"]["info"]["positionIdx"] == 1
        assert positions["short"]["info"]["positionIdx"] == 2
        assert (positions["short"]["contracts"], positions["short"]["leverage"]) == (0.2, 5)
        assert all(p["hedged"] for p in positions.values())

        hedged.close_position(BTC, "sell", 60000)
        [long_position] = await client.fetch_positions()
        assert long_position["side"] == "long"
        assert len(await client.fetch_positions([BTC])) == 2  # both slots, one flat


async def test_one_way_mode_refuses_an_opposite_open(ex: BybitEmulator) -> None:
    ex.open_position(BTC, "buy", 1, 100)
    with pytest.raises(ValueError, match="one-way"):
        ex.open_position(BTC, "sell", 1, 100)
    with pytest.raises(ValueError, match="positionIdx"):
        ex.open_position(BTC, "buy", 1, 100, position_idx=1)
    with pytest.raises(ValueError, match="open positions"):
        ex.set_hedge_mode(True)
    with pytest.raises(ValueError, match="cannot reduce"):
        ex.reduce_position(BTC, "buy", 2, 100)
    with pytest.raises(ValueError, match="unknown symbol"):
        ex.open_position("FOO/USDT:USDT", "buy", 1, 1)
    with pytest.raises(ValueError, match="fault kind"):
        ex.inject_fault("boom")  # type: ignore[arg-type]


async def test_leverage_and_position_mode_through_ccxt(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    await client.load_markets()
    await client.set_leverage(5, BTC)
    with pytest.raises(BadRequest):  # Bybit's 110043, leverage not modified
        await client.set_leverage(5, BTC)
    ex.open_position(BTC, "buy", 1, 100)
    assert (await client.fetch_position(BTC))["leverage"] == 5
    with pytest.raises(NoChange):  # 110025: no mode switch with a position open
        await client.set_position_mode(True, BTC)
    ex.close_position(BTC, "buy", 100)
    await client.set_position_mode(True, BTC)
    assert ex.state.hedge_mode
    assert await client.fetch_open_orders(BTC) == []


USDT_PERPS = [i for i in INSTRUMENTS if i.settle_coin == "USDT"]


async def test_position_list_pages_by_cursor(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    for instrument in INSTRUMENTS:
        ex.open_position(instrument.symbol, "buy", instrument.min_qty, instrument.default_mark)
    pages: list[list[str]] = []
    cursor = ""
    for _ in range(10):
        params = {"category": "linear", "settleCoin": "USDT", "limit": "3"}
        result = (await client.private_get_v5_position_list({**params, "cursor": cursor}))["result"]
        pages.append([row["symbol"] for row in result["list"]])
        cursor = result["nextPageCursor"]
        if not cursor:
            break
    # The last page still carries a cursor (position.mdx, the recorded fixture): the end is
    # the empty page after it.
    assert [len(page) for page in pages] == [3, 3, 2, 0]
    assert [symbol for page in pages for symbol in page] == sorted(i.symbol for i in USDT_PERPS)
    # ccxt's own cursor pagination walks the same pages
    paginated = await client.fetch_positions(None, {"paginate": True, "limit": 3})
    assert sorted(p["symbol"] for p in paginated) == sorted(i.ccxt_symbol for i in USDT_PERPS)


# -- balance, history, funding --------------------------------------------------------
async def test_fetch_balance_reflects_set_balance_and_margin(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    ex.set_balance(5000, available=4000)
    balance = await client.fetch_balance()
    account = balance["info"]["result"]["list"][0]
    # Unified accounts: totalAvailableBalance; availableToWithdraw deprecated, "" (Jan 2025)
    assert account["totalAvailableBalance"] == "4000"
    assert account["coin"][0]["availableToWithdraw"] == ""
    assert balance["USDT"]["total"] == 5000

    ex.set_balance(5000)
    ex.open_position(BTC, "buy", "0.1", 60000, leverage=10)
    balance = await client.fetch_balance()
    fee = Decimal("3.3")  # 0.1 x 60000 x 0.00055
    assert Decimal(str(balance["USDT"]["total"])) == 5000 - fee
    assert balance["USDT"]["used"] == 600  # the position's initial margin
    account = balance["info"]["result"]["list"][0]
    assert account["accountType"] == "UNIFIED"
    assert _requests(ex, "/v5/account/wallet-balance")[-1] == {"accountType": "UNIFIED"}


async def test_positions_history_after_manual_close(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    ex.open_position(BTC, "buy", "0.002", 50000)
    record = ex.close_position(BTC, "buy", 51000)
    [history] = await client.fetch_positions_history([BTC])
    info = history["info"]
    assert info["orderId"] == record.order_id
    assert (info["side"], history["side"]) == ("Sell", "long")
    assert (info["avgEntryPrice"], info["avgExitPrice"], info["closedSize"]) == (
        "50000",
        "51000",
        "0.002",
    )
    assert Decimal(info["closedPnl"]) == record.closed_pnl == Decimal("1.8889")
    assert info["createdTime"] == info["updatedTime"] == str(record.created_ms)  # no delay
    assert history["realizedPnl"] == float(record.closed_pnl)


async def test_closed_pnl_honours_the_seven_day_window(connect: MakeClient) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock) as emulator:
        client = connect(emulator)
        emulator.open_position(BTC, "buy", 1, 100)
        old = emulator.reduce_position(BTC, "buy", "0.5", 110)
        clock.now_ms += 8 * DAY_MS
        new = emulator.close_position(BTC, "buy", 120)
        recent = await client.private_get_v5_position_closed_pnl({"category": "linear"})
        assert [r["orderId"] for r in recent["result"]["list"]] == [new.order_id]
        since = {"category": "linear", "startTime": str(old.created_ms)}
        early = await client.private_get_v5_position_closed_pnl(since)
        assert [r["orderId"] for r in early["result"]["list"]] == [old.order_id]
        with pytest.raises(ExchangeError, match="7 days"):
            await client.private_get_v5_position_closed_pnl({**since, "endTime": str(clock.now_ms)})


async def test_funding_rows_in_the_execution_list(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    ex.open_position(BTC, "buy", "0.5", 60000)
    first = ex.pay_funding(BTC, "buy", "-1.5")
    second = ex.pay_funding(BTC, "long", "0.25")
    raw = await client.private_get_v5_execution_list({"category": "linear", "execType": "Funding"})
    rows = raw["result"]["list"]
    assert [r["execId"] for r in rows] == [second.exec_id, first.exec_id]  # newest first
    assert [r["execFee"] for r in rows] == ["-0.25", "1.5"]
    assert {r["execType"] for r in rows} == {"Funding"}

    funding = await client.fetch_funding_history(BTC)
    assert sorted(f["amount"] for f in funding) == [-0.25, 1.5]
    assert _requests(ex, "/v5/execution/list")[-1]["execType"] == "Funding"

    trades = await client.fetch_my_trades(BTC)  # ccxt asks for execType=Trade only
    assert [t["side"] for t in trades] == ["buy"]

    [position] = await client.fetch_positions()
    opening_fee = Decimal("16.5")  # 0.5 x 60000 x 0.00055
    assert Decimal(position["info"]["cumRealisedPnl"]) == -opening_fee - Decimal("1.25")


async def test_history_endpoints_page_by_cursor(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    ex.open_position(BTC, "buy", 7, 100)
    for step in range(7):
        ex.reduce_position(BTC, "buy", 1, 100 + step)
    for path, call, total in (
        ("closed-pnl", client.private_get_v5_position_closed_pnl, 7),
        ("execution", client.private_get_v5_execution_list, 8),
    ):
        ids: list[str] = []
        cursor = ""
        for _ in range(10):
            page = (await call({"category": "linear", "limit": 3, "cursor": cursor}))["result"]
            assert len(page["list"]) <= 3
            ids += [row["orderId"] for row in page["list"]]
            cursor = page["nextPageCursor"]
            if not cursor:
                break
        assert len(ids) == len(set(ids)) == total, path


# -- faults and authentication --------------------------------------------------------
@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("timeout", RequestTimeout),
        ("http_500", ExchangeNotAvailable),
        ("http_503", ExchangeNotAvailable),
        ("rate_limit", RateLimitExceeded),
        ("invalid_key", AuthenticationError),
        ("empty_with_error", ExchangeError),
    ],
)
async def test_fault_maps_to_ccxt_exception(
    ex: BybitEmulator, connect: MakeClient, kind: FaultKind, error: type[Exception]
) -> None:
    client = connect()
    await _warm(client)
    client.timeout = 300  # ms; the "timeout" fault holds the response for 10 s
    ex.open_position(BTC, "buy", 1, 100)
    ex.inject_fault(kind)
    with anyio.fail_after(5), pytest.raises(error):
        await client.fetch_positions()
    [position] = await client.fetch_positions()  # the fault was used up
    assert position["contracts"] == 1


async def test_malformed_json_passes_through_ccxt_silently(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    await _warm(client)
    ex.open_position(BTC, "buy", 1, 100)
    ex.inject_fault("malformed_json", count=2)
    # ccxt hands the undecodable text on as the response; bybit then finds no rows.
    assert await client.fetch_positions() == []
    balance = await client.fetch_balance()
    assert isinstance(balance["info"], str)
    assert "USDT" not in balance
    assert len(await client.fetch_positions()) == 1


async def test_missing_fields_leave_ccxt_values_empty(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    await _warm(client)
    ex.open_position(BTC, "buy", 1, 100)
    ex.inject_fault("missing_fields")
    [position] = await client.fetch_positions()
    assert (position["contracts"], position["side"], position["entryPrice"]) == (None, None, None)
    assert "size" not in position["info"]


async def test_fault_limited_to_a_path(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    await _warm(client)
    ex.inject_fault("http_503", count=2, path="/v5/market/tickers")
    assert await client.fetch_positions() == []
    for _ in range(2):
        with pytest.raises(ExchangeNotAvailable):
            await client.fetch_ticker(BTC)
    assert (await client.fetch_ticker(BTC))["last"] == 60000


async def test_missing_api_key_is_refused(ex: BybitEmulator, connect: MakeClient) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{ex.url}/v5/position/list?category=linear&settleCoin=USDT") as response,
    ):
        body = json.loads(await response.text())
    assert (response.status, body["retCode"], body["retMsg"]) == (401, 10003, "API key is invalid.")

    client = connect()
    await client.load_markets()
    sign = client.sign

    def sign_without_key(*args: Any, **kwargs: Any) -> Any:
        request = sign(*args, **kwargs)
        request["headers"].pop("X-BAPI-API-KEY")
        return request

    client.sign = sign_without_key
    with pytest.raises(AuthenticationError):
        await client.fetch_positions()


async def test_a_key_the_emulator_does_not_know_is_refused(connect: MakeClient) -> None:
    async with BybitEmulator(api_key="right-key") as emulator:
        with pytest.raises(AuthenticationError):
            await connect(emulator, api_key="wrong-key").fetch_balance()
        assert (await connect(emulator, api_key="right-key").fetch_balance())["USDT"]["total"] == (
            10000
        )


# -- websocket ------------------------------------------------------------------------
def _ws_auth_args(key: str = "key", secret: str = "secret", ahead_ms: int = 10_000) -> list[str]:
    """ccxt.pro's auth args: [key, expires, HMAC-SHA256(secret, "GET/realtime" + expires)]."""
    expires = str(int(time.time() * 1000) + ahead_ms)
    signature = hmac.new(secret.encode(), f"GET/realtime{expires}".encode(), "sha256")
    return [key, expires, signature.hexdigest()]


async def _next_positions(client: Client) -> asyncio.Task[Any]:
    """Start watch_positions and return once ccxt waits on the 'positions' update."""
    task: asyncio.Task[Any] = asyncio.ensure_future(client.watch_positions())
    with anyio.fail_after(5):
        while not task.done() and not any(
            "positions" in c.futures for c in client.clients.values()
        ):
            await asyncio.sleep(0)
    return task


async def test_watch_positions_sees_order_actions_but_not_marks(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect(pro=True)
    ex.open_position(BTC, "buy", 1, 100)
    snapshot = await asyncio.wait_for(client.watch_positions(), 5)
    assert [(p["symbol"], p["contracts"]) for p in snapshot] == [(BTC, 1)]

    update = await _next_positions(client)
    await ex.wait_for_subscribers("position")
    ex.set_mark_price(BTC, 110)  # no position push for a mark move ...
    ex.set_trading_stop(BTC, "buy", take_profit=130)  # ... but one for an amend
    [amended] = await asyncio.wait_for(update, 5)
    assert (amended["markPrice"], amended["unrealizedPnl"], amended["entryPrice"]) == (110, 10, 100)
    assert amended["takeProfitPrice"] == 130

    update = await _next_positions(client)
    ex.close_position(BTC, "buy", 120)
    [flat] = await asyncio.wait_for(update, 5)
    assert (flat["symbol"], flat["contracts"], flat["info"]["side"]) == (BTC, 0, "")


async def test_an_order_action_pushes_the_position_several_times(ex: BybitEmulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{ex.ws_url}/v5/private") as ws,
    ):
        await ws.send_json({"op": "auth", "args": _ws_auth_args()})
        await ws.receive_json(timeout=5)
        await ws.send_json({"op": "subscribe", "args": ["position"]})
        await ws.receive_json(timeout=5)
        ex.open_position(BTC, "buy", 1, 100)  # create + fill: two pushes
        ex.set_mark_price(BTC, 101)  # none
        ex.set_trading_stop(BTC, "buy", take_profit=150, stop_loss=90)  # amend: one
        ex.close_position(BTC, "buy", 105)  # create + fill + 2 TP/SL cancels: four, flat
        ex.open_position(BTC, "buy", 2, 100)  # a marker: the pushes before it are all there
        sizes: list[str] = []
        while len(sizes) < 9:
            message = await ws.receive_json(timeout=5)
            sizes += [row["size"] for row in message["data"]]
    assert sizes == ["1", "1", "1", "0", "0", "0", "0", "2", "2"]


async def test_watch_ticker_carries_the_mark(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect(pro=True)
    await client.load_markets()
    first = asyncio.ensure_future(client.watch_ticker(BTC))
    await ex.wait_for_subscribers("tickers.BTCUSDT")
    ex.set_mark_price(BTC, 61234.5)
    ticker = await asyncio.wait_for(first, 5)
    assert ticker["markPrice"] == 61234.5 and ticker["info"]["markPrice"] == "61234.5"
    many = asyncio.ensure_future(client.watch_tickers([BTC, "BTC/USDC:USDC"]))
    await ex.wait_for_subscribers("tickers.BTCPERP")
    ex.set_mark_price("BTC/USDC:USDC", 61240)
    tickers = await asyncio.wait_for(many, 5)
    assert tickers["BTC/USDC:USDC"]["markPrice"] == 61240


async def test_watch_positions_reconnects_after_drop(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect(pro=True)
    await asyncio.wait_for(client.watch_positions(), 5)
    update = await _next_positions(client)
    await ex.wait_for_subscribers("position")
    assert ex.drop_websockets() == 1
    with pytest.raises(NetworkError):
        await asyncio.wait_for(update, 5)
    assert ex.subscribers("position") == 0

    update = await _next_positions(client)
    await ex.wait_for_subscribers("position")
    ex.open_position("ETH/USDT:USDT", "sell", 2, 3000)
    [opened] = await asyncio.wait_for(update, 5)
    assert (opened["symbol"], opened["side"], opened["contracts"]) == ("ETH/USDT:USDT", "short", 2)


async def test_private_stream_protocol(ex: BybitEmulator) -> None:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"{ex.ws_url}/v5/private") as ws,
    ):
        await ws.send_json({"op": "subscribe", "req_id": "1", "args": ["position"]})
        refused = await ws.receive_json(timeout=5)
        assert (refused["success"], refused["ret_msg"]) == (False, "Request not authorized")
        await ws.send_json({"op": "auth", "args": _ws_auth_args()})
        assert (await ws.receive_json(timeout=5))["success"] is True
        await ws.send_json({"op": "ping", "req_id": "7"})
        pong = await ws.receive_json(timeout=5)
        assert (pong["op"], pong["req_id"]) == ("pong", "7")
        await ws.send_json({"op": "subscribe", "req_id": "2", "args": ["position", "execution"]})
        assert (await ws.receive_json(timeout=5))["success"] is True
        ex.open_position(BTC, "buy", 1, 100)
        position = await ws.receive_json(timeout=5)
        assert (await ws.receive_json(timeout=5))["topic"] == "position"  # order create + fill
        execution = await ws.receive_json(timeout=5)
        assert (position["topic"], position["data"][0]["entryPrice"]) == ("position", "100")
        assert (execution["topic"], execution["data"][0]["execType"]) == ("execution", "Trade")


# -- documented behaviours (docs/emulator.md cites the Bybit doc or fixture of each) -------
USDC_BTC = "BTC/USDC:USDC"
YEAR_MS = 365 * DAY_MS


async def test_created_time_is_the_slots_first_position_open_time_the_current(
    connect: MakeClient,
) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock) as emulator:
        client = connect(emulator)
        await client.set_leverage(5, BTC)  # touches the slot; no position yet
        clock.now_ms += 60_000
        first_open = clock.now_ms
        emulator.open_position(BTC, "buy", 1, 100)
        clock.now_ms += 60_000
        emulator.close_position(BTC, "buy", 101)
        [flat] = await _position_rows(client, "BTCUSDT")
        assert (flat["createdTime"], flat["openTime"], flat["side"]) == (str(first_open), 0, "")
        clock.now_ms += 60_000
        emulator.open_position(BTC, "sell", 2, 100)  # a new position: createdTime stays
        [row] = await _position_rows(client, "BTCUSDT")
        assert (row["createdTime"], row["openTime"]) == (str(first_open), clock.now_ms)
        assert isinstance(row["openTime"], int) and isinstance(row["createdTime"], str)

        emulator.set_created_time("ETHUSDT", clock.now_ms - 3 * YEAR_MS)  # an old symbol
        emulator.open_position("ETH/USDT:USDT", "buy", 1, 3000)
        [eth] = await _position_rows(client, "ETHUSDT")
        assert int(eth["createdTime"]) == clock.now_ms - 3 * YEAR_MS
        assert eth["openTime"] == clock.now_ms


async def _position_rows(client: Client, symbol: str) -> list[dict[str, Any]]:
    params = {"category": "linear", "symbol": symbol}
    rows: list[dict[str, Any]] = (await client.private_get_v5_position_list(params))["result"][
        "list"
    ]
    return rows


async def test_a_flip_closes_with_a_record_and_opens_anew(connect: MakeClient) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock) as emulator:
        client = connect(emulator)
        emulator.open_position("LTC/USDT:USDT", "buy", 2, 80)
        opened = clock.now_ms
        clock.now_ms += 1000
        record, position = emulator.flip_position("LTC/USDT:USDT", "sell", 3, 85)
        assert (record.side, record.closed_size, record.avg_exit_price) == (
            "Sell",
            Decimal(2),
            Decimal(85),
        )
        [row] = await _position_rows(client, "LTCUSDT")
        assert (row["side"], row["size"], row["avgPrice"]) == ("Sell", "3", "85")
        assert (row["createdTime"], row["openTime"]) == (str(opened), clock.now_ms)
        assert position.open_ms == clock.now_ms
        with pytest.raises(ValueError, match="no opposite"):
            emulator.flip_position("LTC/USDT:USDT", "sell", 1, 85)


async def test_usdc_perpetuals_are_listed_under_usdc_only(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    markets = await client.load_markets()
    # unmodified ccxt maps Bybit's BTCPERP to BTC/USDC:USDC from instruments-info
    assert (markets[USDC_BTC]["id"], markets[USDC_BTC]["settle"]) == ("BTCPERP", "USDC")
    assert markets[USDC_BTC]["linear"] and markets[USDC_BTC]["swap"]
    ex.open_position(USDC_BTC, "sell", "0.01", 60000)
    ex.open_position(BTC, "buy", "0.02", 60000)

    def listed(settle: str) -> Any:
        return client.private_get_v5_position_list({"category": "linear", "settleCoin": settle})

    assert [r["symbol"] for r in (await listed("USDT"))["result"]["list"]] == ["BTCUSDT"]
    assert [r["symbol"] for r in (await listed("USDC"))["result"]["list"]] == ["BTCPERP"]
    [usdc] = await client.fetch_positions([USDC_BTC])
    assert (usdc["symbol"], usdc["side"], usdc["contracts"]) == (USDC_BTC, "short", 0.01)
    with pytest.raises(ExchangeError, match="symbol or settleCoin"):
        await client.private_get_v5_position_list({"category": "linear"})
    ex.close_position(USDC_BTC, "sell", 59000)  # realised in the USDC wallet
    coins = {
        c["coin"]: c for c in (await client.fetch_balance())["info"]["result"]["list"][0]["coin"]
    }
    assert Decimal(coins["USDC"]["walletBalance"]) == Decimal(10) - Decimal("0.33") - Decimal(
        "0.3245"
    )


async def test_closed_pnl_is_written_a_delay_after_the_close(connect: MakeClient) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock, closed_pnl_delay_ms=3000) as emulator:
        client = connect(emulator)
        emulator.open_position(BTC, "buy", 1, 100)
        closed_at = clock.now_ms
        record = emulator.close_position(BTC, "buy", 110)
        params = {"category": "linear"}
        assert await _position_rows(client, "BTCUSDT") != []  # the position is flat already
        assert (await client.private_get_v5_position_closed_pnl(params))["result"]["list"] == []
        clock.now_ms += 2999
        assert (await client.private_get_v5_position_closed_pnl(params))["result"]["list"] == []
        clock.now_ms += 1
        [row] = (await client.private_get_v5_position_closed_pnl(params))["result"]["list"]
        assert (row["orderId"], row["createdTime"]) == (record.order_id, str(closed_at))
        assert row["updatedTime"] == str(closed_at + 3000)


async def test_closed_pnl_rows_with_and_without_fees(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    ex.open_position(BTC, "buy", 1, 100)
    ex.reduce_position(BTC, "buy", "0.5", 110)
    ex.set_closed_pnl_fees(False)  # the 2024 fixture's shape
    ex.close_position(BTC, "buy", 120)
    newest, oldest = (await client.private_get_v5_position_closed_pnl({"category": "linear"}))[
        "result"
    ]["list"]
    assert (oldest["openFee"], oldest["closeFee"]) == ("0.0275", "0.03025")
    assert "openFee" not in newest and "closeFee" not in newest
    # closedPnl is net of both fees either way: 0.5 x 20 - 0.5 x 100 x 0.00055 - 0.5 x 120 x ...
    assert Decimal(newest["closedPnl"]) == Decimal(10) - Decimal("0.0275") - Decimal("0.033")


async def test_a_reduce_filled_in_two_parts_gives_two_rows_with_one_order_id(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    ex.open_position(BTC, "buy", "1.5", 100)
    records = ex.reduce_in_parts(BTC, "buy", "1.5", 110, parts=2)  # the whole: a close
    rows = (await client.private_get_v5_position_closed_pnl({"category": "linear"}))["result"][
        "list"
    ]
    assert len(rows) == 2 and {r["orderId"] for r in rows} == {records[0].order_id}
    assert sorted(Decimal(r["closedSize"]) for r in rows) == [Decimal("0.75"), Decimal("0.75")]
    assert sum(Decimal(r["closedPnl"]) for r in rows) == sum(r.closed_pnl for r in records)
    trades = (await client.private_get_v5_execution_list({"category": "linear"}))["result"]["list"]
    assert len({t["execId"] for t in trades}) == 3  # the open and two closing fills
    assert await client.fetch_positions() == []


async def test_5100_history_rows_page_newest_first_100_a_page(connect: MakeClient) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock) as emulator:
        client = connect(emulator)
        emulator.add_closed_pnl_history(BTC, "buy", 5100, end_ms=clock.now_ms, spacing_ms=60_000)
        emulator.add_funding_history(BTC, "buy", 30, "-0.5", end_ms=clock.now_ms)
        stamps: list[int] = []
        cursor, pages = "", 0
        while True:
            params = {"category": "linear", "limit": 500, "cursor": cursor}  # 500 clamps to 100
            result = (await client.private_get_v5_position_closed_pnl(params))["result"]
            pages += 1
            if not result["list"]:
                assert result["nextPageCursor"] == ""
                break
            assert len(result["list"]) <= 100 and result["nextPageCursor"]
            stamps += [int(r["createdTime"]) for r in result["list"]]
            cursor = result["nextPageCursor"]
        assert pages == 52  # 51 full pages and the empty one
        assert stamps == sorted(stamps, reverse=True) and len(set(stamps)) == 5100
        funding = (
            await client.private_get_v5_execution_list(
                {"category": "linear", "execType": "Funding", "limit": 100}
            )
        )["result"]["list"]
        assert len(funding) == 22  # 8-hourly rows in the default window, both ends included
        assert len({f["execId"] for f in funding}) == 22
        assert {f["execFee"] for f in funding} == {"0.5"}
        with pytest.raises(ExchangeError, match="7 days"):
            await client.private_get_v5_execution_list(
                {
                    "category": "linear",
                    "startTime": clock.now_ms - 7 * DAY_MS - 1,
                    "endTime": clock.now_ms,
                }
            )


# -- authentication: key, timestamp window, signature (guide.mdx, error.mdx) -----------------
async def test_a_clock_skew_beyond_the_window_is_refused_with_10002(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    client = connect()
    await _warm(client)
    ex.set_clock_skew(-3000)  # the client clock 3 s ahead (refused while a request takes < 2 s)
    with pytest.raises(InvalidNonce, match="10002"):
        await client.fetch_positions()
    ex.set_clock_skew(0)
    assert await client.fetch_positions() == []


async def test_ccxt_corrects_a_skewed_clock_through_the_server_time(
    ex: BybitEmulator, connect: MakeClient
) -> None:
    ex.set_clock_skew(-1500)
    client = connect()
    client.options["adjustForTimeDifference"] = True  # ccxt reads /v5/market/time first
    await client.load_markets()
    assert await client.fetch_positions() == []
    client.options["timeDifference"] = 0
    ex.set_clock_skew(2000)  # the client 2 s behind: within the 5 s recv_window
    assert await client.fetch_positions() == []
    ex.set_clock_skew(8000)  # 8 s behind: older than recv_window, however slow the request
    with pytest.raises(InvalidNonce):
        await client.fetch_positions()


async def test_signatures_are_checked_when_the_secret_is_known(connect: MakeClient) -> None:
    async with BybitEmulator(api_key="k", api_secret="right-secret") as emulator:
        assert (await connect(emulator, api_key="k", secret="right-secret").fetch_balance())[
            "USDT"
        ]["total"] == 10000
        wrong = connect(emulator, api_key="k", secret="wrong-secret")
        with pytest.raises(AuthenticationError):  # 10004
            await wrong.fetch_balance()
        await wrong.load_markets()
        with pytest.raises(AuthenticationError):  # a signed POST body too
            await wrong.set_leverage(5, BTC)
        pro = connect(emulator, api_key="k", secret="right-secret", pro=True)
        assert await asyncio.wait_for(pro.watch_positions(), 5) == []
        async with (
            aiohttp.ClientSession() as session,
            session.ws_connect(f"{emulator.ws_url}/v5/private") as ws,
        ):
            await ws.send_json({"op": "auth", "args": _ws_auth_args("k", "wrong")})
            assert (await ws.receive_json(timeout=5))["success"] is False
            await ws.send_json({"op": "auth", "args": _ws_auth_args("k", "right-secret", -1)})
            assert (await ws.receive_json(timeout=5))["ret_msg"] == "Request expired"
            await ws.send_json({"op": "auth", "args": _ws_auth_args("k", "right-secret")})
            assert (await ws.receive_json(timeout=5))["success"] is True


async def test_a_403_ip_ban(ex: BybitEmulator, connect: MakeClient) -> None:
    client = connect()
    await _warm(client)
    ex.inject_fault("http_403", count=2)
    for _ in range(2):
        with pytest.raises(RateLimitExceeded, match="403"):  # ccxt's bybit maps 403 so
            await client.fetch_positions()
    assert await client.fetch_positions() == []
    ex.inject_fault("http_403", count=1, public=True)  # an IP ban refuses public calls too
    with pytest.raises(RateLimitExceeded, match="403"):
        await client.fetch_time()
    assert await client.fetch_time() > 0


async def test_a_close_and_reopen_by_hand_shows_a_new_open_time_and_a_record(
    connect: MakeClient,
) -> None:
    clock = FakeClock(1_700_000_000_000)
    async with BybitEmulator(clock=clock) as emulator:
        client = connect(emulator)
        emulator.open_position(BTC, "buy", "0.01", 60000)
        [before] = await _position_rows(client, "BTCUSDT")
        clock.now_ms += 5_000
        emulator.pay_funding(BTC, "buy", "-0.2")  # settled just before the close
        record = emulator.close_position(BTC, "buy", 61000)
        clock.now_ms += 5_000
        emulator.open_position(BTC, "buy", "0.01", 62000)  # same size, another position
        [after] = await _position_rows(client, "BTCUSDT")
        assert (after["size"], after["createdTime"]) == (before["size"], before["createdTime"])
        assert after["openTime"] == before["openTime"] + 10_000
        assert after["avgPrice"] == "62000" and after["curRealisedPnl"] != before["curRealisedPnl"]
        linear = {"category": "linear"}
        [row] = (await client.private_get_v5_position_closed_pnl(linear))["result"]["list"]
        assert (row["orderId"], row["avgExitPrice"]) == (record.order_id, "61000")
        funding = await client.private_get_v5_execution_list({**linear, "execType": "Funding"})
        assert [f["execFee"] for f in funding["result"]["list"]] == ["0.2"]


def test_docs_name_every_constructor_argument_and_control_call() -> None:
    """docs/emulator.md documents every constructor argument and every public method."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "emulator.md").read_text()
    arguments = [name for name in inspect.signature(BybitEmulator).parameters]
    missing = [name for name in arguments if f"| `{name}` |" not in docs]
    assert not missing, f"constructor arguments not documented: {missing}"
    methods = [
        name
        for name, member in inspect.getmembers(BybitEmulator)
        if not name.startswith("_") and (callable(member) or isinstance(member, property))
    ]
    assert len(methods) > 20
    undocumented = [name for name in methods if f"ex.{name}" not in docs]
    assert not undocumented, f"control calls not documented: {undocumented}"
