"""Fault injection: which request fails next, and how the failure looks on the wire."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from aiohttp import web

from ledger.exchange.emulator._wire import Json, envelope, error_response

__all__ = ["FAULT_KINDS", "FaultInjector", "FaultKind"]

FaultKind = Literal[
    "timeout",
    "http_403",
    "http_500",
    "http_503",
    "rate_limit",
    "invalid_key",
    "malformed_json",
    "empty_with_error",
    "missing_fields",
]
FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Fields a "missing_fields" fault removes from each row, per endpoint.
_DROPPABLE: dict[str, tuple[str, ...]] = {
    "/v5/position/list": ("size", "side", "avgPrice", "positionIdx", "markPrice"),
    "/v5/position/closed-pnl": ("closedPnl", "avgExitPrice", "closedSize", "side"),
    "/v5/execution/list": ("execFee", "execQty", "execType", "execId"),
    "/v5/account/wallet-balance": ("walletBalance", "equity"),
}


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    remaining: int
    path: str | None
    public: bool


class FaultInjector:
    """The queue of injected faults and the responses they produce.

    A fault either answers before the route runs (`before`: timeouts, HTTP errors, error
    codes) or spoils the route's result (`after`: empty list with an error, missing fields,
    truncated JSON).
    """

    def __init__(self, *, now_ms: Callable[[], int], timeout_seconds: float) -> None:
        self._now_ms = now_ms
        self._timeout_seconds = timeout_seconds
        self._faults: list[_Fault] = []

    def inject(
        self, kind: FaultKind, count: int = 1, *, path: str | None = None, public: bool = False
    ) -> None:
        """Queue `kind` for the next `count` private requests (every request with `public`,
        as an IP ban is), or requests to `path`.

        Raises ValueError for an unknown kind or a count below 1.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        if count < 1:
            raise ValueError("count must be at least 1")
        self._faults.append(_Fault(kind, count, path, public))

    def clear(self) -> None:
        self._faults.clear()

    def take(self, path: str, private: bool) -> FaultKind | None:
        """The fault this request gets, if any (consuming one of its count)."""
        for fault in self._faults:
            if (fault.path == path) if fault.path is not None else (private or fault.public):
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
                return fault.kind
        return None

    async def before(self, kind: FaultKind, closing: asyncio.Event) -> web.StreamResponse | None:
        """The early answer for `kind`, or None to let the route run."""
        if kind == "timeout":
            # Hangs until the client gives up (the handler is cancelled) or the server stops.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closing.wait(), self._timeout_seconds)
            return None
        if kind == "http_403":
            # error.mdx: an IP rate-limit ban (or a blocked region); guide.mdx: wait 10 minutes.
            return web.Response(
                status=403,
                text="<html><head><title>403 Forbidden</title></head></html>",
                content_type="text/html",
            )
        if kind == "http_500":
            return web.Response(
                status=500,
                text="<html><body>500 Internal Server Error</body></html>",
                content_type="text/html",
            )
        if kind == "http_503":
            return web.Response(
                status=503,
                text="<html><body>503 Service Temporarily Unavailable</body></html>",
                content_type="text/html",
            )
        if kind == "rate_limit":
            now = self._now_ms()
            response = error_response(10006, "Too many visits!", now_ms=now)
            response.headers["X-Bapi-Limit"] = "10"
            response.headers["X-Bapi-Limit-Status"] = "0"
            response.headers["X-Bapi-Limit-Reset-Timestamp"] = str(now + 1000)
            return response
        if kind == "invalid_key":
            return error_response(10003, "API key is invalid.", now_ms=self._now_ms(), status=401)
        return None

    def after(
        self, kind: FaultKind | None, path: str, params: Mapping[str, str], result: Json
    ) -> web.Response:
        """The route's result as served, spoiled by `kind` when it is a late fault."""
        now = self._now_ms()
        if kind == "empty_with_error":
            empty: Json = {"category": params.get("category", ""), "list": [], "nextPageCursor": ""}
            return envelope(
                empty, now_ms=now, code=10016, message="System error. Please try again later."
            )
        if kind == "missing_fields":
            _drop_fields(path, result)
        response = envelope(result, now_ms=now)
        if kind == "malformed_json":
            text = response.text or ""
            return web.Response(text=text[: len(text) // 2], content_type="application/json")
        return response


def _drop_fields(path: str, result: Json) -> None:
    fields = _DROPPABLE.get(path, ())
    if not isinstance(result, dict):
        return
    rows = result.get("list")
    if not isinstance(rows, list):
        return
    for row in rows:
        if not isinstance(row, dict):
            continue
        targets = row.get("coin") if path == "/v5/account/wallet-balance" else [row]
        for target in targets if isinstance(targets, list) else []:
            if isinstance(target, dict):
                for name in fields:
                    target.pop(name, None)
