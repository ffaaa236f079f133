"""ThreadSafePositionManager: the seed's blocking API, callable from any thread, over the Ledger.

The Ledger runs on its own event loop in a daemon thread; every call is handed to it through
an anyio blocking portal. A call from inside another running event loop (the seed's bot calls
from asyncio tasks) therefore never deadlocks: it blocks that loop only for the call itself.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio
import msgspec
from anyio.from_thread import BlockingPortal

from ledger.commands import OpenPosition
from ledger.errors import InvalidValue, PositionAlreadyClosed, StoreUnavailable, UnknownPosition
from ledger.events import PositionMarked
from ledger.rules import decide
from ledger.service import Ledger, Number, Plan, new_position_id
from ledger.settings import Settings, load_settings
from ledger.values import Side, optional_decimal, positive, to_decimal
from projections.book import Book
from projections.pnl import qty_from_notional
from projections.positions import Position

if TYPE_CHECKING:
    from ledger.exchange.sync import ExchangeSync

T = TypeVar("T")

# The seed's ThreadSafePosition fields a caller may pass to thread_safe_create_position.
_SEED_FIELDS = frozenset(
    {
        "symbol", "side", "entry_price", "current_price", "position_size", "leverage",
        "unrealized_pnl", "roe_percentage", "open_time", "close_time", "confidence",
        "open_reason", "close_reason", "atr", "adx", "volatility", "real_initial_margin",
        "partial_exits", "position_id", "fee",
    }
)  # fmt: skip


class ThreadSafePositionManager:
    """Drop-in for the seed's class, backed by the event log.

    Returned Position objects are immutable snapshots: later changes never alter them.
    """

    def __init__(
        self,
        file_path: str | Path | None = None,
        *,
        db_path: str | Path | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        self.file_path = Path(file_path or self.settings.positions_file)
        self.db_path = Path(db_path or self.file_path.with_name("ledger.db"))
        self._portal: BlockingPortal | None = None
        self._ledger: Ledger | None = None
        self._failure: BaseException | None = None
        self._stop: anyio.Event | None = None
        self._closing = threading.Lock()
        self._exchange_sync: ExchangeSync | None = None
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="position-ledger", daemon=True
        )
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            raise self._failure
        atexit.register(self.close)

    def _run(self, ready: threading.Event) -> None:
        async def main() -> None:
            try:
                async with (
                    BlockingPortal() as portal,
                    Ledger(
                        self.db_path, snapshot_path=self.file_path, settings=self.settings
                    ) as ledger,
                ):
                    self._portal, self._ledger = portal, ledger
                    self._stop = anyio.Event()
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                self._failure = exc
                raise
            finally:
                ready.set()

        # a failure is kept in self._failure and raised in the caller's thread
        with contextlib.suppress(BaseException):
            anyio.run(main)

    def _call(self, fn: Callable[[Ledger], T]) -> T:
        portal, ledger = self._portal, self._ledger
        if portal is None or ledger is None or not self._thread.is_alive():
            raise StoreUnavailable("the position manager is closed")
        if threading.current_thread() is self._thread:
            return fn(ledger)
        try:
            return portal.call(lambda: fn(ledger))
        except RuntimeError as exc:
            if self._portal is not None and self._thread.is_alive():
                raise
            raise StoreUnavailable("the position manager was closed meanwhile") from exc

    def _acall(self, fn: Callable[[Ledger], Awaitable[T]]) -> T:
        portal, ledger = self._portal, self._ledger
        if portal is None or ledger is None or not self._thread.is_alive():
            raise StoreUnavailable("the position manager is closed")

        async def run() -> T:
            return await fn(ledger)

        if threading.current_thread() is self._thread:
            raise StoreUnavailable(
                "a blocking write cannot be made from the ledger's own thread: use the Ledger"
            )
        try:
            return portal.call(run)
        except RuntimeError as exc:
            if self._portal is not None and self._thread.is_alive():
                raise
            raise StoreUnavailable("the position manager was closed meanwhile") from exc

    def close(self) -> None:
        """Finish queued writes, write positions.json, close the log. Idempotent."""
        with self._closing:
            portal, stop = self._portal, self._stop
            if portal is None or stop is None or not self._thread.is_alive():
                return
            self._portal = None
        portal.call(stop.set)
        self._thread.join()
        atexit.unregister(self.close)
        self._ledger = None

    def __enter__(self) -> ThreadSafePositionManager:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            raise StoreUnavailable("the position manager is closed")
        return self._ledger

    # -- the seed's commands ------------------------------------------------------------

    def thread_safe_create_position(self, **kwargs: object) -> str:
        """Open a position from the seed's fields (position_size is USD notional at entry).

        Returns the new position id. Raises InvalidValue, LeverageOutOfRange,
        DuplicatePosition, TooManyOpenPositions.
        """
        unknown = set(kwargs) - _SEED_FIELDS
        if unknown:
            raise InvalidValue("kwargs", sorted(unknown), "not a position field")
        for required in ("symbol", "side", "entry_price", "position_size", "leverage"):
            if kwargs.get(required) is None:
                raise InvalidValue(required, None, "is required")
        entry = positive("entry_price", kwargs["entry_price"])
        leverage = kwargs["leverage"]
        if isinstance(leverage, float) and leverage.is_integer():
            leverage = int(leverage)
        command = OpenPosition(
            position_id=str(kwargs.get("position_id") or new_position_id()),
            symbol=str(kwargs["symbol"]),
            side=Side.parse(kwargs["side"]),
            qty=qty_from_notional(positive("position_size", kwargs["position_size"]), entry),
            entry_price=entry,
            leverage=leverage,  # type: ignore[arg-type]  # decide() checks its type and range
            fee=to_decimal("fee", kwargs.get("fee", 0)),
            confidence=optional_decimal("confidence", kwargs.get("confidence")),
            open_reason=str(kwargs.get("open_reason") or ""),
            atr=optional_decimal("atr", kwargs.get("atr")),
            adx=optional_decimal("adx", kwargs.get("adx")),
            volatility=optional_decimal("volatility", kwargs.get("volatility")),
            real_initial_margin=optional_decimal(
                "real_initial_margin", kwargs.get("real_initial_margin")
            ),
        )
        current = optional_decimal("current_price", kwargs.get("current_price"))
        if current is not None:
            current = positive("current_price", current)
        limits = self.settings.limits

        def plan(book: Book) -> list[Plan]:
            planned = [Plan(e) for e in decide(book, command, limits)]
            if current is not None and current != entry:
                planned.append(
                    Plan(PositionMarked(position_id=command.position_id, mark_price=current))
                )
            return planned

        self._acall(lambda ledger: ledger.transact(plan))
        return command.position_id

    def close_position(
        self, position_id: str, reason: str, exit_price: Number | None = None
    ) -> bool:
        """Close at exit_price (default: the last mark); False if unknown or already closed."""
        try:
            self._acall(
                lambda ledger: ledger.close_position(position_id, reason=reason, price=exit_price)
            )
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def register_partial_exit(
        self,
        position_id: str,
        exit_size: Number,
        exit_price: Number,
        realized_pnl: Number | None,
        reason: str,
    ) -> bool:
        """Record a partial exit of exit_size USD (notional at entry); False if unknown/closed.

        Raises ExitExceedsPosition and InvalidValue for a bad size or price.
        """
        try:
            self._acall(
                lambda ledger: ledger.register_partial_exit(
                    position_id,
                    notional=exit_size,
                    price=exit_price,
                    realized_pnl=realized_pnl,
                    reason=reason,
                )
            )
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def update_position_price(self, position_id: str, price: Number) -> bool:
        """Record a new mark price; False if unknown or closed."""
        try:
            self._acall(lambda ledger: ledger.mark(position_id, price))
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def save(self) -> Path:
        """Write positions.json now."""
        return self._acall(lambda ledger: ledger.write_snapshot())

    # -- the seed's queries -------------------------------------------------------------

    def get_active_positions(self) -> list[Position]:
        return self._call(lambda ledger: ledger.active_positions())

    def get_closed_positions(self) -> list[Position]:
        return self._call(lambda ledger: ledger.closed_positions())

    def get_position(self, position_id: str) -> Position | None:
        """An open position by id (closed ones are in get_closed_positions, as in the seed)."""
        return self._call(lambda ledger: ledger.book.open.get(position_id))

    def get_position_for_symbol(self, symbol: str) -> Position | None:
        return self._call(lambda ledger: ledger.get_position_for_symbol(symbol))

    def has_position_for_symbol(self, symbol: str) -> bool:
        return self._call(lambda ledger: ledger.has_position_for_symbol(symbol))

    def get_session_summary(self) -> dict[str, object]:
        """The seed's summary dict (Decimal values), plus the extra figures."""
        summary = self._call(lambda ledger: ledger.session_summary())
        return msgspec.structs.asdict(summary)

    async def thread_safe_sync_with_bybit(
        self, exchange: object
    ) -> tuple[list[Position], list[str]]:
        """The seed's sync with Bybit: returns (newly_opened, closed_ids).

        The fetches run with the caller's ccxt client (a ccxt.async_support.bybit) on the
        caller's event loop; the observations are then reconciled by the ledger's writer on its
        own loop, reached from a worker thread, so the caller's loop keeps running meanwhile.
        Unlike the seed, a failed fetch is not hidden as ([], []): it raises ExchangeError
        (ExchangeAuthError for refused keys) and the ledger is unchanged. The client is not
        closed.
        """
        from ledger.exchange.ccxt_client import ExchangeGateway
        from ledger.exchange.sync import ExchangeSync

        if self._exchange_sync is None:  # kept across calls: it counts absences between syncs
            self._exchange_sync = ExchangeSync(self.settings)
        syncer = self._exchange_sync
        gateway = ExchangeGateway(exchange, owns_client=False)
        book = await anyio.to_thread.run_sync(lambda: self._call(lambda ledger: ledger.book.copy()))
        snapshot = await syncer.fetch(gateway, book)
        outcome = await anyio.to_thread.run_sync(
            lambda: self._acall(lambda ledger: syncer.apply(ledger, snapshot))
        )
        return outcome.newly_opened, outcome.closed_ids
