"""A known fake key and secret never reach logs, events, the snapshot or exception text."""

from __future__ import annotations

import logging
import traceback
from pathlib import Path

import anyio
import ccxt
import msgspec
import pytest

from ledger.errors import ConfigError, ExchangeAuthError, ExchangeError
from ledger.exchange.ccxt_client import (
    API_KEY_ENV,
    API_SECRET_ENV,
    ExchangeGateway,
    ExchangeUnavailable,
    bybit_from_env,
    scrub,
)
from ledger.exchange.emulator import BybitEmulator
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger

pytestmark = pytest.mark.anyio

KEY = "FAKEKEY-7f3c9d2e1a5b"
SECRET = "FAKESECRET-0b8e6a4c9d3f"
SIGNATURE = "9c1d0f6e2b7a4c3d8e5f"
SECRETS = (KEY, SECRET)


def leaks(text: str) -> list[str]:
    return [s for s in (*SECRETS, SIGNATURE) if s in text]


def full_text(error: BaseException) -> str:
    """What a traceback of the error would print, causes and contexts included."""
    return "".join(traceback.format_exception(error)) + repr(error)


async def test_a_whole_session_with_a_fake_key_leaks_it_nowhere(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # ccxt logs request headers (the key, the signature) here
    errors: list[ExchangeError] = []
    async with BybitEmulator(api_key=KEY) as ex:
        client = make_ccxt_client(ex, api_key=KEY, secret=SECRET, pro=True)
        client.enableRateLimit = False
        gateway = ExchangeGateway(client, timeout=30.0)  # a guard: no fault here hangs
        sync = ExchangeSync()
        try:
            async with Ledger(tmp_path / "ledger.db") as ledger:
                ex.open_position("BTC/USDT:USDT", "buy", "0.01", "60000")
                ex.pay_funding("BTC/USDT:USDT", "buy", "-0.1")
                await sync.sync_once(ledger, gateway)
                for kind in ("invalid_key", "malformed_json", "http_500", "rate_limit"):
                    ex.inject_fault(kind, path="/v5/position/list")
                    with pytest.raises(ExchangeError) as caught:
                        await sync.sync_once(ledger, gateway)
                    errors.append(caught.value)
                async with anyio.create_task_group() as group:  # the WebSocket auth too
                    group.start_soon(sync.watch, ledger, gateway)
                    await ex.wait_for_subscribers("position")
                    ex.close_position("BTC/USDT:USDT", "buy", "60500")
                    with anyio.fail_after(5):
                        async for _ in ledger.subscribe(from_seq=ledger.last_seq):
                            break
                    group.cancel_scope.cancel()
                records = [r async for page in ledger.store.iterate() for r in page]
        finally:
            await gateway.close()
    assert isinstance(errors[0], ExchangeAuthError)
    for error in errors:
        assert leaks(full_text(error)) == []
    logged = [record.getMessage() for record in caplog.records]
    assert any("X-BAPI-API-KEY" in m for m in logged)  # ccxt did log its request headers ...
    assert [m for m in logged if leaks(m)] == []  # ... scrubbed
    assert leaks(caplog.text) == []
    assert len(records) > 3
    for record in records:
        assert leaks(msgspec.json.encode(record).decode()) == []
    assert leaks((tmp_path / "positions.json").read_text()) == []
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("ledger.db*"))
    assert all(secret.encode() not in raw for secret in SECRETS)


class _Failing:
    """A stand-in client whose calls fail the way ccxt's do, quoting what they sent."""

    def __init__(self, error: Exception) -> None:
        self.apiKey = KEY
        self.secret = SECRET
        self.markets: dict[str, object] = {}
        self.error = error

    async def private_get_v5_position_list(self, params: object) -> object:
        raise self.error


MESSAGES = [
    f"bybit GET https://api.bybit.com/v5/position/list?apiKey={KEY}&sign={SIGNATURE} 503",
    f'bybit {{"X-BAPI-API-KEY": "{KEY}", "X-BAPI-SIGN": "{SIGNATURE}", "secret": "{SECRET}"}}',
    f"request headers: X-BAPI-API-KEY: {KEY}; X-BAPI-SIGN: {SIGNATURE}",
]


@pytest.mark.parametrize(
    ("error", "translated"),
    [
        (ccxt.RequestTimeout, ExchangeUnavailable),
        (ccxt.ExchangeNotAvailable, ExchangeUnavailable),
        (ccxt.AuthenticationError, ExchangeAuthError),
        (ccxt.PermissionDenied, ExchangeAuthError),
        (ccxt.BadRequest, ExchangeError),
        (ccxt.BadResponse, ExchangeUnavailable),
    ],
)
@pytest.mark.parametrize("message", MESSAGES)
async def test_ccxt_errors_are_translated_once_and_scrubbed(
    error: type[Exception], translated: type[ExchangeError], message: str
) -> None:
    gateway = ExchangeGateway(_Failing(error(message)), owns_client=False)
    with pytest.raises(ExchangeError) as caught:
        await gateway.fetch_positions()
    assert type(caught.value) is translated
    assert isinstance(caught.value.__cause__, error)  # raise ... from the ccxt error
    assert leaks(full_text(caught.value)) == []


def test_scrub_hides_keys_and_signatures_in_every_shape() -> None:
    for message in MESSAGES:
        assert leaks(scrub(message, SECRETS)) == []
    assert scrub("apiKey=abc123&category=linear") == "apiKey=***&category=linear"
    assert scrub("a design: plain") == "a design: plain"


def test_bybit_from_env_names_missing_variables_never_values() -> None:
    with pytest.raises(ConfigError) as caught:
        bybit_from_env(True, environ={API_KEY_ENV: KEY})
    assert API_SECRET_ENV in str(caught.value) and leaks(str(caught.value)) == []
    client = bybit_from_env(True, environ={API_KEY_ENV: KEY, API_SECRET_ENV: SECRET})
    assert client.apiKey == KEY and client.secret == SECRET
    assert "testnet" in str(client.urls["api"])
    assert client.options["fetchMarkets"]["types"] == ["linear"]
    mainnet = bybit_from_env(False, environ={API_KEY_ENV: KEY, API_SECRET_ENV: SECRET})
    assert "testnet" not in str(mainnet.urls["api"])
