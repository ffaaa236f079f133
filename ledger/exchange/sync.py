"""Exchange sync: fetch everything, then reconcile inside the ledger's write transaction.

`ExchangeSync.sync_once(ledger, gateway)` is the seed's thread_safe_sync_with_bybit done right:
a fetch that fails, times out, is rate limited or malformed changes nothing, is logged with the
reason and raised as a typed ExchangeError (the caller decides to back off); an empty position
list counts as "absent" only because the fetch succeeded. `watch` adds ccxt.pro's
watch_positions on top, falling back to polling while the socket is down.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol, TypeVar

import anyio
import msgspec
from anyio.abc import TaskStatus

from ledger.clock import Clock, system_clock
from ledger.envelope import Recorded
from ledger.errors import ExchangeAuthError, ExchangeError
from ledger.events import AnyEvent, BalanceObserved, PositionClosed, PositionOpened
from ledger.exchange.observations import (
    BalanceObservation,
    ClosedPnlObservation,
    ExchangeSnapshot,
    FundingObservation,
    PositionObservation,
    market_key,
)
from ledger.exchange.reconcile import ReconcilePolicy, ReconcileResult, reconcile
from ledger.service import Ledger, Plan
from ledger.settings import Settings
from projections.book import Book
from projections.positions import Position

__all__ = ["ExchangeSync", "Gateway", "SyncOutcome", "WatchingGateway"]

log = logging.getLogger("ledger.exchange")

A = TypeVar("A")
B = TypeVar("B")

# How far before the last good sync the next one looks again for records that arrived late.
_OVERLAP = timedelta(hours=1)
# How long after a close funding and closed-PnL rows are still fetched for it: a funding row
# can settle just before a close and be listed only afterwards, and a record of a close by hand
# is written after the position is gone.
_RECENT = timedelta(days=1)


class Gateway(Protocol):
    """What sync needs of an exchange (ExchangeGateway; a fake in tests)."""

    async def fetch_positions(self) -> list[PositionObservation]: ...
    async def fetch_balance(self) -> BalanceObservation: ...
    async def fetch_closed_pnl(self, *, since: datetime) -> list[ClosedPnlObservation]: ...
    async def fetch_funding(self, *, since: datetime) -> list[FundingObservation]: ...


class WatchingGateway(Gateway, Protocol):
    """A gateway with a position stream (ExchangeGateway over a ccxt.pro client)."""

    @property
    def can_watch(self) -> bool: ...
    async def watch_positions(self) -> tuple[list[PositionObservation], list[str]]: ...


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    """What one reconciliation appended (records already in the log are left out)."""

    result: ReconcileResult
    appended: list[Recorded]
    newly_opened: list[Position]
    closed_ids: list[str]


class ExchangeSync:
    """Sync state across calls: absence counts, the last good sync, the stream's health.

    One instance per ledger and exchange account. Syncs hold `lock`; so should code that
    changes the exchange and then records it (a reduce-only order, then its partial exit), or
    a sync in between would record the exchange's change as one made by hand.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        policy: ReconcilePolicy | None = None,
        clock: Clock = system_clock,
    ) -> None:
        settings = settings or Settings()
        self.policy = policy or ReconcilePolicy(
            absent_fetches_before_close=settings.absent_fetches_before_close,
            absent_min=timedelta(seconds=settings.absent_seconds_before_close),
            settle=timedelta(seconds=settings.sync_settle_seconds),
            mark_interval=timedelta(seconds=settings.mark_min_interval_seconds),
            mark_move=Decimal(str(settings.mark_min_move_pct)) / 100,
        )
        self.history_max = timedelta(days=settings.history_max_days)
        self._clock = clock
        self.absent_counts: dict[str, int] = {}
        self.absent_since: dict[str, datetime] = {}
        self.last_ok: datetime | None = None
        self.stream_up = False
        self.syncs_ok = 0
        self.syncs_failed = 0
        self.last_error: ExchangeError | None = None
        self.lock = anyio.Lock()

    def clock(self) -> datetime:
        """The sync's notion of now (the ledger's clock unless a test injected one)."""
        return self._clock()

    # -- one sync -------------------------------------------------------------------------

    async def sync_once(self, ledger: Ledger, gateway: Gateway) -> tuple[list[Position], list[str]]:
        """Fetch, reconcile, append; returns (newly_opened, closed_ids) like the seed.

        Raises ExchangeError (ExchangeAuthError: the keys were refused; the ledger is then
        unchanged), StoreError.
        """
        outcome = await self.sync(ledger, gateway)
        return outcome.newly_opened, outcome.closed_ids

    async def sync(self, ledger: Ledger, gateway: Gateway) -> SyncOutcome:
        """sync_once with the whole outcome (what was appended, the warnings)."""
        async with self.lock:
            snapshot = await self.fetch(gateway, ledger.book)
            return await self.apply(ledger, snapshot)

    async def fetch(self, gateway: Gateway, book: Book) -> ExchangeSnapshot:
        """Everything one sync needs, fetched before anything is decided; raises ExchangeError
        (logged) when any part fails."""
        started = self._clock()
        try:
            positions, balance = await _both(gateway.fetch_positions, gateway.fetch_balance)
            since = self._window_start(book, positions, started)
            closed_pnl: list[ClosedPnlObservation] = []
            funding: list[FundingObservation] = []
            if since is not None:
                closed_pnl, funding = await _both(
                    lambda: gateway.fetch_closed_pnl(since=since),
                    lambda: gateway.fetch_funding(since=since),
                )
        except ExchangeError as exc:
            self.syncs_failed += 1
            self.last_error = exc
            level = logging.ERROR if isinstance(exc, ExchangeAuthError) else logging.WARNING
            log.log(level, "exchange sync failed, ledger unchanged: %s", exc)
            raise
        return ExchangeSnapshot(
            fetched_at=started,
            positions=tuple(positions),
            closed_pnl=tuple(closed_pnl),
            funding=tuple(funding),
            balance=balance,
            complete=True,
            closed_pnl_since=since,
            funding_since=since,
            settle_coins=tuple(getattr(gateway, "settle_coins", ())),
        )

    def _window_start(
        self, book: Book, positions: Sequence[PositionObservation], now: datetime
    ) -> datetime | None:
        """Where the closed-PnL and funding lists start, or None when nothing can receive them.

        They are fetched while any position is open on either side, or closed recently, or
        still carries an estimate awaiting its record. They start at the oldest such position's
        open (its own rows only: never the years-old createdTime), no earlier than an hour
        before the last good sync (what the ledger already holds) nor `history_max_days` back;
        the gateway walks that span 7 days a query, newest first.
        """
        recent = [
            p
            for p in book.recently_closed(200)
            if p.estimates or (p.close_time is not None and now - p.close_time < _RECENT)
        ]
        starts = [p.open_time for p in book.open.values()]
        starts += [p.open_time for p in recent]
        starts += [p.opened_at or now for p in positions]
        if not starts:
            return None
        since = max(min(starts) - timedelta(minutes=1), now - self.history_max)
        if self.last_ok is not None:
            since = max(since, self.last_ok - _OVERLAP)
        return min(since, now - _OVERLAP)

    async def apply(self, ledger: Ledger, snapshot: ExchangeSnapshot) -> SyncOutcome:
        """Reconcile the snapshot against the ledger's current book inside its write
        transaction and append the result (shielded: an append in flight finishes)."""
        decided: list[tuple[ReconcileResult, int]] = []
        policy = self.policy
        counts = dict(self.absent_counts)
        since = dict(self.absent_since)

        account = ledger.account

        def decider(book: Book) -> list[Plan]:
            # this bot's account alone: another bot's positions in a shared ledger are not
            # on this bot's exchange account, and must never be closed or adopted from here
            result = reconcile(book.only(account), snapshot, counts, policy, since)
            decided.append((result, book.last_seq))
            return [Plan(_owned(p.event, account), p.key, p.occurred_at) for p in result.plans]

        try:
            with anyio.CancelScope(shield=True):
                records = await ledger.transact(decider)
        except ExchangeError as exc:
            self.syncs_failed += 1
            self.last_error = exc
            log.warning("exchange sync refused, ledger unchanged: %s", exc)
            raise
        result, before = decided[-1]
        fresh = [r for r in records if r.seq > before]
        opened = {r.event.position_id for r in fresh if isinstance(r.event, PositionOpened)}
        closed = {r.event.position_id for r in fresh if isinstance(r.event, PositionClosed)}
        self.absent_counts = dict(result.absent_counts)
        self.absent_since = dict(result.absent_since)
        if snapshot.complete:
            self.last_ok = snapshot.fetched_at
            self.syncs_ok += 1
        for warning in result.warnings:
            log.info("sync: %s", warning)
        if result.unseen:
            log.warning(
                "sync cannot see %d open position(s) (%s): their settle coin is not listed; "
                "add it to ExchangeGateway(settle_coins=...)",
                len(result.unseen),
                ", ".join(result.unseen),
            )
        newly_opened = [
            p for pid in result.opened if pid in opened if (p := ledger.get_position(pid))
        ]
        closed_ids = [pid for pid in result.closed if pid in closed]
        if fresh:
            log.info(
                "sync appended %d event(s): %d adopted, %d closed",
                len(fresh),
                len(newly_opened),
                len(closed_ids),
            )
        return SyncOutcome(result, fresh, newly_opened, closed_ids)

    # -- live -------------------------------------------------------------------------------

    async def watch(
        self,
        ledger: Ledger,
        gateway: WatchingGateway,
        *,
        fallback_interval: float = 5.0,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Follow watch_positions until cancelled.

        A position that changed only in price is marked at once; one that appeared, changed
        size or went flat triggers a full sync (closes still need the evidence rule). While the
        socket is down, a full sync runs every fallback_interval seconds and the stream is
        reconnected. Raises ExchangeAuthError.
        """
        if not gateway.can_watch:
            raise ExchangeError("live mode needs a ccxt.pro client (watch_positions)")
        self.stream_up = True
        async with anyio.create_task_group() as group:
            group.start_soon(self._fallback_poller, ledger, gateway, fallback_interval)
            task_status.started()
            failures = 0
            while True:
                try:
                    changed, flat = await gateway.watch_positions()
                except ExchangeAuthError:
                    raise
                except ExchangeError as exc:
                    if self.stream_up:
                        log.warning(
                            "position stream lost (%s): polling every %gs until it is back",
                            exc,
                            fallback_interval,
                        )
                    self.stream_up = False
                    failures += 1
                    await anyio.sleep(min(fallback_interval, 0.05 * 2 ** min(failures, 10)))
                    continue
                failures = 0
                if not self.stream_up:
                    log.info("position stream is back")
                self.stream_up = True
                await self._on_update(ledger, gateway, changed, flat)

    async def _on_update(
        self,
        ledger: Ledger,
        gateway: Gateway,
        changed: list[PositionObservation],
        flat: list[str],
    ) -> None:
        if not changed and not flat:
            return
        book = ledger.book
        known = {(market_key(p.symbol), p.side): p for p in book.open.values()}
        structural = bool(flat) or any(
            (row.key not in known) or known[row.key].qty != row.qty for row in changed
        )
        try:
            if structural:
                await self.sync(ledger, gateway)
            else:
                async with self.lock:
                    snapshot = ExchangeSnapshot(
                        fetched_at=self._clock(), positions=tuple(changed), complete=False
                    )
                    await self.apply(ledger, snapshot)
        except ExchangeAuthError:
            raise
        except ExchangeError:
            pass  # logged by fetch/apply; the periodic sync is the backstop

    async def _fallback_poller(self, ledger: Ledger, gateway: Gateway, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if self.stream_up:
                continue
            try:
                await self.sync(ledger, gateway)
            except ExchangeAuthError:
                raise
            except ExchangeError:
                pass  # logged; the next poll retries


async def _both(
    first: Callable[[], Awaitable[A]], second: Callable[[], Awaitable[B]]
) -> tuple[A, B]:
    """Run two fetches concurrently; the first failure cancels the other and is raised."""
    results: dict[int, object] = {}

    async def run(index: int, call: Callable[[], Awaitable[object]]) -> None:
        results[index] = await call()

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(run, 0, first)
            group.start_soon(run, 1, second)
    except BaseExceptionGroup as group_error:
        error = _first_exchange_error(group_error)
        raise error from error.__cause__
    return results[0], results[1]  # type: ignore[return-value]


def _first_exchange_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """An auth error first (it stops the service), else the first error raised."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for leaf in leaves:
        if isinstance(leaf, ExchangeAuthError):
            return leaf
    return leaves[0]


def _owned(event: AnyEvent, account: str) -> AnyEvent:
    """The event as this bot's account's: adopted positions and balances carry it."""
    if isinstance(event, PositionOpened | BalanceObserved) and event.account != account:
        return msgspec.structs.replace(event, account=account)
    return event
