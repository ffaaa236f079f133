"""Build an unmodified ccxt bybit client (REST or pro) that talks to a running BybitEmulator."""

from __future__ import annotations

from urllib.parse import urlsplit

import ccxt.async_support
import ccxt.pro

from ledger.exchange.emulator._server import BybitEmulator

__all__ = ["make_ccxt_client"]


def make_ccxt_client(
    ex: BybitEmulator,
    *,
    api_key: str = "test-key",
    secret: str = "test-secret",
    pro: bool = False,
    trim_markets: bool = True,
) -> ccxt.async_support.bybit:
    """A ccxt bybit client whose every REST and WebSocket URL points at `ex`.

    With `pro` the client is a ``ccxt.pro.bybit`` (a subclass of the REST one). With
    `trim_markets` load_markets asks only for linear instruments and skips currencies, as a
    perps bot would; without it ccxt's default (all categories, currencies) runs. Raises
    RuntimeError when the emulator has not been started.
    """
    config = {"apiKey": api_key, "secret": secret, "enableRateLimit": True}
    client: ccxt.async_support.bybit = (
        ccxt.pro.bybit(config) if pro else ccxt.async_support.bybit(config)
    )
    # Testnet first, so a URL this function misses can never reach the live exchange.
    client.set_sandbox_mode(True)
    client.urls["api"] = _retarget(client.urls["api"], http=ex.url, ws=ex.ws_url)
    if trim_markets:
        client.options["fetchMarkets"] = {
            **client.options["fetchMarkets"],
            "types": ["linear"],
        }
        client.has["fetchCurrencies"] = False
    return client


def _retarget(urls: object, *, http: str, ws: str) -> object:
    if isinstance(urls, dict):
        return {key: _retarget(value, http=http, ws=ws) for key, value in urls.items()}
    if isinstance(urls, str):
        parts = urlsplit(urls)
        base = ws if parts.scheme in ("ws", "wss") else http
        return base + parts.path
    return urls
