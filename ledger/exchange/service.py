"""The bot's background service: periodic exchange sync, live updates, exit rules, backups.

`await BotService(ledger, gateway).run()` runs everything in one anyio task group until it is
cancelled, a SIGINT/SIGTERM arrives (handle_signals=True), or Bybit refuses the keys (then it
raises ExchangeAuthError with a message saying what to check). On the way out it lets the append
in flight finish, writes positions.json and closes the exchange client.
"""

from __future__ import annotations

import logging
import random
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import cast

import anyio
import msgspec
from anyio.abc import TaskGroup

from ledger.errors import (
    CommandRejected,
    ExchangeAuthError,
    ExchangeError,
    ExchangeUnavailable,
    SnapshotError,
    StoreError,
)
from ledger.events import (
    ExitAbandoned,
    ExitIntended,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
)
from ledger.exchange.exit_rules import ExitOrder, ExitRule, due_exits, parse_rules
from ledger.exchange.reconcile import mark_worth_logging
from ledger.exchange.sync import ExchangeSync, Gateway, WatchingGateway
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from ledger.values import ZERO, Source, market_key
from projections.positions import Position, marked

__all__ = ["Backoff", "BotService", "ExitExecutor", "ExitFill"]

log = logging.getLogger("ledger.service")


class ExitFill(msgspec.Struct, frozen=True, kw_only=True):
    """What an executor got for an exit order; realized_pnl None: computed from the prices."""

    qty: Decimal
    price: Decimal
    realized_pnl: Decimal | None = None
    fee: Decimal = ZERO


# Places the exit on the exchange (a reduce-only order) and says what filled; None: not done.
ExitExecutor = Callable[[Position, ExitOrder], Awaitable[ExitFill | None]]


@dataclass
class Backoff:
    """Exponential backoff with jitter: attempt n waits between half and all of
    min(cap, base * factor ** (n - 1)) seconds."""

    base: float = 1.0
    cap: float = 300.0
    factor: float = 2.0
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap, self.base * self.factor ** max(attempt - 1, 0))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)


class BotService:
    """The seed's background tasks over one Ledger and, optionally, one exchange.

    Without a gateway only the exit rules, snapshots and backups run (paper trading). With
    `exit_executor` each rule's exit is placed on the exchange first and recorded with what
    filled; without it the exit is recorded in the ledger only.
    """

    def __init__(
        self,
        ledger: Ledger,
        gateway: Gateway | None = None,
        *,
        settings: Settings | None = None,
        rules: Sequence[ExitRule] | None = None,
        exit_executor: ExitExecutor | None = None,
        live: bool = False,
        fallback_interval: float = 5.0,
        backoff: Backoff | None = None,
        handle_signals: bool = False,
        close_gateway: bool = True,
        sync: ExchangeSync | None = None,
    ) -> None:
        self.ledger = ledger
        self.gateway = gateway
        self.settings = settings or ledger.settings
        self.rules = (
            tuple(rules) if rules is not None else parse_rules(self.settings.partial_exit_rules)
        )
        self.exit_executor = exit_executor
        self.live = live
        self.fallback_interval = fallback_interval
        self.backoff = backoff or Backoff()
        self.handle_signals = handle_signals
        self.close_gateway = close_gateway
        self.sync = sync or ExchangeSync(self.settings)
        # what happened, for dashboards and tests
        self.consecutive_failures = 0
        self.delays: list[float] = []
        self.exits: list[tuple[str, str]] = []
        self.backups: list[Path] = []
        self.next_backup_in: float | None = None
        self.fatal: ExchangeAuthError | None = None
        self.stop_reason: str | None = None
        self.running = False
        self._attempted: set[tuple[str, str]] = set()
        # live marks: how many the ticker stream delivered, how many the throttle logged
        self.marks_seen = 0
        self.marks_logged = 0
        self._changed = anyio.Event()
        self._wake = anyio.Event()
        self._group: TaskGroup | None = None

    # -- control ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled or signalled; raises ExchangeAuthError when the keys are refused."""
        self.running = True
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                if self.gateway is not None:
                    group.start_soon(self._sync_loop, self.gateway)
                    if self.live:
                        group.start_soon(self._watch, self.gateway)
                        group.start_soon(self._marks_loop, self.gateway)
                group.start_soon(self._rules_loop)
                if self.settings.auto_backup_enabled:
                    group.start_soon(self._backup_loop)
                if self.handle_signals:
                    group.start_soon(self._signals)
                self._notify()
        finally:
            self._group = None
            self.running = False
            with anyio.CancelScope(shield=True):
                await self._shutdown()
            self._notify()
        if self.fatal is not None:
            raise self.fatal

    def stop(self, reason: str = "stop requested") -> None:
        """Ask run() to finish (from the service's own event loop)."""
        if self._group is not None:
            self.stop_reason = self.stop_reason or reason
            self._group.cancel_scope.cancel()

    def request_sync(self) -> None:
        """Run the next exchange sync now rather than at the end of the interval."""
        self._wake.set()

    async def wait_for(self, predicate: Callable[[BotService], bool]) -> None:
        """Until predicate(self) holds (checked after every sync, exit and backup); bound it
        with anyio.fail_after."""
        while not predicate(self):
            changed = self._changed
            await changed.wait()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _shutdown(self) -> None:
        try:
            path = await self.ledger.write_snapshot()
            log.info("service stopped (%s); snapshot written to %s", self.stop_reason, path)
        except (OSError, SnapshotError) as exc:
            log.error("final snapshot failed: %s (the log is intact)", exc)
        if self.gateway is not None and self.close_gateway:
            close = getattr(self.gateway, "close", None)
            if close is not None:
                await close()

    def _stop_fatal(self, exc: ExchangeAuthError) -> None:
        self.fatal = exc
        log.error("stopping the bot service: %s", exc)
        self.stop("the exchange refused the API keys")

    # -- tasks ------------------------------------------------------------------------------

    async def _sync_loop(self, gateway: Gateway) -> None:
        interval = self.settings.position_sync_interval
        while True:
            self._wake = anyio.Event()
            try:
                outcome = await self.sync.sync(self.ledger, gateway)
            except ExchangeAuthError as exc:
                self._stop_fatal(exc)
                return
            except (ExchangeError, StoreError) as exc:
                if isinstance(exc, StoreError):
                    log.error("sync could not append (%s): retrying", exc)
                self.consecutive_failures += 1
                delay = self.backoff.delay(self.consecutive_failures)
                wait = exc.retry_after if isinstance(exc, ExchangeUnavailable) else 0.0
                if wait > delay:
                    # an IP ban (HTTP 403): retrying sooner would only prolong it
                    delay = wait
                    log.warning("%s", exc)
                self.delays.append(delay)
                log.info("next sync attempt in %.2fs", delay)
            else:
                if self.consecutive_failures:
                    log.info("sync recovered after %d failure(s)", self.consecutive_failures)
                self.consecutive_failures = 0
                delay = interval
                if outcome.appended:
                    await self._snapshot()
            self._notify()
            with anyio.move_on_after(delay):
                await self._wake.wait()

    async def _watch(self, gateway: Gateway) -> None:
        if not getattr(gateway, "can_watch", False):
            log.warning("live mode needs a ccxt.pro client: polling only")
            return
        watching = cast(WatchingGateway, gateway)
        try:
            await self.sync.watch(self.ledger, watching, fallback_interval=self.fallback_interval)
        except ExchangeAuthError as exc:
            self._stop_fatal(exc)
        except ExchangeError as exc:
            log.warning("live updates unavailable (%s): polling only", exc)

    async def _marks_loop(self, gateway: Gateway) -> None:
        """Follow the public ticker stream for the open positions' marks.

        The exit rules see every mark (a mark that makes a rule due is logged at once, then the
        rule fires on it); other marks are logged only when the throttle allows (time since the
        last logged mark, or a price move), so a live stream does not flood the log.
        """
        watch = getattr(gateway, "watch_marks", None)
        if watch is None or not getattr(gateway, "can_watch_marks", False):
            log.warning("live marks need a ccxt.pro client (watch_tickers): REST marks only")
            return
        failures = 0
        while True:
            symbols = sorted({p.symbol for p in self.ledger.book.open.values()})
            if not symbols:
                await anyio.sleep(self.fallback_interval)
                continue
            try:
                with anyio.move_on_after(max(self.fallback_interval, 1.0)):
                    marks = await watch(symbols)
                    failures = 0
                    for symbol, price in marks.items():
                        await self.on_mark(symbol, price)
            except ExchangeAuthError as exc:
                self._stop_fatal(exc)
                return
            except (ExchangeError, StoreError) as exc:
                failures += 1
                log.warning("ticker stream: %s (REST marks meanwhile)", exc)
                await anyio.sleep(min(self.fallback_interval, 0.05 * 2 ** min(failures, 10)))

    async def on_mark(self, symbol: str, price: Decimal) -> bool:
        """One live mark for `symbol`; True when it was logged."""
        self.marks_seen += 1
        market = market_key(symbol)
        now = self.sync.clock()
        policy = self.sync.policy
        logged = False
        for position in list(self.ledger.book.open.values()):
            if market_key(position.symbol) != market:
                continue
            event = PositionMarked(
                position_id=position.position_id, mark_price=price, source=Source.EXCHANGE
            )
            view = marked(position, event, now)
            due = bool(due_exits(view, self.rules))
            if not due and not mark_worth_logging(position, price, now, policy):
                continue

            def decide(book: object, event: PositionMarked = event) -> list[Plan]:
                return [Plan(event)]

            await self.ledger.transact(decide)
            self.marks_logged += 1
            logged = True
        self._notify()
        return logged

    async def _snapshot(self) -> None:
        try:
            await self.ledger.write_snapshot()
        except (OSError, SnapshotError) as exc:
            log.error("snapshot failed: %s (the log is intact)", exc)

    async def _rules_loop(self) -> None:
        if not self.rules:
            return
        start = self.ledger.last_seq
        for position in list(self.ledger.book.open.values()):
            await self._check(position.position_id)
        async for record in self.ledger.subscribe(from_seq=start):
            event = record.event
            if isinstance(event, PositionMarked | PositionIncreased | PositionOpened):
                await self._check(event.position_id)

    async def _check(self, position_id: str) -> None:
        """Fire the due rules of one position, one at a time against its current state."""
        while True:
            # Placing an exit and recording it hold the sync's lock: a sync (or a WebSocket
            # update) in between would take the exchange's reduce for a manual one.
            with anyio.CancelScope(shield=True):  # an exit placed is an exit recorded
                async with self.sync.lock:
                    fired = await self._fire_next(position_id)
            if fired is None:
                return
            self._notify()
            if not fired:
                return

    async def _fire_next(self, position_id: str) -> bool | None:
        """Place and record the first due exit; None when none is due, False when it failed."""
        position = self.ledger.book.open.get(position_id)
        if position is None:
            return None
        skip = {rule for pid, rule in self._attempted if pid == position_id}
        orders = due_exits(position, self.rules, skip=skip)
        if not orders:
            return None
        order = orders[0]
        self._attempted.add((position_id, order.rule))
        fill = ExitFill(qty=order.qty, price=order.price)
        if self.exit_executor is not None:
            # remembered durably BEFORE the order goes out: a crash after placing it can never
            # fire the same rule again on the remainder (the sync books the reduce it made)
            if not await self._intend(order):
                self._attempted.discard((position_id, order.rule))
                return False
            try:
                placed = await self.exit_executor(position, order)
            except ExchangeAuthError as exc:
                await self._abandon(order, str(exc))
                self._stop_fatal(exc)
                return False
            except ExchangeError as exc:
                log.warning("%s on %s not placed: %s", order.rule, position_id, exc)
                await self._abandon(order, str(exc))
                self._attempted.discard((position_id, order.rule))  # retried on the next mark
                return False
            if placed is None:
                await self._abandon(order, "the executor placed nothing")
                return False
            fill = placed
        try:
            await self.ledger.register_partial_exit(
                position_id,
                qty=fill.qty,
                price=fill.price,
                realized_pnl=fill.realized_pnl,
                fee=fill.fee,
                reason=order.rule,
                rule=order.rule,
            )
        except (CommandRejected, StoreError) as exc:
            log.error("%s on %s not recorded: %s", order.rule, position_id, exc)
            return False
        self.exits.append((position_id, order.rule))
        log.info(
            "%s: exited %s of %s at %s (ROE %.2f%%)",
            order.rule,
            fill.qty,
            position_id,
            fill.price,
            order.roe_pct,
        )
        return True

    async def _intend(self, order: ExitOrder) -> bool:
        """Append ExitIntended for the order; False when it could not be stored."""
        event = ExitIntended(
            position_id=order.position_id,
            rule=order.rule,
            qty=order.qty,
            order_link_id=order.order_link_id,
        )

        def decide(book: object) -> list[Plan]:
            return [Plan(event)]

        try:
            await self.ledger.transact(decide)
        except StoreError as exc:
            log.error(
                "%s on %s not placed: its intent could not be stored: %s",
                order.rule,
                order.position_id,
                exc,
            )
            return False
        return True

    async def _abandon(self, order: ExitOrder, reason: str) -> None:
        """The intended order was not placed: the rule may fire again."""
        event = ExitAbandoned(
            position_id=order.position_id,
            rule=order.rule,
            order_link_id=order.order_link_id,
            reason=reason[:200],
        )

        def decide(book: object) -> list[Plan]:
            return [Plan(event)]

        try:
            await self.ledger.transact(decide)
        except StoreError as exc:
            log.error("could not record that %s was not placed: %s", order.rule, exc)

    async def _backup_loop(self) -> None:
        interval = self.settings.backup_interval_hours * 3600
        folder = Path(self.settings.backup_dir)
        while True:
            newest = max((p.stat().st_mtime for p in folder.glob("ledger-*.db")), default=None)
            due_in = 0.0 if newest is None else interval - (time.time() - newest)
            if due_in > 0:
                self.next_backup_in = due_in
                self._notify()
                await anyio.sleep(due_in)
                continue
            try:
                path = await self.ledger.backup(folder)
            except (StoreError, OSError) as exc:
                log.error("backup to %s failed: %s", folder, exc)
                await anyio.sleep(interval)
                continue
            self.backups.append(path)
            log.info("backup written to %s", path)
            self._notify()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as received:
            async for signum in received:
                name = signal.Signals(signum).name
                log.info("%s received: shutting down", name)
                self.stop(name)
                return
