"""The ccxt adapter: Bybit calls in, typed observations out, ccxt errors translated in one place.

The only module of the ledger that imports ccxt. `ExchangeGateway` wraps a bybit client the
caller built (keys, testnet, options), so a bot passes its own; `bybit_from_env` builds one from
BYBIT_API_KEY / BYBIT_API_SECRET. Every error leaving this module is an ExchangeError whose
text has been scrubbed of the client's key, secret and signatures.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any, TypeVar, cast

import anyio
import ccxt
import ccxt.async_support
import ccxt.pro

from ledger.errors import (
    ConfigError,
    ExchangeAuthError,
    ExchangeBanned,
    ExchangeClockSkew,
    ExchangeError,
    ExchangeUnavailable,
)
from ledger.exchange.observations import (
    BalanceObservation,
    ClosedPnlObservation,
    FundingObservation,
    MalformedResponse,
    PositionObservation,
    balance_from_ccxt,
    closed_pnl_from_ccxt,
    funding_from_ccxt,
    mark_from_ticker,
    position_from_ccxt,
)
from ledger.values import to_micros

__all__ = [
    "API_KEY_ENV",
    "API_SECRET_ENV",
    "ExchangeGateway",
    "ExchangeUnavailable",
    "bybit_from_env",
    "scrub",
]

log = logging.getLogger("ledger.exchange")

API_KEY_ENV = "BYBIT_API_KEY"
API_SECRET_ENV = "BYBIT_API_SECRET"

T = TypeVar("T")
Row = Mapping[str, object]


# -- secrets --------------------------------------------------------------------------------

_SECRET_PATTERNS = (
    # query strings, JSON bodies and header dumps: apiKey=..., "api_key": "...", X-BAPI-SIGN: ...
    re.compile(
        r"""(?ix)
        \b(api[_-]?key|apikey|secret|sign|signature|x-bapi-api-key|x-bapi-sign|password)
        (["']?\s*[:=]\s*["']?)
        ([^"'&\s,;}]+)
        """
    ),
)
_registered_secrets: set[str] = set()


def scrub(text: str, secrets: Sequence[str] = ()) -> str:
    """text without any known secret, nor anything that looks like a key or a signature."""
    for secret in (*secrets, *_registered_secrets):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return text


class _ScrubFilter(logging.Filter):
    """ccxt logs request headers (the API key, the signature) at DEBUG: scrub every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_scrub_filter = _ScrubFilter()


def _register_secrets(client: ccxt.async_support.bybit) -> list[str]:
    secrets = [
        str(value)
        for value in (getattr(client, name, None) for name in ("apiKey", "secret", "password"))
        if value
    ]
    _registered_secrets.update(s for s in secrets if len(s) >= 4)
    logger = getattr(client, "logger", None)
    for target in {logging.getLogger("ccxt.base.exchange"), logger}:
        if isinstance(target, logging.Logger) and _scrub_filter not in target.filters:
            target.addFilter(_scrub_filter)
    return secrets


def _scrub_chain(exc: BaseException, secrets: Sequence[str]) -> None:
    """Scrub the arguments of an exception and its causes, since tracebacks print them."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(
            scrub(arg, secrets) if isinstance(arg, str) else arg for arg in current.args
        )
        current = current.__cause__ or current.__context__


# -- error translation ----------------------------------------------------------------------

_RETRYABLE = (
    ccxt.NetworkError,  # RequestTimeout, RateLimitExceeded/DDoSProtection, ExchangeNotAvailable
    ccxt.BadResponse,  # truncated or non-JSON body: usually a proxy or a restart
)
_AUTH = (ccxt.AuthenticationError,)  # PermissionDenied, AccountSuspended are subclasses
_SYSTEM_BUSY = re.compile(r'"retCode"\s*:\s*"?(10016|10429|10000)\b')
# What ccxt's own parsers raise on rows that lack fields (it indexes and converts blindly).
_PARSE_ERRORS = (KeyError, TypeError, ValueError, ArithmeticError, AttributeError, IndexError)


# ccxt's bybit maps HTTP 403 to RateLimitExceeded; its message carries the status code
_HTTP_403 = re.compile(r"\s403\s")
# Bybit's answer to a timestamp outside the receive window
_CLOCK = re.compile(r'"retCode"\s*:\s*"?10002\b')


def _translate(
    what: str, exc: BaseException, secrets: Sequence[str], ban_wait: float = 600.0
) -> ExchangeError:
    _scrub_chain(exc, secrets)
    reason = scrub(str(exc), secrets) or type(exc).__name__
    kind = type(exc).__name__
    if isinstance(exc, ccxt.InvalidNonce) or _CLOCK.search(str(exc)):
        return ExchangeClockSkew(
            f"Bybit refused the request timestamp during {what} (retCode 10002): this "
            "machine's clock is off from Bybit's by more than the receive window allows, "
            "even after one correction from Bybit's server time; synchronise the clock (NTP)"
        )
    if isinstance(exc, ccxt.NetworkError) and _HTTP_403.search(str(exc)):
        return ExchangeBanned(
            f"Bybit answered HTTP 403 during {what}: this IP is banned (too many requests; "
            f"lifted after at least 10 minutes) or Bybit blocks this region (permanent); "
            f"waiting {ban_wait:.0f}s before the next attempt",
            retry_after=ban_wait,
        )
    if isinstance(exc, _AUTH):
        return ExchangeAuthError(
            f"Bybit refused the API key during {what} ({kind}: {reason}); check "
            f"{API_KEY_ENV} / {API_SECRET_ENV}, the key's permissions (positions, account) "
            "and its IP whitelist, and that testnet keys go with --testnet"
        )
    if isinstance(exc, TimeoutError):
        return ExchangeUnavailable(f"{what} timed out")
    if isinstance(exc, _RETRYABLE) or (
        isinstance(exc, ccxt.ExchangeError) and _SYSTEM_BUSY.search(str(exc))
    ):
        return ExchangeUnavailable(f"{what} failed, retry later ({kind}: {reason})")
    if isinstance(exc, _PARSE_ERRORS):
        return MalformedResponse(what, "response", None, f"ccxt could not parse it ({kind})")
    return ExchangeError(f"{what} failed ({kind}: {reason})")


# -- the gateway ----------------------------------------------------------------------------


class ExchangeGateway:
    """Bybit (USDT linear perpetuals, unified account) through a caller-built ccxt client.

    Every method raises ExchangeUnavailable (retry), ExchangeAuthError (stop) or ExchangeError
    / MalformedResponse (the answer cannot be trusted); none returns a partial result.
    """

    def __init__(
        self,
        client: ccxt.async_support.bybit,
        *,
        settle_coin: str = "USDT",
        settle_coins: Sequence[str] = ("USDT", "USDC"),
        timeout: float | None = 30.0,
        owns_client: bool = True,
        ban_wait: float = 600.0,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.client = client
        self.settle_coin = settle_coin  # the balance's coin
        # every settle coin whose positions are listed: Bybit lists a linear position only
        # under its own settleCoin (USDC perpetuals such as BTCPERP under USDC)
        coins = [settle_coin, *settle_coins]
        self.settle_coins: tuple[str, ...] = tuple(dict.fromkeys(c.upper() for c in coins))
        self.timeout = timeout
        self.owns_client = owns_client
        self.ban_wait = ban_wait
        # the end of history windows ("now"); the emulator's tests pass its virtual clock
        self.clock_ms = clock_ms
        self.clock_corrected = False
        self._clock_lock = anyio.Lock()
        self.requests = 0
        self._secrets = _register_secrets(client)

    @property
    def can_watch(self) -> bool:
        """True when the client is a ccxt.pro client with watch_positions."""
        has = getattr(self.client, "has", {})
        return isinstance(self.client, ccxt.pro.Exchange) and bool(has.get("watchPositions"))

    async def _call(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one ccxt call under the deadline, translating every failure (the one place).

        A timestamp refused by Bybit (10002) is corrected once through ccxt
        (load_time_difference, then adjustForTimeDifference) and the call retried.
        """
        try:
            return await self._once(call)
        except ExchangeError:
            raise
        except ccxt.InvalidNonce as exc:
            first = exc
        except (ccxt.BaseError, TimeoutError, *_PARSE_ERRORS) as exc:
            raise _translate(what, exc, self._secrets, self.ban_wait) from exc
        # calls running side by side may all be refused: one corrects, each retries once
        async with self._clock_lock:
            if not self.clock_corrected:
                await self._correct_clock(what, first)
        try:
            return await self._once(call)
        except ExchangeError:
            raise
        except (ccxt.BaseError, TimeoutError, *_PARSE_ERRORS) as exc:
            raise _translate(what, exc, self._secrets, self.ban_wait) from exc

    async def _once(self, call: Callable[[], Awaitable[T]]) -> T:
        self.requests += 1
        if self.timeout is None:
            return await call()
        with anyio.fail_after(self.timeout):
            return await call()

    async def _correct_clock(self, what: str, cause: BaseException) -> None:
        """Measure the offset from Bybit's server time once, and sign with it from now on."""
        self.clock_corrected = True
        try:
            offset = await self._once(lambda: self.client.load_time_difference())
        except (ccxt.BaseError, TimeoutError, *_PARSE_ERRORS) as exc:
            raise _translate(what, cause, self._secrets, self.ban_wait) from exc
        self.client.options["adjustForTimeDifference"] = True
        log.warning(
            "Bybit refused the request timestamp (10002): this clock is %s ms off Bybit's; "
            "correcting requests by it (synchronise the clock with NTP)",
            offset,
        )

    def _parse(self, what: str, parse: Callable[[], T]) -> T:
        try:
            return parse()
        except ExchangeError:
            raise
        except (ccxt.BaseError, *_PARSE_ERRORS) as exc:
            raise _translate(what, exc, self._secrets) from exc

    async def load_markets(self) -> None:
        """Load (and cache) the markets; the other calls do it on first use."""
        await self._call("load_markets", lambda: self.client.load_markets())

    async def _markets(self) -> None:
        """ccxt's markets, loaded once, so parsed rows carry unified symbols."""
        if getattr(self.client, "markets", None) is None:
            await self.load_markets()

    async def fetch_positions(self) -> list[PositionObservation]:
        """Every open linear position of every settle coin in `settle_coins` (GET
        /v5/position/list by settleCoin, paged by cursor), parsed by ccxt's parse_position,
        so symbols come from ccxt's markets (Bybit's BTCPERP is BTC/USDC:USDC).

        The raw endpoint is called rather than fetch_positions because ccxt reads a body it
        cannot parse as an empty list: here that is an error, never "no positions".
        """
        await self._markets()
        rows: list[Row] = []
        for coin in self.settle_coins:
            rows += await self._paged(
                "fetch_positions",
                lambda params: self.client.private_get_v5_position_list(params),
                {"category": "linear", "settleCoin": coin, "limit": 200},
            )
        observed: list[PositionObservation] = []
        for row in rows:
            position = self._parse("fetch_positions", partial(self._position, row))
            if position is not None:
                observed.append(position)
        return observed

    def _position(self, row: Row) -> PositionObservation | None:
        return position_from_ccxt(self.client.parse_position(dict(row)))

    async def fetch_balance(self) -> BalanceObservation:
        """The settle coin in the unified account (GET /v5/account/wallet-balance, parsed by
        ccxt's parse_balance as fetch_balance does)."""
        await self._markets()
        response = await self._call(
            "fetch_balance",
            partial(
                self.client.private_get_v5_account_wallet_balance,
                {"accountType": "UNIFIED", "coin": self.settle_coin},
            ),
        )
        _check_envelope("fetch_balance", response)
        return self._parse("fetch_balance", partial(self._balance, response))

    def _balance(self, response: object) -> BalanceObservation:
        return balance_from_ccxt(self.client.parse_balance(response), self.settle_coin)

    async def fetch_closed_pnl(self, *, since: datetime) -> list[ClosedPnlObservation]:
        """Closed-PnL records (reduces and closes) since `since`, however far back: Bybit
        answers 7 days a query, so the span is walked window by window, newest first."""
        await self._markets()
        rows = await self._windows(
            "fetch closed pnl",
            lambda params: self.client.private_get_v5_position_closed_pnl(params),
            {"category": "linear", "limit": 100},
            since,
        )
        return [self._parse("fetch closed pnl", partial(self._closed_pnl, row)) for row in rows]

    async def _windows(
        self,
        what: str,
        call: Callable[[dict[str, object]], Awaitable[object]],
        params: dict[str, object],
        since: datetime,
    ) -> list[Row]:
        """Every row from `since` to now, one 7-day window at a time from the newest."""
        end = self.clock_ms() if self.clock_ms is not None else int(self.client.milliseconds())
        start_ms = _ms(since)
        collected: list[Row] = []
        while end > start_ms:
            start = max(start_ms, end - _WINDOW_MS)
            collected += await self._paged(
                what, call, {**params, "startTime": start, "endTime": end}
            )
            end = start
        return collected

    def _closed_pnl(self, row: Row) -> ClosedPnlObservation:
        # the parser ccxt's fetch_positions_history runs on these rows
        return closed_pnl_from_ccxt(self.client.parse_position(dict(row)))

    def _funding(self, row: Row) -> FundingObservation | None:
        # the parser ccxt's fetch_my_trades runs on execution rows
        return funding_from_ccxt(self.client.parse_trade(dict(row)))

    async def fetch_funding(self, *, since: datetime) -> list[FundingObservation]:
        """Funding settlements since `since` (execution list, execType=Funding: ccxt's
        fetch_my_trades asks for execType=Trade)."""
        await self._markets()
        rows = await self._windows(
            "fetch funding",
            lambda params: self.client.private_get_v5_execution_list(params),
            {"category": "linear", "execType": "Funding", "limit": 100},
            since,
        )
        observed: list[FundingObservation] = []
        for row in rows:
            funding = self._parse("fetch funding", partial(self._funding, row))
            if funding is not None:
                observed.append(funding)
        return observed

    async def watch_positions(self) -> tuple[list[PositionObservation], list[str]]:
        """The next position update from the private WebSocket (ccxt.pro): the positions that
        changed, and the markets that went flat. Raises ExchangeUnavailable when the socket
        drops (the next call reconnects)."""
        if not self.can_watch:
            raise ExchangeError("watch_positions needs a ccxt.pro bybit client")
        watch = cast(Any, self.client).watch_positions
        raw = await self._call_unbounded("watch_positions", watch)
        rows = _rows(raw, "watch_positions")
        changed: list[PositionObservation] = []
        flat: list[str] = []
        for row in rows:
            position = self._parse("watch_positions", partial(position_from_ccxt, row))
            if position is not None:
                changed.append(position)
            else:
                info = row.get("info")
                flat.append(str(info.get("symbol")) if isinstance(info, Mapping) else "?")
        return changed, flat

    @property
    def can_watch_marks(self) -> bool:
        """True when the client is a ccxt.pro client with watch_tickers."""
        has = getattr(self.client, "has", {})
        return isinstance(self.client, ccxt.pro.Exchange) and bool(has.get("watchTickers"))

    async def watch_marks(self, symbols: Sequence[str]) -> dict[str, Decimal]:
        """The next marks from the public ticker stream (ccxt.pro watch_tickers, Bybit's
        `tickers.{symbol}` topic, markPrice), by ccxt symbol. The position stream does not push
        on mark moves; the periodic REST sync is the backstop. Raises ExchangeUnavailable."""
        if not self.can_watch_marks:
            raise ExchangeError("watch_marks needs a ccxt.pro bybit client")
        await self._markets()
        watch = cast(Any, self.client).watch_tickers
        raw = await self._call_unbounded("watch_tickers", partial(watch, list(symbols)))
        if not isinstance(raw, Mapping):
            raise MalformedResponse("watch_tickers", "response", type(raw).__name__, "not a dict")
        marks: dict[str, Decimal] = {}
        for ticker in raw.values():
            if not isinstance(ticker, Mapping):
                raise MalformedResponse("watch_tickers", "ticker", ticker, "expected an object")
            parsed = self._parse("watch_tickers", partial(mark_from_ticker, ticker))
            if parsed is not None:
                marks[parsed[0]] = parsed[1]
        return marks

    async def _call_unbounded(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except ExchangeError:
            raise
        except (ccxt.BaseError, *_PARSE_ERRORS) as exc:
            raise _translate(what, exc, self._secrets, self.ban_wait) from exc

    async def _paged(
        self,
        what: str,
        call: Callable[[dict[str, object]], Awaitable[object]],
        params: dict[str, object],
    ) -> list[Row]:
        """Every page of one query. Bybit sends a cursor even on the last page: the end is an
        empty or short page, or a cursor seen before. No page cap: a long history is read
        whole (each page is one request under ccxt's rate limiter), never refused."""
        collected: list[Row] = []
        cursor: str | None = None
        seen: set[str] = set()
        limit = params.get("limit")
        while True:
            page_params = dict(params)
            if cursor:
                page_params["cursor"] = cursor
            response = await self._call(what, partial(call, page_params))
            _check_envelope(what, response)
            result = response.get("result") if isinstance(response, Mapping) else None
            rows = result.get("list") if isinstance(result, Mapping) else None
            if not isinstance(rows, list) or not isinstance(result, Mapping):
                raise MalformedResponse(what, "result.list", rows, "expected a list")
            for row in rows:
                if not isinstance(row, Mapping):
                    raise MalformedResponse(what, "list[]", row, "expected an object")
                collected.append(row)
            next_cursor = result.get("nextPageCursor")
            if not next_cursor or not rows:
                return collected
            if isinstance(limit, int) and len(rows) < limit:
                return collected
            cursor = str(next_cursor)
            if cursor in seen:
                return collected
            seen.add(cursor)

    async def close(self) -> None:
        """Close the client's sessions and sockets, if this gateway owns the client."""
        if self.owns_client:
            with anyio.CancelScope(shield=True):
                try:
                    await self.client.close()
                except (ccxt.BaseError, OSError) as exc:
                    log.warning("closing the exchange client: %s", scrub(str(exc), self._secrets))


def _ms(moment: datetime) -> int:
    return to_micros(moment) // 1000


# Bybit's closed-PnL and execution lists answer at most 7 days per query.
_WINDOW_MS = int(timedelta(days=7).total_seconds() * 1000)


def _check_envelope(what: str, response: object) -> None:
    """A Bybit V5 answer: an object with retCode 0 (ccxt raised already for other codes, but
    reads a body it cannot parse as nothing)."""
    if not isinstance(response, Mapping):
        raise MalformedResponse(what, "body", type(response).__name__, "not a JSON object")
    code = response.get("retCode")
    if code is None or str(code) != "0":
        raise MalformedResponse(what, "retCode", code, "expected 0")


def _rows(rows: object, what: str) -> list[Row]:
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) for r in rows):
        raise MalformedResponse(what, "response", type(rows).__name__, "expected a list of rows")
    return cast(list[Row], rows)


def _first_cursor(rows: Sequence[Row]) -> str | None:
    """ccxt copies Bybit's result.nextPageCursor into the first row's info."""
    if not rows:
        return None
    info = rows[0].get("info")
    cursor = info.get("nextPageCursor") if isinstance(info, Mapping) else None
    return str(cursor) if cursor else None


def bybit_from_env(
    testnet: bool,
    *,
    pro: bool = False,
    environ: Mapping[str, str] | None = None,
    options: Mapping[str, object] | None = None,
) -> ccxt.async_support.bybit:
    """A ccxt bybit client (ccxt.pro's with pro=True, for watch_positions) keyed from
    BYBIT_API_KEY / BYBIT_API_SECRET, on testnet when asked, loading linear markets only.

    Raises ConfigError naming the missing variable (never a value).
    """
    env = os.environ if environ is None else environ
    missing = [name for name in (API_KEY_ENV, API_SECRET_ENV) if not env.get(name)]
    if missing:
        raise ConfigError(f"set {' and '.join(missing)} to sync with Bybit")
    config: dict[str, object] = {
        "apiKey": env[API_KEY_ENV],
        "secret": env[API_SECRET_ENV],
        "enableRateLimit": True,
        "options": {"defaultType": "swap", **(options or {})},
    }
    client: ccxt.async_support.bybit = (
        ccxt.pro.bybit(config) if pro else ccxt.async_support.bybit(config)
    )
    if testnet:
        client.set_sandbox_mode(True)
    fetch_markets = client.options.get("fetchMarkets")
    if isinstance(fetch_markets, dict):
        client.options["fetchMarkets"] = {**fetch_markets, "types": ["linear"]}
    return client
