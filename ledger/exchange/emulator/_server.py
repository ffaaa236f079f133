"""Bybit V5 HTTP and WebSocket emulator on aiohttp: routes, wire format, injected faults."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from types import TracebackType
from typing import Literal, Self, TypeAlias, TypeVar, get_args
from urllib.parse import quote, unquote

from aiohttp import WSMsgType, web

from ledger.exchange.emulator._state import (
    INSTRUMENTS,
    ClosedPnl,
    CoinBalance,
    ExchangeState,
    Execution,
    Instrument,
    NumberLike,
    Position,
)

__all__ = ["BybitEmulator", "FaultKind", "RequestRecord"]

Json: TypeAlias = "None | bool | int | float | str | list[Json] | dict[str, Json]"
JsonObject: TypeAlias = dict[str, Json]

FaultKind = Literal[
    "timeout",
    "http_500",
    "http_503",
    "rate_limit",
    "invalid_key",
    "malformed_json",
    "empty_with_error",
    "missing_fields",
]
_FAULT_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Fields a "missing_fields" fault removes from each row, per endpoint.
_DROPPABLE: dict[str, tuple[str, ...]] = {
    "/v5/position/list": ("size", "side", "avgPrice", "positionIdx", "markPrice"),
    "/v5/position/closed-pnl": ("closedPnl", "avgExitPrice", "closedSize", "side"),
    "/v5/execution/list": ("execFee", "execQty", "execType", "execId"),
    "/v5/account/wallet-balance": ("walletBalance", "equity"),
}

_E4 = Decimal("0.0001")
_T = TypeVar("_T")
_K = TypeVar("_K", bound=tuple[object, ...])


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One HTTP request as the emulator saw it (no headers, so no keys)."""

    method: str
    path: str
    params: Mapping[str, str]


@dataclass(slots=True)
class _Fault:
    kind: FaultKind
    remaining: int
    path: str | None


@dataclass(eq=False, slots=True)
class _WsConnection:
    ws: web.WebSocketResponse
    request: web.Request
    private: bool
    conn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    authed: bool = False
    topics: set[str] = field(default_factory=set)
    outbox: asyncio.Queue[JsonObject | None] = field(default_factory=asyncio.Queue)


class _ApiError(Exception):
    def __init__(self, code: int, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status


def _s(value: Decimal) -> str:
    """Bybit's number strings: plain notation, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def _fixed(value: Decimal, places: int) -> str:
    return format(value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP), "f")


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise _ApiError(10001, f"params error: {name} invalid") from None


def _limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    value = _int_param(params, "limit")
    if value is None:
        return default
    if value < 1:
        raise _ApiError(10001, "params error: limit invalid")
    return min(value, maximum)


def _paginate(
    rows: Sequence[_T],
    key: Callable[[_T], _K],
    parse: Callable[[str], _K],
    *,
    descending: bool,
    limit: int,
    cursor: str | None,
) -> tuple[list[_T], str]:
    ordered = sorted(rows, key=key, reverse=descending)
    if cursor:
        try:
            mark = parse(unquote(cursor))
        except (ValueError, IndexError):
            raise _ApiError(10001, "params error: cursor invalid") from None
        ordered = [r for r in ordered if (key(r) < mark if descending else key(r) > mark)]
    page = ordered[:limit]
    if len(ordered) <= limit:
        return page, ""
    return page, quote(",".join(str(part) for part in key(page[-1])), safe="")


def _parse_time_seq(text: str) -> tuple[int, int]:
    time_part, seq_part = text.split(",")
    return int(time_part), int(seq_part)


def _parse_symbol_idx(text: str) -> tuple[str, int]:
    symbol, idx = text.split(",")
    return symbol, int(idx)


def _parse_symbol(text: str) -> tuple[str]:
    return (text,)


def _category(params: Mapping[str, str], allowed: Iterable[str]) -> str:
    category = params.get("category", "")
    if category not in allowed:
        raise _ApiError(10001, "Illegal category" if category else "params error: category is required")
    return category


# -- wire rows -------------------------------------------------------------------------
def _position_row(p: Position, *, ws: bool = False) -> JsonObject:
    flat = not p.is_open
    row: JsonObject = {
        "positionIdx": p.position_idx,
        "riskId": 1,
        "riskLimitValue": "2000000",
        "symbol": p.symbol,
        "side": p.side or "",
        "size": _s(p.size),
        "avgPrice": _s(p.avg_price),
        "positionValue": "" if flat else _s(p.position_value),
        "tradeMode": 0,
        "autoAddMargin": 0,
        "positionStatus": "Normal",
        "leverage": _s(p.leverage),
        "markPrice": _s(p.mark_price),
        "liqPrice": "",
        "bustPrice": "",
        "positionIM": _s(p.position_im),
        "positionMM": _s(p.position_mm),
        "positionBalance": _s(p.position_im),
        "tpslMode": "Full",
        "takeProfit": "",
        "stopLoss": "",
        "trailingStop": "0",
        "sessionAvgPrice": "",
        "unrealisedPnl": _s(p.unrealised_pnl),
        "curRealisedPnl": _s(p.cur_realised_pnl),
        "cumRealisedPnl": _s(p.cum_realised_pnl),
        "adlRankIndicator": 0 if flat else 2,
        "isReduceOnly": False,
        "mmrSysUpdatedTime": "",
        "leverageSysUpdatedTime": "",
        "createdTime": str(p.created_ms),
        "updatedTime": str(p.updated_ms),
        "seq": p.seq,
    }
    if ws:
        # The private stream names the entry price entryPrice and tags each row's category.
        row["entryPrice"] = row.pop("avgPrice")
        row["category"] = "linear"
    return row


