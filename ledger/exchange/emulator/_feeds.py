"""The WebSocket feeds: the private position/execution stream and the public ticker stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web

from ledger.exchange.emulator._model import Execution, Position
from ledger.exchange.emulator._signing import Signing
from ledger.exchange.emulator._state import ExchangeState
from ledger.exchange.emulator._wire import (
    Json,
    JsonObject,
    execution_row,
    position_row,
    ticker_row,
)

__all__ = ["WsFeeds"]


@dataclass(eq=False, slots=True)
class _Connection:
    ws: web.WebSocketResponse
    request: web.Request
    private: bool
    conn_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    authed: bool = False
    topics: set[str] = field(default_factory=set)
    outbox: asyncio.Queue[JsonObject | None] = field(default_factory=asyncio.Queue)


class WsFeeds:
    """Every open WebSocket connection, its subscriptions, and what is pushed to them."""

    def __init__(self, state: ExchangeState, *, signing: Signing) -> None:
        self.state = state
        self._signing = signing
        self._connections: set[_Connection] = set()
        self._subscriptions_changed: asyncio.Event | None = None

    def open(self) -> None:
        """Called when the server starts (inside its event loop)."""
        self._subscriptions_changed = asyncio.Event()

    async def close(self) -> None:
        """Close every socket with a close frame (server shutdown)."""
        for connection in list(self._connections):
            self._forget(connection)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(connection.ws.close(code=1001, message=b"shutdown"), 1.0)

    async def serve_private(self, request: web.Request) -> web.StreamResponse:
        """The private stream (/v5/private): auth, ping, position and execution topics."""
        return await self._serve(request, private=True)

    async def serve_public(self, request: web.Request) -> web.StreamResponse:
        """The public linear stream (/v5/public/linear): ping and ticker topics."""
        return await self._serve(request, private=False)

    async def _serve(self, request: web.Request, *, private: bool) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        connection = _Connection(ws=ws, request=request, private=private)
        self._connections.add(connection)
        sender = asyncio.create_task(self._sender(connection))
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self._on_text(connection, message.data)
                elif message.type == WSMsgType.ERROR:
                    break
        finally:
            self._forget(connection)
            connection.outbox.put_nowait(None)
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(sender, 1.0)
        return ws

    async def _sender(self, connection: _Connection) -> None:
        while (message := await connection.outbox.get()) is not None:
            if connection.ws.closed:
                return
            try:
                await connection.ws.send_str(json.dumps(message))
            except ConnectionError:
                return

    def _on_text(self, connection: _Connection, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            return
        if not isinstance(message, dict):
            return
        op = message.get("op")
        req_id = message.get("req_id")
        reply: JsonObject = {
            "conn_id": connection.conn_id,
            "op": op if isinstance(op, str) else "",
        }
        if isinstance(req_id, str | int):
            reply["req_id"] = str(req_id)
        args = message.get("args")
        arg_list = [a for a in args if isinstance(a, str)] if isinstance(args, list) else []
        if op == "ping":
            if connection.private:
                reply.update(op="pong", args=[str(self.state.now_ms())])
            else:
                reply.update(success=True, ret_msg="pong")
        elif op == "auth":
            error = self._signing.check_ws_auth(arg_list, self.state.now_ms())
            connection.authed = connection.authed or error is None
            reply.update(success=error is None, ret_msg=error or "")
        elif op in ("subscribe", "unsubscribe"):
            if connection.private and not connection.authed:
                reply.update(success=False, ret_msg="Request not authorized")
            else:
                if op == "subscribe":
                    connection.topics.update(arg_list)
                else:
                    connection.topics.difference_update(arg_list)
                reply.update(success=True, ret_msg="")
                self._notify_subscriptions()
        else:
            reply.update(success=False, ret_msg=f"Invalid op: {op}")
        connection.outbox.put_nowait(reply)

    def _forget(self, connection: _Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._notify_subscriptions()

    def _notify_subscriptions(self) -> None:
        if self._subscriptions_changed is not None:
            self._subscriptions_changed.set()

    def publish(
        self, topic: str, data: Json, *, private: bool, extra: JsonObject | None = None
    ) -> None:
        now = self.state.now_ms()
        for connection in self._connections:
            if connection.private != private or topic not in connection.topics:
                continue
            if private:
                message: JsonObject = {
                    "id": str(uuid.uuid4()),
                    "topic": topic,
                    "creationTime": now,
                    "data": data,
                }
            else:
                message = {
                    "topic": topic,
                    "ts": now,
                    "type": "snapshot",
                    "cs": now,
                    "data": data,
                }
            if extra:
                message.update(extra)
            connection.outbox.put_nowait(message)

    def push_positions(self, positions: Sequence[Position]) -> None:
        if positions:
            self.publish("position", [position_row(p, ws=True) for p in positions], private=True)

    def push_executions(self, executions: Sequence[Execution]) -> None:
        if executions:
            self.publish(
                "execution",
                [execution_row(e, ws=True) for e in executions],
                private=True,
            )

    def push_ticker(self, symbol: str) -> None:
        instrument = self.state.instruments[symbol]
        self.publish(
            f"tickers.{symbol}",
            ticker_row(instrument, self.state.mark_price(symbol)),
            private=False,
        )

    def drop(self) -> int:
        """Abort every WebSocket connection without a close frame; returns how many were dropped."""
        dropped = 0
        for connection in list(self._connections):
            self._forget(connection)
            transport = connection.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        return dropped

    def subscribers(self, topic: str = "position") -> int:
        """Live authenticated (for private topics) connections subscribed to `topic`."""
        return sum(
            1 for c in self._connections if topic in c.topics and (c.authed or not c.private)
        )

    async def wait_for_subscribers(
        self, topic: str = "position", count: int = 1, timeout: float = 5.0
    ) -> None:
        """Wait until `count` connections subscribe to `topic`; raises TimeoutError."""
        changed = self._subscriptions_changed
        if changed is None:
            raise RuntimeError("emulator not started")
        async with asyncio.timeout(timeout):
            while self.subscribers(topic) < count:
                changed.clear()
                await changed.wait()
