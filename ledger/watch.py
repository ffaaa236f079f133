"""`ledger watch`: a live dashboard following the log as other processes append to it.

The log is opened read-only and polled (one indexed `seq > last` query per interval, so an idle
dashboard costs next to nothing); new events are folded into the book and the screen is redrawn
only when something came in. On a terminal it is a rich Live display; piped, it prints one line
per event (like `tail -f`). SIGINT / SIGTERM end it cleanly.
"""

from __future__ import annotations

import signal
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import aclosing
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
from anyio.abc import TaskStatus
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ledger.audit.checkpoints import Checkpoints
from ledger.audit.exports import iso
from ledger.audit.follow import follow
from ledger.audit.reading import HEAD
from ledger.audit.vouched import vouched_book
from ledger.envelope import Recorded
from ledger.events import (
    BalanceObserved,
    FundingRecorded,
    HistoryImported,
    PartialExitRecorded,
    PositionClosed,
    PositionIncreased,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
)
from ledger.store.base import EventStore
from projections.book import Book


def usd(value: Decimal) -> str:
    return f"{value:,.2f}"


def num(value: Decimal | None, places: int = 8) -> str:
    """A price or quantity: exact up to `places` decimals, no trailing zeros, no exponent."""
    if value is None:
        return ""
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -places:
        value = value.quantize(Decimal(1).scaleb(-places))
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def pct(value: Decimal) -> str:
    return f"{value:.2f}%"


def table(
    title: str, columns: Sequence[str], right: Sequence[str] = (), *, show_header: bool = True
) -> Table:
    """A compact table whose cells fold when space is short, never losing digits to "…"."""
    made = Table(
        title=title,
        title_justify="left",
        title_style="bold",
        box=box.SIMPLE_HEAD,
        show_header=show_header,
        pad_edge=False,
    )
    for name in columns:
        made.add_column(name, justify="right" if name in right else "left", overflow="fold")
    return made


def short_time(moment: datetime | None) -> str:
    return "" if moment is None else iso(moment.replace(microsecond=0))


def describe(record: Recorded, book: Book | None = None, *, live: bool = False) -> str:
    """One line saying what an event did, in the ledger's words.

    The book gives the position's symbol; with live=True it has just applied this record, so
    its figures (unrealized PnL after a mark, the position's total at close) are the event's.
    """
    event = record.event
    position = book.get(record.stream) if book is not None else None
    symbol = f" {position.symbol}" if position is not None else ""
    if isinstance(event, PositionOpened):
        return (
            f"opened {event.side.value} {num(event.qty)} {event.symbol} @ {num(event.entry_price)}"
            f" x{event.leverage} ({event.source.value})"
        )
    if isinstance(event, PositionMarked):
        unrealized = event.unrealized_pnl
        if unrealized is None and live and position is not None:
            unrealized = position.unrealized_pnl
        pnl = "" if unrealized is None else f", uPnL {usd(unrealized)}"
        return f"marked{symbol} @ {num(event.mark_price)}{pnl}"
    if isinstance(event, PartialExitRecorded):
        return (
            f"partial exit{symbol} {num(event.qty)} @ {num(event.price)}, "
            f"PnL {usd(event.realized_pnl)} {event.reason}".rstrip()
        )
    if isinstance(event, PositionClosed):
        done = position is not None and not position.is_open
        total = f", position {usd(position.realized_pnl)}" if done and position else ""
        return (
            f"closed{symbol} @ {num(event.price)}, PnL {usd(event.realized_pnl)}{total} "
            f"{event.reason}".rstrip()
        )
    if isinstance(event, FundingRecorded):
        return f"funding{symbol} {usd(event.amount)}"
    if isinstance(event, PositionIncreased):
        return f"increased{symbol} +{num(event.qty)} @ {num(event.price)}"
    if isinstance(event, BalanceObserved):
        return f"balance {usd(event.total)} (available {usd(event.available)})"
    if isinstance(event, HistoryImported):
        return (
            f"imported {event.file_name}: {event.open_positions} open, "
            f"{event.closed_positions} closed"
        )
    if isinstance(event, RulesConfigured):
        return (
            f"limits: {event.max_concurrent_positions} positions, "
            f"leverage {event.min_leverage}..{event.max_leverage}"
        )
    return type(event).__name__  # pragma: no cover - the union is closed


def summary_line(book: Book) -> str:
    s = book.summary()
    return (
        f"open {s.active_positions} · closed {s.closed_trades} ({s.wins}W/{s.losses}L) · "
        f"realized {usd(s.total_realized_pnl)} · unrealized {usd(s.unrealized_pnl)} · "
        f"total {usd(s.total_pnl)}"
    )


def dashboard(
    book: Book,
    recent: Iterable[tuple[Recorded, str]],
    *,
    where: str,
    last_at: datetime | None,
    checked: str = "",
) -> RenderableType:
    """The whole screen: header, open positions, latest events, session summary."""
    now = datetime.now(UTC).replace(microsecond=0)
    header = Text.assemble(
        ("position-ledger ", "bold"),
        f"{where} · seq {book.last_seq}",
        f" · last event {short_time(last_at)}" if last_at else "",
        f" · drawn {iso(now)}",
        f"\nstarted {checked}" if checked else "",
    )
    numbers = ["qty", "entry", "mark", "uPnL", "ROE", "realized"]
    positions = table(
        "Open positions", ["id", "symbol", "side", *numbers, "marked at (UTC)"], right=numbers
    )
    for p in book.open.values():
        style = "green" if p.unrealized_pnl > 0 else "red" if p.unrealized_pnl < 0 else ""
        positions.add_row(
            p.position_id,
            p.symbol,
            p.side.value,
            num(p.qty),
            num(p.entry_price),
            num(p.current_price),
            Text(usd(p.unrealized_pnl), style=style),
            pct(p.roe_percentage),
            usd(p.realized_pnl),
            short_time(p.marked_at),
        )
    events = table("Latest events", ["seq", "time (UTC)", "event", "stream", "what"], right=["seq"])
    for record, what in recent:
        events.add_row(
            str(record.seq),
            short_time(record.occurred_at),
            type(record.event).__name__,
            record.stream,
            what,
        )
    s = book.summary()
    summary = table("Session", ["figure", "value"], right=["value"], show_header=False)
    for name, value in (
        ("open positions", str(s.active_positions)),
        ("closed trades", f"{s.closed_trades} ({s.wins} won, {s.losses} lost)"),
        ("win rate", pct(s.win_rate * 100)),
        ("realized PnL", usd(s.total_realized_pnl)),
        ("unrealized PnL", usd(s.unrealized_pnl)),
        ("total PnL", usd(s.total_pnl)),
        ("used margin", usd(s.used_margin)),
        ("balance", usd(s.balance)),
        ("max drawdown", usd(s.max_drawdown)),
    ):
        summary.add_row(name, value)
    return Group(header, positions, events, summary)


async def watch(
    store: EventStore,
    snapshot_path: Path,
    *,
    checkpoints: Checkpoints,
    where: str,
    console: Console,
    interval: float = 0.25,
    once: bool = False,
    max_seconds: float | None = None,
    max_events: int | None = None,
    plain: bool = False,
    recent_count: int = 10,
) -> int:
    """Follow the log until Ctrl-C, SIGTERM, max_seconds or max_events; returns an exit code."""
    # a state the log vouches for plus the tail, the chain checked from the verified point
    head = await store.end()
    book, origin = await vouched_book(
        store, checkpoints, snapshot_path=snapshot_path, bound=HEAD, head_seq=head.seq
    )
    for note in origin.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    recent: deque[tuple[Recorded, str]] = deque(
        (
            (record, describe(record, book))
            for record in await store.read(after_seq=max(0, book.last_seq - recent_count))
        ),
        maxlen=recent_count,
    )
    last_at = recent[-1][0].occurred_at if recent else None
    checked = origin.describe()

    def screen() -> RenderableType:
        return dashboard(book, recent, where=where, last_at=last_at, checked=checked)

    if once:
        console.print(screen())
        return 0
    live_mode = console.is_terminal and not plain
    seen = 0
    updates = follow(store, after_seq=book.last_seq, poll_interval=interval)
    async with aclosing(updates), anyio.create_task_group() as group:
        # the handlers are in place before 'watching' is printed: a Ctrl-C after it stops it
        await group.start(_stop_on_signals, group.cancel_scope)
        with anyio.move_on_after(max_seconds if max_seconds is not None else float("inf")):
            if live_mode:
                with Live(screen(), console=console, auto_refresh=False, transient=False) as live:
                    async for page in updates:
                        for record in page:
                            book.apply(record)
                            recent.append((record, describe(record, book, live=True)))
                        last_at = page[-1].occurred_at
                        live.update(screen(), refresh=True)
                        seen += len(page)
                        if max_events is not None and seen >= max_events:
                            break
            else:
                console.print(
                    f"watching {where} from seq {book.last_seq} "
                    f"({summary_line(book)}); Ctrl-C to stop · started {checked}",
                    soft_wrap=True,
                    markup=False,
                )
                async for page in updates:
                    for record in page:
                        book.apply(record)
                        console.print(
                            f"{record.seq} {short_time(record.occurred_at)} "
                            f"{type(record.event).__name__} {record.stream}: "
                            f"{describe(record, book, live=True)} | {summary_line(book)}",
                            soft_wrap=True,
                            markup=False,
                        )
                    console.file.flush()
                    seen += len(page)
                    if max_events is not None and seen >= max_events:
                        break
        group.cancel_scope.cancel()
    return 0


async def _stop_on_signals(
    scope: anyio.CancelScope, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for _ in signals:
            scope.cancel()
            return
