"""The gateway's handling of Bybit's timestamp refusal (10002) and HTTP 403, and the service's
wait after a ban. ccxt runs unmodified against the emulator; only the refusal itself is
injected where the emulator cannot produce it yet."""

from __future__ import annotations

import logging
from datetime import datetime
from pathlib import Path

import anyio
import ccxt
import pytest

from ledger.errors import ExchangeBanned, ExchangeClockSkew
from ledger.exchange.ccxt_client import ExchangeGateway, _translate
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.observations import (
    BalanceObservation,
    ClosedPnlObservation,
    FundingObservation,
    PositionObservation,
)
from ledger.exchange.service import Backoff, BotService
from ledger.service import Ledger
from tests.exchange.test_service import quiet_settings, running

pytestmark = pytest.mark.anyio
BTC = "BTC/USDT:USDT"
REFUSED = 'bybit {"retCode":10002,"retMsg":"invalid request, please check your server timestamp"}'


def test_http_403_is_a_ban_with_a_wait_and_a_reason() -> None:
    exc = ccxt.RateLimitExceeded(
        "bybit GET https://api.bybit.com/v5/position/list 403 Forbidden <html>blocked</html>"
    )
    error = _translate("fetch_positions", exc, [], ban_wait=600)
    assert isinstance(error, ExchangeBanned) and error.retry_after == 600
    assert "403" in str(error) and "10 minutes" in str(error) and "region" in str(error)
    plain = _translate("fetch_positions", ccxt.RateLimitExceeded("bybit 10006 too many"), [])
    assert not isinstance(plain, ExchangeBanned)


async def test_a_refused_timestamp_is_corrected_once_through_ccxt() -> None:
    async with BybitEmulator() as ex:
        ex.open_position(BTC, "buy", "0.01", "60000")
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        gateway = ExchangeGateway(client, timeout=5.0)
        real = client.private_get_v5_position_list
        refusals: list[object] = []

        async def refuse_once(params: object) -> object:
            if not refusals:
                refusals.append(params)
                raise ccxt.InvalidNonce(REFUSED)
            return await real(params)

        client.private_get_v5_position_list = refuse_once
        try:
            (position,) = await gateway.fetch_positions()
        finally:
            await gateway.close()
        assert position.symbol == BTC and gateway.clock_corrected
        assert client.options["adjustForTimeDifference"] is True
        assert any(r.path == "/v5/market/time" for r in ex.requests)  # ccxt asked Bybit's time


async def test_a_clock_still_refused_after_the_correction_says_so() -> None:
    async with BybitEmulator() as ex:
        client = make_ccxt_client(ex)
        client.enableRateLimit = False
        gateway = ExchangeGateway(client, timeout=5.0)

        async def always_refused(params: object) -> object:
            raise ccxt.InvalidNonce(REFUSED)

        client.private_get_v5_position_list = always_refused
        try:
            with pytest.raises(ExchangeClockSkew) as caught:
                await gateway.fetch_positions()
            with pytest.raises(ExchangeClockSkew):  # corrected once only: no retry loop
                await gateway.fetch_positions()
        finally:
            await gateway.close()
        assert "10002" in str(caught.value) and "clock" in str(caught.value)
        assert sum(1 for r in ex.requests if r.path == "/v5/market/time") <= 2


class BannedGateway:
    settle_coins = ("USDT",)

    def __init__(self) -> None:
        self.calls = 0

    async def fetch_positions(self) -> list[PositionObservation]:
        self.calls += 1
        raise ExchangeBanned("Bybit answered HTTP 403 (test)", retry_after=600.0)

    async def fetch_balance(self) -> BalanceObservation:
        raise ExchangeBanned("Bybit answered HTTP 403 (test)", retry_after=600.0)

    async def fetch_closed_pnl(self, *, since: datetime) -> list[ClosedPnlObservation]:
        return []

    async def fetch_funding(self, *, since: datetime) -> list[FundingObservation]:
        return []


async def test_the_service_waits_out_a_ban_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = quiet_settings(tmp_path)
    gateway = BannedGateway()
    async with Ledger(tmp_path / "l.db", settings=settings) as ledger:
        service = BotService(
            ledger, gateway, settings=settings, backoff=Backoff(base=0.01, cap=0.02)
        )
        with caplog.at_level(logging.WARNING, logger="ledger.service"):
            async with running(service):
                with anyio.fail_after(20):
                    await service.wait_for(lambda s: s.sync.syncs_failed >= 1)
                await anyio.sleep(0.1)  # far longer than the backoff alone would wait
        assert gateway.calls == 1
        assert service.delays == [600.0]
        assert any("403" in r.getMessage() for r in caplog.records)
