"""The emulator's HTTP server: lifecycle, request dispatch, API-key check, faults in the path."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import TracebackType
from typing import Self

from aiohttp import web

from ledger.exchange.emulator._control import ControlApi
from ledger.exchange.emulator._faults import FaultInjector, FaultKind
from ledger.exchange.emulator._feeds import WsFeeds
from ledger.exchange.emulator._model import INSTRUMENTS, Instrument, NumberLike
from ledger.exchange.emulator._routes import ApiError, RestRoutes
from ledger.exchange.emulator._signing import Signing
from ledger.exchange.emulator._state import ExchangeState
from ledger.exchange.emulator._wire import error_response

__all__ = ["BybitEmulator", "FaultKind", "RequestRecord"]


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request as the emulator saw it (no headers, so no keys)."""

    method: str
    path: str
    params: Mapping[str, str]


class BybitEmulator(ControlApi):
    """A local Bybit V5 (unified account, linear USDT perps) for ccxt, driven by a control API.

    Use ``async with BybitEmulator() as ex:``; ``ex.url`` is the HTTP base and ``ex.ws_url``
    the WebSocket base (private stream at ``/v5/private``, public at ``/v5/public/linear``).
    The control methods are plain methods to call from the emulator's event loop; only
    ``start``, ``stop`` and ``wait_for_subscribers`` are coroutines. Control methods raise
    ValueError for impossible requests (unknown symbol, reducing more than is open).
    """

    def __init__(
        self,
        *,
        hedge_mode: bool = False,
        api_key: str | None = None,
        balance: NumberLike = 10_000,
        taker_fee_rate: NumberLike = Decimal("0.00055"),
        clock: Callable[[], int] | None = None,
        timeout_fault_seconds: float = 30.0,
        host: str = "127.0.0.1",
        instruments: Iterable[Instrument] = INSTRUMENTS,
        closed_pnl_delay_ms: int = 0,
        closed_pnl_fees: bool = True,
        api_secret: str | None = None,
        check_timestamps: bool | None = None,
    ) -> None:
        self.state = ExchangeState(
            clock=clock,
            hedge_mode=hedge_mode,
            taker_fee_rate=taker_fee_rate,
            balance=balance,
            instruments=instruments,
            closed_pnl_delay_ms=closed_pnl_delay_ms,
            closed_pnl_fees=closed_pnl_fees,
        )
        self.requests: deque[RequestRecord] = deque(maxlen=10_000)
        self.unhandled: list[str] = []
        # A custom clock is a simulated timeline ccxt's wall-clock nonce cannot match, so
        # timestamps are checked by default only against the real clock.
        self._signing = Signing(
            api_key=api_key,
            api_secret=api_secret,
            check_timestamps=clock is None if check_timestamps is None else check_timestamps,
        )
        self._host = host
        self._feeds = WsFeeds(self.state, signing=self._signing)
        self._faults = FaultInjector(
            now_ms=self.state.now_ms, timeout_seconds=timeout_fault_seconds
        )
        self._routes = RestRoutes(self.state, self._feeds.push_positions)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._closing: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------
    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Bind an ephemeral port on the host and start serving."""
        if self._runner is not None:
            raise RuntimeError("emulator already started")
        self._closing = asyncio.Event()
        self._feeds.open()
        app = web.Application()
        app.router.add_get("/v5/private", self._feeds.serve_private)
        app.router.add_get("/v5/public/{category}", self._feeds.serve_public)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Cancelling handlers when the client hangs up ends a "timeout" fault's sleep early.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, 0)
        await site.start()
        self._runner = runner
        address = runner.addresses[0]
        self._port = int(address[1])

    async def stop(self) -> None:
        """Close every socket and stop serving; pending "timeout" faults end at once."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._closing is not None:
            self._closing.set()
        await self._feeds.close()
        await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self._require_port()}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self._host}:{self._require_port()}"

    def _require_port(self) -> int:
        if self._port is None:
            raise RuntimeError("emulator not started")
        return self._port

    # -- HTTP ------------------------------------------------------------------------
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        params: dict[str, str] = dict(request.query)
        now = self.state.now_ms
        payload = request.rel_url.raw_query_string
        if request.method == "POST" and request.can_read_body:
            payload = await request.text()
            try:
                body = json.loads(payload)
            except ValueError:
                return error_response(10001, "params error: body is not JSON", now_ms=now())
            if isinstance(body, dict):
                params.update({str(k): str(v) for k, v in body.items()})
        self.requests.append(RequestRecord(request.method, path, params))
        private = not path.startswith("/v5/market/")
        api_key = request.headers.get("X-BAPI-API-KEY", "")
        if private:
            refusal = self._signing.check_http(request.headers, payload, now())
            if refusal is not None:
                return error_response(
                    refusal.code, refusal.message, now_ms=now(), status=refusal.status
                )
        fault = self._faults.take(path, private)
        if fault is not None:
            assert self._closing is not None
            early = await self._faults.before(fault, self._closing)
            if early is not None:
                return early
        route = self._routes.table.get((request.method, path))
        if route is None:
            self.unhandled.append(f"{request.method} {path}")
            return web.Response(status=404, text="404 page not found", content_type="text/plain")
        try:
            result = route(params, api_key or None)
        except ApiError as error:
            return error_response(error.code, error.message, now_ms=now(), status=error.status)
        return self._faults.after(fault, path, params, result)
