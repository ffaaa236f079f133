"""ThreadSafePositionManager: the seed's blocking API, callable from any thread, over the Ledger.

The Ledger runs on its own event loop in a daemon thread; every call is handed to it through
an anyio blocking portal. A call from inside another running event loop (the seed's bot calls
from asyncio tasks) therefore never deadlocks: it blocks that loop only for the call itself.

What it returns speaks the seed's types (`ledger.seed_edge`): floats, ISO strings, dicts and
copies; the exact Decimal views are one step away, on `manager.exact`.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import anyio
from anyio.from_thread import BlockingPortal

from ledger.clock import system_clock
from ledger.commands import IncreasePosition, OpenPosition, RecordPartialExit
from ledger.errors import InvalidValue, PositionAlreadyClosed, StoreUnavailable, UnknownPosition
from ledger.events import PositionMarked
from ledger.rules import decide
from ledger.seed_edge import SeedDict, SeedPosition, SeedScalar, seed_position, seed_summary
from ledger.service import (
    Ledger,
    Number,
    Plan,
    close_command,
    mark_command,
    new_position_id,
    partial_exit_command,
)
from ledger.settings import Settings, load_settings
from ledger.store.factory import Location, is_url
from ledger.values import (
    Side,
    Source,
    aware_time,
    exact,
    identifier,
    non_negative,
    optional_decimal,
    positive,
    text,
    to_decimal,
)
from projections.book import Book
from projections.pnl import dust_of, initial_margin, price_pnl, qty_from_notional, roe_pct
from projections.positions import Position
from projections.stats import SessionSummary

if TYPE_CHECKING:
    from ledger.exchange.sync import ExchangeSync

T = TypeVar("T")

# The seed's POSITIONS_FILE: where ThreadSafePositionManager() looks when given no path and no
# positions_file is configured; the log goes beside it as ledger.db.
SEED_POSITIONS_FILE = "positions.json"

# The fields thread_safe_create_position needs (each not None), in the order they are checked,
# and the usual call's keyword arguments: those and no other.
_REQUIRED_FIELDS = ("symbol", "side", "entry_price", "position_size", "leverage")
_ONLY_REQUIRED = frozenset(_REQUIRED_FIELDS)

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

    With no path it uses the seed's `./positions.json` and `./ledger.db` beside it (unless
    `positions_file` / `db_path` are configured). A seed bot's own positions.json found there
    is imported at start-up (see `Ledger`). What it returns is in the seed's types
    (`SeedPosition`, dicts, floats, ISO strings), new objects each call; `exact` gives the
    same reads as the ledger's exact Decimal views.
    """

    def __init__(
        self,
        file_path: str | Path | None = None,
        *,
        db_path: str | Path | None = None,
        settings: Settings | None = None,
        account: str | None = None,
    ) -> None:
        self.settings = settings or load_settings()
        # this bot's account in a shared ledger (default: the `account` setting)
        self.account = account or self.settings.account
        defaults = Settings()
        if file_path is None:
            configured = self.settings.positions_file != defaults.positions_file
            file_path = self.settings.positions_file if configured else SEED_POSITIONS_FILE
        if db_path is None and self.settings.db_path != defaults.db_path:
            db_path = self.settings.db_path
        self.file_path = Path(file_path)
        location = db_path or self.file_path.with_name("ledger.db")
        # a SQLite file or a postgresql:// URL shared by a fleet (see ledger.store.factory)
        self.db_path: Location = location if is_url(location) else Path(location)
        self._trading = _TradingLock()
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
                        self.db_path,
                        snapshot_path=self.file_path,
                        settings=self.settings,
                        account=self.account,
                    ) as ledger,
                ):
                    self._portal, self._ledger = portal, ledger
                    self._stop = anyio.Event()
                    ready.set()
                    await self._stop.wait()
            except BaseException as exc:
                # the portal's task group wraps what opening the ledger raised: the caller
                # gets the ledger's own typed error (`except LedgerError:` must catch it)
                self._failure = _sole_error(exc)
                raise
            finally:
                ready.set()

        # a failure is kept in self._failure and raised in the caller's thread
        with contextlib.suppress(BaseException):
            anyio.run(main)

    def _call(self, fn: Callable[[Ledger], T]) -> T:
        """A read, on the caller's own thread: the Ledger publishes each committed state as
        a new book that is never changed afterwards, so no hand-off is needed to read it."""
        portal, ledger = self._portal, self._ledger
        if portal is None or ledger is None or not self._thread.is_alive():
            raise StoreUnavailable("the position manager is closed")
        return fn(ledger)

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

        Every field is kept or refused: open_time (the caller's time, ISO string or datetime;
        naive is UTC), confidence, open_reason, atr, adx, volatility, real_initial_margin and
        fee are stored; current_price and unrealized_pnl become the first mark; a
        roe_percentage must agree with what the ledger derives; close_time, close_reason and
        partial_exits must be empty (record exits and closes with their own calls).
        Returns the new position id. Raises InvalidValue, LeverageOutOfRange,
        DuplicatePosition, TooManyOpenPositions.
        """
        if kwargs.keys() == _ONLY_REQUIRED:
            # The usual call, the five fields a position needs and no other: what the checks
            # below make of it, in the same order, without looking up the fifteen fields it
            # does not give (no time, no mark, no id: a new one; the rest at the defaults the
            # command gives them). A third of the manager's own CPU of a create.
            symbol, side, entry_price, size, leverage = (
                kwargs["symbol"],
                kwargs["side"],
                kwargs["entry_price"],
                kwargs["position_size"],
                kwargs["leverage"],
            )
            if not (
                symbol is None
                or side is None
                or entry_price is None
                or size is None
                or leverage is None
            ):
                entry = positive("entry_price", entry_price)
                if isinstance(leverage, float) and leverage.is_integer():
                    leverage = int(leverage)
                command = OpenPosition(
                    position_id=new_position_id(),
                    symbol=text("symbol", symbol),
                    side=Side.parse(side),
                    qty=qty_from_notional(positive("position_size", size), entry),
                    entry_price=entry,
                    leverage=leverage,  # type: ignore[arg-type]  # decide() checks it
                    account=self.account,
                )
                ledger = self.ledger
                ledger.transact_blocking(ledger._built_decider(command))
                return command.position_id
        unknown = set(kwargs) - _SEED_FIELDS
        if unknown:
            raise InvalidValue("kwargs", sorted(unknown), "not a position field")
        for required in _REQUIRED_FIELDS:
            if kwargs.get(required) is None:
                raise InvalidValue(required, None, "is required")
        for closing in ("close_time", "close_reason"):
            if kwargs.get(closing) is not None:
                raise InvalidValue(
                    closing, kwargs[closing], "a new position is open: use close_position"
                )
        if kwargs.get("partial_exits"):
            raise InvalidValue(
                "partial_exits",
                kwargs["partial_exits"],
                "a new position has none: use register_partial_exit (or import the file)",
            )
        position_id = kwargs.get("position_id") or new_position_id()
        if not isinstance(position_id, str):
            raise InvalidValue("position_id", position_id, "must be a string")
        reason = kwargs.get("open_reason") or ""
        if not isinstance(reason, str):
            raise InvalidValue("open_reason", reason, "must be a string")
        opened_at = _optional_time("open_time", kwargs.get("open_time"))
        if opened_at is not None and opened_at > system_clock() + _CLOCK_SKEW:
            # the position's later events are stamped now: they must not come before its open
            raise InvalidValue(
                "open_time",
                kwargs["open_time"],
                "is in the future (a naive time is UTC: use datetime.now(UTC), not datetime.now())",
            )
        entry = positive("entry_price", kwargs["entry_price"])
        leverage = kwargs["leverage"]
        if isinstance(leverage, float) and leverage.is_integer():
            leverage = int(leverage)
        command = OpenPosition(
            position_id=position_id,
            symbol=text("symbol", kwargs["symbol"]),
            side=Side.parse(kwargs["side"]),
            qty=qty_from_notional(positive("position_size", kwargs["position_size"]), entry),
            entry_price=entry,
            leverage=leverage,  # type: ignore[arg-type]  # decide() checks its type and range
            fee=to_decimal("fee", kwargs.get("fee", 0)),
            confidence=optional_decimal("confidence", kwargs.get("confidence")),
            open_reason=reason,
            atr=optional_decimal("atr", kwargs.get("atr")),
            adx=optional_decimal("adx", kwargs.get("adx")),
            volatility=optional_decimal("volatility", kwargs.get("volatility")),
            real_initial_margin=optional_decimal(
                "real_initial_margin", kwargs.get("real_initial_margin")
            ),
            account=self.account,
        )
        mark = _first_mark(command, kwargs)
        if mark is None and opened_at is None:
            # the command alone, now: the ledger's command path (checked once here, decided
            # in the transaction like any command), the same events as the plan below
            ledger = self.ledger
            ledger.transact_blocking(ledger._built_decider(command))
            return command.position_id
        limits = self.settings.limits

        def plan(book: Book) -> list[Plan]:
            planned = [Plan(e, occurred_at=opened_at) for e in decide(book, command, limits)]
            if mark is not None:
                planned.append(Plan(mark, occurred_at=opened_at))
            return planned

        self.ledger.transact_blocking(plan)
        return command.position_id

    def close_position(
        self, position_id: str, reason: str, exit_price: Number | None = None
    ) -> bool:
        """Close at exit_price (default: the last mark); False if unknown or already closed."""
        ledger = self.ledger
        try:
            ledger.transact_blocking(
                ledger._built_decider(close_command(position_id, reason=reason, price=exit_price))
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
        ledger = self.ledger
        command = partial_exit_command(
            position_id,
            notional=exit_size,
            price=exit_price,
            realized_pnl=realized_pnl,
            reason=reason,
        )
        try:
            ledger.transact_blocking(ledger._built_decider(command))
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def update_position_price(self, position_id: str, price: Number) -> bool:
        """Record a new mark price; False if unknown or closed."""
        try:
            self.ledger.execute_blocking(mark_command(position_id, price))
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def update_position_size(
        self,
        position_id: str,
        new_size: Number,
        price: Number | None = None,
        reason: str = "update_position_size",
    ) -> bool:
        """Set position_size (USD notional at entry) to new_size, as the seed's method does.

        Less is a partial exit of the difference (at price, default the last mark; its PnL
        computed), nothing left closes the position; more is an increase of new_size -
        position_size USD at price (the entry price becomes the average). False if unknown
        or closed. Raises InvalidValue (a negative size, a bad price).
        """
        identifier("position_id", position_id)
        text("reason", reason)
        size = non_negative("new_size", new_size)
        given = None if price is None else positive("price", price)
        limits = self.settings.limits

        def plan(book: Book) -> list[Plan]:
            position = book.open.get(position_id)
            if position is None:
                # decide() raises UnknownPosition / PositionAlreadyClosed for this id
                probe = RecordPartialExit(position_id=position_id, price=Decimal(1), qty=size)
                return [Plan(e) for e in decide(book, probe, limits)]
            at = position.current_price if given is None else given
            change = size - position.position_size
            # the dust rule: a change worth less than dust of the opening qty is a float's
            # rounding of the size the caller read back, not a trade
            if abs(qty_from_notional(change, position.entry_price)) <= dust_of(
                position.initial_qty
            ):
                return []
            if change < 0:
                command: RecordPartialExit | IncreasePosition = RecordPartialExit(
                    position_id=position_id, notional=-change, price=at, reason=reason
                )
            else:
                command = IncreasePosition(
                    position_id=position_id,
                    qty=qty_from_notional(change, at),
                    price=at,
                    source=Source.BOT,
                )
            return [Plan(e) for e in decide(book, command, limits)]

        try:
            self.ledger.transact_blocking(plan)
        except (UnknownPosition, PositionAlreadyClosed):
            return False
        return True

    def save(self) -> Path:
        """Write positions.json now; raises SnapshotError when it cannot be written (the
        ledger goes on working: the file is a cache of the log)."""
        return self._acall(lambda ledger: ledger.write_snapshot())

    # -- serialising the bot's own exchange changes with the sync -------------------------

    def trading(self) -> Trading:
        """Hold off this manager's exchange sync while the bot changes the exchange and
        records the change: `with manager.trading():` from a thread, `async with` from an
        asyncio task. A sync started meanwhile waits, so it never sees the exchange ahead of
        the ledger and records the bot's own order as a manual trade (the double count)."""
        return Trading(self._trading)

    # -- the seed's queries -------------------------------------------------------------

    def get_active_positions(self) -> list[SeedPosition]:
        return [seed_position(p) for p in self.exact.get_active_positions()]

    def get_closed_positions(self) -> list[SeedPosition]:
        return [seed_position(p) for p in self.exact.get_closed_positions()]

    def get_position(self, position_id: str) -> SeedPosition | None:
        """An open position by id (closed ones are in get_closed_positions, as in the seed)."""
        return _seed_or_none(self.exact.get_position(position_id))

    def get_position_for_symbol(self, symbol: str) -> SeedPosition | None:
        return _seed_or_none(self.exact.get_position_for_symbol(symbol))

    def has_position_for_symbol(self, symbol: str) -> bool:
        return self._call(lambda ledger: ledger.has_position_for_symbol(symbol))

    def get_session_summary(self) -> dict[str, SeedScalar | dict[str, SeedDict]]:
        """The seed's summary dict (floats and ints, `json.dumps` takes it), plus the extra
        figures (per_symbol a dict of dicts)."""
        return seed_summary(self.exact.get_session_summary())

    @property
    def exact(self) -> ExactView:
        """The same reads with the ledger's exact values: immutable Positions with Decimal
        money and aware datetimes, and the SessionSummary struct."""
        return ExactView(self)

    async def thread_safe_sync_with_bybit(
        self, exchange: object
    ) -> tuple[list[SeedPosition], list[str]]:
        """The seed's sync with Bybit: returns (newly_opened, closed_ids).

        The fetches run with the caller's ccxt client (a ccxt.async_support.bybit) on the
        caller's event loop; the observations are then reconciled by the ledger's writer on its
        own loop, reached from a worker thread, so the caller's loop keeps running meanwhile.
        Unlike the seed, a failed fetch is not hidden as ([], []): it raises ExchangeError
        (ExchangeAuthError for refused keys) and the ledger is unchanged. The client is not
        closed. It waits while a `trading()` block is held.
        """
        from ledger.exchange.ccxt_client import ExchangeGateway
        from ledger.exchange.sync import ExchangeSync

        if self._exchange_sync is None:  # kept across calls: it counts absences between syncs
            self._exchange_sync = ExchangeSync(self.settings)
        syncer = self._exchange_sync
        gateway = ExchangeGateway(exchange, owns_client=False)
        async with self.trading():
            book = await anyio.to_thread.run_sync(
                lambda: self._call(lambda ledger: ledger.book.copy())
            )
            snapshot = await syncer.fetch(gateway, book)
            outcome = await anyio.to_thread.run_sync(
                lambda: self._acall(lambda ledger: syncer.apply(ledger, snapshot))
            )
        return [seed_position(p) for p in outcome.newly_opened], outcome.closed_ids


class ExactView:
    """A manager's reads with exact values (`manager.exact`)."""

    def __init__(self, manager: ThreadSafePositionManager) -> None:
        self._manager = manager

    def get_active_positions(self) -> list[Position]:
        return self._manager._call(lambda ledger: ledger.active_positions())

    def get_closed_positions(self) -> list[Position]:
        return self._manager._call(lambda ledger: ledger.closed_positions())

    def get_position(self, position_id: str) -> Position | None:
        """An open position by id."""
        return self._manager._call(lambda ledger: ledger.book.open.get(position_id))

    def get_position_for_symbol(self, symbol: str) -> Position | None:
        return self._manager._call(lambda ledger: ledger.get_position_for_symbol(symbol))

    def get_session_summary(self) -> SessionSummary:
        return self._manager._call(lambda ledger: ledger.session_summary())


class _TradingLock:
    """A lock that can be taken in one thread and given back in another (the async path takes
    it from a worker thread), and that says how many are waiting for it.

    Held for a ticket (each `Trading` block's own object), so giving it back is exact: an
    interrupt (KeyboardInterrupt, a handler's SystemExit: CPython raises them in the main
    thread between any two instructions, the entry of `Condition.__exit__` included) that
    lands anywhere in `acquire` leaves it not held for that ticket, one landing anywhere in
    `release` still gives it back, and neither leaves the condition's own lock with the
    interrupted thread (tests/test_trading_lock_interrupts.py). Without the ticket, giving back
    after an interrupt could free a hold another thread had taken meanwhile."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._holder: object | None = None
        self.waiting = 0

    def acquire(self, ticket: object) -> None:
        condition = self._condition
        try:
            with condition:
                self.waiting += 1
                try:
                    while self._holder is not None:
                        condition.wait()
                finally:
                    self.waiting -= 1
                self._holder = ticket
            return  # inside the try: so is every instruction after the hold was taken
        except BaseException:
            self.give_back(ticket)
            raise

    def release(self, ticket: object) -> None:
        try:
            with self._condition:
                if self._holder is ticket:
                    self._holder = None
                    # all: a waiter interrupted right after Condition.wait queued its waiter
                    # lock left it queued, and a notify() may go to that one, lost
                    self._condition.notify_all()
        except BaseException:
            self.give_back(ticket)
            raise

    def give_back(self, ticket: object) -> None:
        """After an interrupt: the condition's lock freed if the interrupted thread still has
        it (`Condition.__enter__` took it, `__exit__` had not given it back), then the hold
        given back if ticket has it."""
        condition = self._condition
        while condition._is_owned():  # type: ignore[attr-defined]
            condition.release()
        with condition:
            if self._holder is ticket:
                self._holder = None
            if self._holder is None:  # a notify the interrupted waiter took is passed on
                condition.notify_all()


class Trading:
    """`with` / `async with` holding a manager's trading lock (see
    ThreadSafePositionManager.trading). Not re-entrant: a sync inside the block waits for ever."""

    def __init__(self, lock: _TradingLock) -> None:
        self._lock = lock
        self._ticket = object()

    def __enter__(self) -> None:
        try:
            self._lock.acquire(self._ticket)
            return  # inside the try, as in acquire
        except BaseException:
            self._lock.give_back(self._ticket)
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # an interrupt at release's own first instruction gave nothing back (only this
        # method's own first instruction, before any `try` can start, is left uncovered: as
        # for any __exit__ written in Python)
        try:
            self._lock.release(self._ticket)
        except BaseException:
            self._lock.give_back(self._ticket)
            raise

    async def __aenter__(self) -> None:
        # the event loop keeps running while this waits; a cancellation waits for the thread,
        # and giving back is exact (the ticket), so whatever the thread did is undone
        try:
            await anyio.to_thread.run_sync(self._lock.acquire, self._ticket)
        except BaseException:
            self._lock.release(self._ticket)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._lock.release(self._ticket)


def _sole_error(exc: BaseException) -> BaseException:
    """The one exception an exception group holds (through nested groups), else exc."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _seed_or_none(position: Position | None) -> SeedPosition | None:
    return None if position is None else seed_position(position)


def _optional_time(field: str, raw: object) -> datetime | None:
    """A caller's time: an ISO 8601 string or a datetime, naive taken as UTC; raises
    InvalidValue."""
    if raw is None:
        return None
    return aware_time(field, raw)


# How far ahead of this machine's clock a caller's open_time may be (an exchange's fill time,
# a clock a little ahead) before it is refused as a time in the future.
_CLOCK_SKEW = timedelta(seconds=5)

# A seed caller's roe_percentage agrees with the ledger's when it is this close (it was
# computed in binary floats by the caller).
_ROE_TOLERANCE = Decimal("1e-6")


@exact  # on the caller's thread: its comparison of ROEs in the ledger's context, not the bot's
def _first_mark(command: OpenPosition, kwargs: dict[str, object]) -> PositionMarked | None:
    """The mark a create's current_price / unrealized_pnl / roe_percentage make, checked
    against each other; None when they say nothing beyond the entry."""
    if (
        kwargs.get("current_price") is None
        and kwargs.get("unrealized_pnl") is None
        and kwargs.get("roe_percentage") is None
    ):
        return None  # what the checks below find of three Nones, without the arithmetic
    current = optional_decimal("current_price", kwargs.get("current_price"))
    if current is not None:
        current = positive("current_price", current)
    unrealized = optional_decimal("unrealized_pnl", kwargs.get("unrealized_pnl"))
    roe = optional_decimal("roe_percentage", kwargs.get("roe_percentage"))
    price = command.entry_price if current is None else current
    derived_pnl = price_pnl(command.side, command.qty, command.entry_price, price)
    pnl = derived_pnl if unrealized is None else unrealized
    leverage = command.leverage
    valid_leverage = isinstance(leverage, int) and not isinstance(leverage, bool) and leverage > 0
    if roe is not None and valid_leverage:  # a bad leverage is refused by decide()
        margin = initial_margin(
            command.qty, command.entry_price, command.leverage, command.real_initial_margin
        )
        derived = roe_pct(pnl, margin)
        if abs(derived - roe) > _ROE_TOLERANCE * max(Decimal(1), abs(derived)):
            raise InvalidValue(
                "roe_percentage", kwargs.get("roe_percentage"),
                f"the ledger derives {derived:.6f} from unrealized_pnl and the margin",
            )  # fmt: skip
    if price == command.entry_price and pnl == derived_pnl:
        return None
    return PositionMarked(
        position_id=command.position_id,
        mark_price=price,
        unrealized_pnl=None if unrealized is None or unrealized == derived_pnl else unrealized,
    )
