"""The `ledger` command: audit, replay, verify, export, import, back up and watch a ledger.

Exit codes: 0 done; 1 the answer is "no" (verification failed, the log was refused because its
chain fails, an import was refused, no such position); 2 the command could not run (bad usage,
a missing, locked, corrupt or foreign database, a bad setting, matplotlib missing); 130 Ctrl-C.

Commands that trust the log (stats, positions, replay, export, plot, snapshot) check its whole
chain — gapless seq, hash chain, every body decodes; constant memory, ~3 s per 200k events —
and refuse a log that fails unless --force is given. The check runs in the same pass as their
fold, and nothing is printed before the pass ends; `export --out` writes aside and renames only
when complete, while export to stdout and snapshot check in a pass of their own first. Their
figures come from the log itself, never from positions.json (a cache). Read-only commands open
the database read-only and write nothing, also for a user who cannot write its folder
(ledger.store.read_only). Outputs (export --out, plot, backup, snapshot, import's
positions.json) never land on the ledger's own files (ledger.output_paths), are created 0600
and written aside then renamed (ledger.private_files); a failed write is one OutputError line.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, TypeVar

import anyio
import msgspec
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ledger.audit.books import Replayed, book_at, load_book
from ledger.audit.checkpoints import Checkpoints, sidecar_path
from ledger.audit.equity import equity_curve
from ledger.audit.exports import TRADE_COLUMNS, EventColumns, iso, trade_cells, trades
from ledger.audit.history import history
from ledger.audit.reading import HEAD, Bound, ScanStats, check_chain, open_read_only, scan
from ledger.audit.scope import ACCOUNT_HELP, EventOwners, in_account
from ledger.audit.verification import VerifyReport, verify_log
from ledger.audit.vouched import Origin, chain_origin, vouched_book
from ledger.envelope import Recorded
from ledger.errors import (
    ImportRejected,
    IntegrityError,
    InvalidValue,
    LedgerError,
    OutputError,
    StoreUnavailable,
)
from ledger.output_paths import (
    OwnFile,
    backup_files,
    check_output,
    database_files,
    ledger_files,
    output_errors,
    snapshot_file,
)
from ledger.private_files import written_aside
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from ledger.store.base import EventStore
from ledger.store.factory import Location, copy_log, describe, is_url, make_store
from ledger.values import parse_time
from ledger.watch import num, pct, short_time, table, usd
from projections.book import Book
from projections.positions import Position
from projections.stats import Accumulators

T = TypeVar("T")

_json = msgspec.json.Encoder()  # Decimals as exact strings, datetimes as UTC ISO with Z


# -- context -------------------------------------------------------------------------------


@dataclass
class Context:
    """What every command needs: settings, paths, and where to print."""

    settings: Settings
    db: Location  # a SQLite file or a postgresql:// URL
    snapshot: Path
    out: Console
    err: Console
    as_json: bool

    @property
    def shown(self) -> str:
        """The ledger's location as it may be printed (a URL's password is never shown)."""
        return describe(self.db)

    def db_exists(self) -> bool:
        """Whether the ledger is there already (a server is asked when the store opens)."""
        if is_url(self.db):
            return True
        path = Path(self.db)
        return path.exists() and path.stat().st_size > 0

    @property
    def busy_timeout_ms(self) -> int:
        return self.settings.busy_timeout_ms

    def say(self, text: str) -> None:
        """A line of text on stdout, never wrapped or read as markup."""
        self.out.print(text, markup=False, highlight=False, soft_wrap=True)

    def warn(self, text: str) -> None:
        self.err.print(text, markup=False, highlight=False, soft_wrap=True)

    def emit_json(self, value: object) -> None:
        data = msgspec.json.format(_json.encode(value), indent=2)
        sys.stdout.write(data.decode() + "\n")
        sys.stdout.flush()

    def open(self) -> contextlib.AbstractAsyncContextManager[EventStore]:
        return open_read_only(self.db, busy_timeout_ms=self.busy_timeout_ms)

    @property
    def db_file(self) -> Path | None:
        """The ledger's file, or None for a PostgreSQL ledger."""
        return None if is_url(self.db) else Path(self.db)

    def own_files(self, *, snapshot: bool = True) -> list[OwnFile]:
        """The files no output may replace (see ledger.output_paths)."""
        return ledger_files(
            self.db_file,
            snapshot=self.snapshot if snapshot else None,
            backup_dir=Path(self.settings.backup_dir),
        )

    @property
    def checkpoints(self) -> Checkpoints:
        """The audit's checkpoints and verified point, beside the log."""
        # beside a SQLite file; a server's ledger (a URL) has no folder of its own to keep them
        path = None if is_url(self.db) else sidecar_path(Path(self.db))
        return Checkpoints(path, every=self.settings.checkpoint_every_events)


def _context(args: argparse.Namespace) -> Context:
    settings = load_settings(args.config)
    raw = args.db if args.db is not None else settings.db_path
    db: Location = raw if is_url(raw) else Path(raw)
    if args.snapshot is not None:
        snapshot = Path(args.snapshot)
    elif args.db is not None and not is_url(raw):
        snapshot = Path(db).with_name("positions.json")  # as Ledger(db_path) does
    else:
        snapshot = Path(settings.positions_file)
    # piped or redirected: wide enough that no table wraps (a terminal sets its own width)
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 240
    return Context(
        settings=settings,
        db=db,
        snapshot=snapshot,
        out=Console(highlight=False, width=width, soft_wrap=False),
        err=Console(stderr=True, highlight=False),
        as_json=bool(getattr(args, "json", False)),
    )


def _run(fn: Callable[[], Awaitable[T]]) -> T:
    return anyio.run(fn)


# -- shared pieces -------------------------------------------------------------------------


def _bound(args: argparse.Namespace) -> Bound:
    return Bound(seq=getattr(args, "seq", None), time=getattr(args, "as_of", None))


async def _replay(
    ctx: Context,
    store: EventStore,
    *,
    bound: Bound,
    force: bool,
    symbol: str | None = None,
) -> Replayed:
    """The book at bound, from a state the log vouches for plus the tail, the chain checked
    from the last verified point (ledger.audit.vouched). With --force: folded from the log
    alone, unchecked, skipping rows that do not decode. For one symbol: folded from the log
    alone, chain-checked (a checkpoint holds every symbol's statistics together)."""
    head = await store.end()
    if bound.seq is not None and bound.seq > head.seq:
        raise InvalidValue("--seq", bound.seq, f"past the end of the log (seq {head.seq})")
    if force:
        ctx.warn("warning: --force: the log's chain was not checked")
        stats = ScanStats()
        replayed = await book_at(store, bound=bound, check=False, symbol=symbol, stats=stats)
        if stats.undecodable:
            ctx.warn(
                f"warning: skipped {len(stats.undecodable)} undecodable rows "
                f"(first seq {stats.undecodable[0]})"
            )
        return replayed
    if symbol is not None:
        return await book_at(store, bound=bound, check=True, symbol=symbol, stats=ScanStats())
    book, origin = await vouched_book(
        store, ctx.checkpoints, snapshot_path=ctx.snapshot, bound=bound, head_seq=head.seq
    )
    for note in origin.notes:
        ctx.warn(f"note: {note}")
    return Replayed(book=book, at=await _time_of(store, book.last_seq), checked=True, origin=origin)


async def _time_of(store: EventStore, seq: int) -> datetime | None:
    """When the event at seq occurred (None for seq 0)."""
    if seq == 0:
        return None
    records = await store.read(after_seq=seq - 1, to_seq=seq)
    return records[0].occurred_at if records else None


def _where(replayed: Replayed) -> str:
    book = replayed.book
    when = f" · {short_time(replayed.at)}" if replayed.at else ""
    if replayed.origin is not None:
        checked = replayed.origin.describe()
    elif replayed.checked:
        checked = "folded from the log's start, whole chain checked"
    else:
        checked = "chain NOT checked (--force)"
    return f"as of seq {book.last_seq}{when} · {checked}"


def _table(title: str, columns: Sequence[str], right: Sequence[str] = ()) -> Table:
    return table(title, columns, right)


def _as_of_json(replayed: Replayed, head_seq: int) -> dict[str, object]:
    return {
        "seq": replayed.book.last_seq,
        "hash": replayed.book.last_hash,
        "time": replayed.at,
        "head_seq": head_seq,
        "chain_checked": replayed.checked,
        "origin": replayed.origin,
    }


# -- stats ---------------------------------------------------------------------------------


def cmd_stats(ctx: Context, args: argparse.Namespace) -> int:
    async def go() -> tuple[Replayed, int]:
        async with ctx.open() as store:
            replayed = await _replay(
                ctx, store, bound=_bound(args), force=args.force, symbol=args.symbol
            )
            return replayed, (await store.end()).seq

    replayed, head_seq = _run(go)
    book = replayed.book
    if args.by == "account":
        return _stats_by_account(ctx, replayed, head_seq)
    summary = book.summary(args.account)
    symbols = _symbol_rows(book, args.account)
    if ctx.as_json:
        ctx.emit_json(
            {
                "as_of": _as_of_json(replayed, head_seq),
                "symbol": args.symbol,
                "account": args.account,
                "summary": summary,
                "symbols": symbols,
            }
        )
        return 0
    scope = f" for {args.symbol}" if args.symbol else ""
    scope += f" of account {args.account}" if args.account else ""
    ctx.say(f"Session{scope} {_where(replayed)} (head seq {head_seq})")
    table = _table("Summary", ["figure", "value"], right=["value"])
    pf = "n/a" if summary.profit_factor is None else f"{summary.profit_factor:.2f}"
    for name, value in (
        ("open positions", str(summary.active_positions)),
        ("closed trades", str(summary.closed_trades)),
        ("wins / losses", f"{summary.wins} / {summary.losses}"),
        ("win rate", pct(summary.win_rate * 100)),
        ("realized PnL (closed)", usd(summary.closed_realized_pnl)),
        ("realized PnL (open positions)", usd(summary.open_realized_pnl)),
        ("total realized PnL", usd(summary.total_realized_pnl)),
        ("unrealized PnL", usd(summary.unrealized_pnl)),
        ("total PnL", usd(summary.total_pnl)),
        ("fees", usd(summary.total_fees)),
        ("funding", usd(summary.total_funding)),
        ("profit factor", pf),
        ("average win", usd(summary.average_win)),
        ("average loss", usd(summary.average_loss)),
        ("expectancy", usd(summary.expectancy)),
        ("max drawdown (realized)", usd(summary.max_drawdown)),
        ("used margin", usd(summary.used_margin)),
        ("balance", usd(summary.balance)),
        ("available balance", usd(summary.available_balance)),
    ):
        table.add_row(name, value)
    ctx.out.print(table)
    if symbols:
        per = _table(
            "Per symbol",
            ["symbol", "open", "closed", "W/L", "win rate", "realized", "unrealized", "fees"],
            right=["open", "closed", "W/L", "win rate", "realized", "unrealized", "fees"],
        )
        for row in symbols:
            per.add_row(
                row.symbol,
                str(row.open),
                str(row.closed_trades),
                f"{row.wins}/{row.losses}",
                pct(row.win_rate * 100) if row.closed_trades else "-",
                usd(row.realized_pnl),
                usd(row.unrealized_pnl),
                usd(row.fees),
            )
        ctx.out.print(per)
    return 0


class SymbolRow(msgspec.Struct, kw_only=True):
    symbol: str
    open: int
    closed_trades: int
    wins: int
    losses: int
    win_rate: Decimal
    realized_pnl: Decimal
    unrealized_pnl: Decimal
    fees: Decimal
    funding: Decimal


def _stats_by_account(ctx: Context, replayed: Replayed, head_seq: int) -> int:
    """`stats --by account`: one summary per account, and the fleet's."""
    book = replayed.book
    summaries = {name: book.summary(name) for name in book.account_names()}
    fleet = book.summary()
    if ctx.as_json:
        as_of = _as_of_json(replayed, head_seq)
        ctx.emit_json({"as_of": as_of, "accounts": summaries, "fleet": fleet})
        return 0
    ctx.say(f"Session by account {_where(replayed)} (head seq {head_seq})")
    columns = ["account", "open", "closed", "W/L", "realized", "unrealized", "total PnL"]
    columns += ["balance"]
    table = _table("Accounts", columns, right=columns[1:])
    for name, s in [*summaries.items(), ("(fleet)", fleet)]:
        table.add_row(
            name,
            str(s.active_positions),
            str(s.closed_trades),
            f"{s.wins}/{s.losses}",
            usd(s.total_realized_pnl),
            usd(s.unrealized_pnl),
            usd(s.total_pnl),
            usd(s.balance),
        )
    ctx.out.print(table)
    return 0


def _symbol_rows(book: Book, account: str | None = None) -> list[SymbolRow]:
    """Closed figures per symbol from the statistics, plus what is open on each."""
    rows: dict[str, SymbolRow] = {}
    zero = Decimal(0)
    acc = book.acc if account is None else book.accounts.get(account, Accumulators())
    for name, s in acc.per_symbol.items():
        rows[name] = SymbolRow(
            symbol=name,
            open=0,
            closed_trades=s.closed_trades,
            wins=s.wins,
            losses=s.losses,
            win_rate=Decimal(s.wins) / s.closed_trades if s.closed_trades else zero,
            realized_pnl=s.realized_pnl,
            unrealized_pnl=zero,
            fees=s.fees,
            funding=s.funding,
        )
    for p in book.open.values():
        if not in_account(account, p.account):
            continue
        row = rows.get(p.symbol)
        if row is None:
            row = rows[p.symbol] = SymbolRow(
                symbol=p.symbol,
                open=0,
                closed_trades=0,
                wins=0,
                losses=0,
                win_rate=zero,
                realized_pnl=zero,
                unrealized_pnl=zero,
                fees=zero,
                funding=zero,
            )
        row.open += 1
        row.realized_pnl += p.realized_pnl
        row.unrealized_pnl += p.unrealized_pnl
        row.fees += p.fees
        row.funding += p.funding
    return [rows[k] for k in sorted(rows)]


# -- positions -----------------------------------------------------------------------------


def _select(book: Book, args: argparse.Namespace) -> tuple[list[Position], list[Position]]:
    want_open = not args.closed
    want_closed = not args.open
    symbol, account = args.symbol, args.account

    def wanted(p: Position) -> bool:
        return (symbol is None or p.symbol == symbol) and in_account(account, p.account)

    opened = [p for p in book.open.values() if wanted(p)]
    closed = [p for p in book.closed.values() if wanted(p)]
    closed.sort(key=lambda p: p.close_time or p.open_time, reverse=True)
    opened.sort(key=lambda p: p.open_time, reverse=True)
    if args.limit is not None:
        opened, closed = opened[: args.limit], closed[: args.limit]
    return (opened if want_open else []), (closed if want_closed else [])


def _open_table(positions: Sequence[Position], title: str) -> Table:
    cols = ["id", "symbol", "side", "qty", "notional", "entry", "mark", "uPnL", "ROE"]
    cols += ["realized", "lev", "opened (UTC)", "marked (UTC)"]
    table = _table(
        title, cols, right=["qty", "notional", "entry", "mark", "uPnL", "ROE", "realized", "lev"]
    )
    for p in positions:
        table.add_row(
            p.position_id,
            p.symbol,
            p.side.value,
            num(p.qty),
            usd(p.position_size),
            num(p.entry_price),
            num(p.current_price),
            usd(p.unrealized_pnl),
            pct(p.roe_percentage),
            usd(p.realized_pnl),
            f"{p.leverage}x",
            short_time(p.open_time),
            short_time(p.marked_at),
        )
    return table


def _closed_table(positions: Sequence[Position], title: str) -> Table:
    cols = ["id", "symbol", "side", "qty", "entry", "exit", "exits", "realized", "ROE", "fees"]
    cols += ["opened (UTC)", "closed (UTC)", "reason"]
    table = _table(title, cols, right=["qty", "entry", "exit", "exits", "realized", "ROE", "fees"])
    for p in positions:
        table.add_row(
            p.position_id,
            p.symbol,
            p.side.value,
            num(p.initial_qty),
            num(p.entry_price),
            num(p.exit_price),
            str(len(p.partial_exits)),
            usd(p.realized_pnl),
            pct(p.roe_percentage),
            usd(p.fees),
            short_time(p.open_time),
            short_time(p.close_time),
            p.close_reason or "",
        )
    return table


def _print_table(ctx: Context, table: Table, rows: Sequence[object]) -> None:
    if rows:
        ctx.out.print(table)
    else:
        ctx.say(f"{table.title}: none")


def cmd_positions(ctx: Context, args: argparse.Namespace) -> int:
    async def go() -> Replayed:
        async with ctx.open() as store:
            return await _replay(ctx, store, bound=HEAD, force=args.force)

    replayed = _run(go)
    opened, closed = _select(replayed.book, args)
    if ctx.as_json:
        as_of = _as_of_json(replayed, replayed.book.last_seq)
        ctx.emit_json({"as_of": as_of, "open": opened, "closed": closed})
        return 0
    ctx.say(f"Positions {_where(replayed)}")
    if not args.closed:
        _print_table(ctx, _open_table(opened, f"Open positions ({len(opened)})"), opened)
    if not args.open:
        _print_table(ctx, _closed_table(closed, f"Closed positions ({len(closed)})"), closed)
    return 0


# -- history -------------------------------------------------------------------------------


def cmd_history(ctx: Context, args: argparse.Namespace) -> int:
    async def go() -> tuple[Position | None, list[Any], Origin]:
        async with ctx.open() as store:
            head = await store.end()
            # the position's rows are read by stream; the chain is checked like every read's
            if args.force:
                ctx.warn("warning: --force: the log's chain was not checked")
                origin = Origin(
                    state="the log's start",
                    state_seq=0,
                    folded=0,
                    checked_from=head.seq + 1,
                    checked_to=head.seq,
                    verified=None,
                    notes=[],
                )
            else:
                origin = await chain_origin(store, ctx.checkpoints, head.seq)
            position, rows = await history(store, args.position_id)
            return position, rows, origin

    position, rows, origin = _run(go)
    for note in origin.notes:
        ctx.warn(f"note: {note}")
    if position is None or not in_account(args.account, position.account):
        where = f"account {args.account!r} of " if args.account else ""
        ctx.warn(f"error: no position {args.position_id!r} in {where}{ctx.shown}")
        return 1
    if ctx.as_json:
        ctx.emit_json({"position": position, "events": rows, "checked": origin})
        return 0
    status = "open" if position.is_open else f"closed {short_time(position.close_time)}"
    ctx.say(
        f"{position.position_id}: {position.side.value} {position.symbol} "
        f"entry {num(position.entry_price)} x{position.leverage} · {status} · "
        f"realized {usd(position.realized_pnl)}"
    )
    checked = "chain NOT checked (--force)" if args.force else origin.chain()
    ctx.say(f"{len(rows)} events of the position, read by stream · {checked}")
    columns = ["seq", "time (UTC)", "event", "price", "qty", "size after", "PnL"]
    columns += ["realized so far", "reason", "source"]
    table = _table(
        "History",
        columns,
        right=["seq", "price", "qty", "size after", "PnL", "realized so far"],
    )
    for row in rows:
        table.add_row(
            str(row.seq),
            short_time(row.occurred_at),
            row.kind,
            num(row.price),
            "" if row.qty is None else num(row.qty),
            num(row.running_qty),
            "" if not row.pnl else usd(row.pnl),
            usd(row.realized_pnl),
            row.reason,
            row.source,
        )
    ctx.out.print(table)
    return 0


# -- replay --------------------------------------------------------------------------------


def cmd_replay(ctx: Context, args: argparse.Namespace) -> int:
    async def go() -> tuple[Replayed, int]:
        async with ctx.open() as store:
            replayed = await _replay(ctx, store, bound=_bound(args), force=args.force)
            return replayed, (await store.end()).seq

    replayed, head_seq = _run(go)
    book = replayed.book
    opened = list(book.open.values())
    closed = list(book.closed.values())
    summary = book.summary()
    if ctx.as_json:
        ctx.emit_json(
            {
                "as_of": _as_of_json(replayed, head_seq),
                "open": opened,
                "closed": closed,
                "summary": summary,
            }
        )
        return 0
    asked = f"--seq {args.seq}" if args.seq is not None else f"--as-of {iso(args.as_of)}"
    ctx.say(f"Book {_where(replayed)} ({asked}; the log goes on to seq {head_seq})")
    title = f"Open positions ({len(opened)}) with their last marks"
    _print_table(ctx, _open_table(opened, title), opened)
    if args.limit is not None:
        closed = closed[-args.limit :]
    _print_table(ctx, _closed_table(closed, f"Closed positions ({len(book.closed)})"), closed)
    ctx.say(
        f"Summary: {summary.closed_trades} closed ({summary.wins} won, {summary.losses} lost), "
        f"realized {usd(summary.total_realized_pnl)}, unrealized {usd(summary.unrealized_pnl)}, "
        f"total {usd(summary.total_pnl)}, max drawdown {usd(summary.max_drawdown)}"
    )
    return 0


# -- verify --------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(
    ctx: Context, enabled: bool, what: str, total: int
) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (when it is a terminal); yields an advance(n) callback."""
    if not enabled or not ctx.err.is_terminal:
        yield lambda n: None
        return
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=ctx.err,
        transient=True,
    )
    with bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    async def go() -> VerifyReport:
        async with ctx.open() as store:
            total = (await store.end()).seq
            with _progress(ctx, True, "verifying", total) as advance:
                # judged by the limits the log recorded, never the auditor's own settings
                return await verify_log(
                    store, ctx.snapshot, progress=advance, checkpoints=ctx.checkpoints
                )

    report = _run(go)
    if ctx.as_json:
        ctx.emit_json(report)
        return 0 if report.ok else 1
    snap = report.snapshot
    if report.ok:
        if report.events == 0:
            ctx.say("OK: the log is empty (0 events)")
        else:
            ctx.say(
                f"OK: {report.events} events in {report.streams} streams, seq "
                f"1..{report.last_seq} gapless, hash chain intact (head {report.last_hash[:16]}), "
                f"stream versions consecutive, all {report.rules_checked} events decode and "
                "satisfy the ledger's rules"
            )
        if snap.status == "matches":
            behind = report.last_seq - (snap.last_seq or 0)
            ctx.say(
                f"OK: {snap.path} matches the log at seq {snap.last_seq} "
                f"({behind} events behind the head)"
            )
        elif snap.status == "unreadable":
            ctx.say(f"note: cannot read {snap.path} ({snap.detail}): positions.json not checked")
        else:
            ctx.say(f"note: no snapshot at {snap.path}")
        _say_recorded(ctx, report)
        return 0
    first = report.problems[0]
    ctx.say(f"FAIL at seq {first.seq}: {first.what}")
    for problem in report.problems[1:]:
        ctx.say(f"also at seq {problem.seq} ({problem.kind}): {problem.what}")
    if report.rule_violations > sum(1 for p in report.problems if p.kind == "rules"):
        ctx.say(f"{report.rule_violations} rule violations in all")
    checked = "" if first.kind == "chain" else f" ({report.events} events checked)"
    ctx.say(f"verification failed{checked}")
    _say_recorded(ctx, report)
    return 1


def _say_recorded(ctx: Context, report: VerifyReport) -> None:
    if not report.recorded_in:
        return
    saved = len(report.checkpoints_saved)
    ctx.say(
        f"recorded seq {report.last_seq} as the point the chain is verified to, in "
        f"{report.recorded_in}"
        + (f" ({saved} checkpoints written)" if saved else "")
        + ": stats, positions, history, replay and watch check the chain from there on"
    )


# -- export --------------------------------------------------------------------------------


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    start: datetime | None = args.from_time
    end: datetime | None = args.to_time
    out_path: Path | None = args.out

    account: str | None = args.account
    owner_of = EventOwners()

    def inside(moment: datetime) -> bool:
        return (start is None or moment >= start) and (end is None or moment <= end)

    def keep_event(record: Recorded) -> bool:
        if account is not None:  # remembers each position's owner: only when asked, as it grows
            owner = owner_of(record.event)  # every record, in order: it learns who opened what
            if not in_account(account, owner):
                return False
        return inside(record.occurred_at)

    async def write_all(handle: IO[str]) -> int:
        async with ctx.open() as store:
            total = (await store.end()).seq
            to_file = out_path is not None
            # A file is written aside and renamed only when complete, so the chain is checked
            # in the same pass; stdout cannot take back what it printed, so it gets a pass of
            # its own first.
            check = not args.force and to_file
            if args.force:
                ctx.warn("warning: --force: the log's chain was not checked")
            elif not to_file:
                await check_chain(store)
            with _progress(ctx, to_file, f"exporting {args.what}", total) as advance:
                if args.what == "events":
                    columns = EventColumns()
                    return await _write_rows(
                        scan(store, check=check, progress=advance),
                        handle,
                        args.format,
                        columns.header,
                        columns.cells,
                        keep_event,
                    )
                return await _write_rows(
                    trades(store, check=check, progress=advance, account=account),
                    handle,
                    args.format,
                    TRADE_COLUMNS,
                    trade_cells,
                    lambda trade: inside(trade.close_time),
                )

    if out_path is None:
        count = _run(lambda: write_all(sys.stdout))
        sys.stdout.flush()
        return 0
    target = check_output(out_path, ctx.own_files(), option="--out")
    with (
        output_errors(out_path),
        written_aside(target) as partial,
        partial.open("w", encoding="utf-8", newline="") as handle,
    ):
        count = _run(lambda: write_all(handle))
    ctx.warn(f"wrote {count} {args.what} to {out_path}")
    return 0


async def _write_rows(
    items: AsyncIterator[T],
    handle: IO[str],
    fmt: str,
    header: Sequence[str],
    cells: Callable[[T], Sequence[object]],
    keep: Callable[[T], bool],
) -> int:
    """Stream items as CSV rows (after a header) or as JSON lines; returns how many."""
    rows = csv.writer(handle, lineterminator="\n")
    if fmt == "csv":
        rows.writerow(header)
    count = 0
    async for item in items:
        if not keep(item):
            continue
        if fmt == "csv":
            rows.writerow(cells(item))
        else:
            handle.write(_json.encode(item).decode())
            handle.write("\n")
        count += 1
    return count


# -- import --------------------------------------------------------------------------------


def cmd_import(ctx: Context, args: argparse.Namespace) -> int:
    from ledger.seed_import import import_seed, plan_import, refusal

    source: Path = args.file
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise StoreUnavailable(f"cannot read {source}: {exc.strerror or exc}") from None
    if source.resolve() == ctx.snapshot.resolve():
        raise ImportRejected(
            f"{source} is this ledger's own snapshot path, which the import would overwrite: "
            "copy it elsewhere first, or pass --snapshot"
        )
    # the import writes the database and positions.json: neither may land on the other, or
    # on a backup
    backups = backup_files(Path(ctx.settings.backup_dir))
    db_file = ctx.db_file
    db_files = database_files(db_file) if db_file is not None else []
    check_output(ctx.snapshot, [*db_files, *backups], option="--snapshot")
    if db_file is not None:
        check_output(db_file, [snapshot_file(ctx.snapshot), *backups], option="--db")
    plan = plan_import(data, source.name, limits=ctx.settings.limits)
    report = plan.report
    if args.strict and report.unreadable:
        first = report.unreadable[0]
        raise ImportRejected(
            f"{len(report.unreadable)} records cannot be interpreted (--strict); first: "
            f"{first.where}: {first.reason}"
        )
    exists = ctx.db_exists()

    async def check_target() -> None:
        if not exists:
            return
        async with ctx.open() as store:
            loaded = await load_book(store, ctx.snapshot)
            why = refusal(loaded.book, report.file_sha256)
            if why is not None:
                raise ImportRejected(why)

    async def write() -> None:
        async with Ledger(ctx.db, snapshot_path=ctx.snapshot, settings=ctx.settings) as ledger:
            await import_seed(ledger, plan)

    _run(check_target)
    if args.dry_run:
        report.dry_run = True
    else:
        _run(write)
    if ctx.as_json:
        ctx.emit_json(report)
        return 0
    verb = "Would import" if args.dry_run else "Imported"
    seqs = "" if args.dry_run else f" as seq {report.first_seq}..{report.last_seq}"
    ctx.say(
        f"{verb} {report.file_name} (sha256 {report.file_sha256[:16]}) into {ctx.shown}{seqs}: "
        f"{report.open_positions} open and {report.closed_positions} closed positions, "
        f"{report.partial_exits} partial exits, {report.events} events"
    )
    if report.unreadable:
        count = len(report.unreadable)
        ctx.say(f"Could not interpret {count} record{'' if count == 1 else 's'}:")
        for bad in report.unreadable:
            pid = f" ({bad.position_id})" if bad.position_id else ""
            ctx.say(f"  {bad.where}{pid}: {bad.reason}")
    for note in report.notes:
        ctx.say(f"note: {note}")
    table = _table(
        "Session figures",
        ["figure", "file's session_stats", "file's records (seed rule)", "ledger", "note"],
        right=["file's session_stats", "file's records (seed rule)", "ledger"],
    )
    for f in report.figures:
        table.add_row(
            f.name,
            "-" if f.file is None else num(f.file, 4),
            num(f.records, 4),
            num(f.ledger, 4),
            f.note,
        )
    ctx.out.print(table)
    if not report.self_consistent:
        ctx.say(
            "The file is not self-consistent: its session_stats disagree with its own "
            "positions where noted above."
        )
    return 0


# -- snapshot, backup ------------------------------------------------------------------------


def _require_db(ctx: Context) -> None:
    if not ctx.db_exists():
        raise StoreUnavailable(f"no ledger database at {ctx.shown}")


class _DropLogsOf(logging.Filter):
    def __init__(self, function: str) -> None:
        super().__init__()
        self.function = function

    def filter(self, record: logging.LogRecord) -> bool:
        return record.funcName != self.function


@contextlib.contextmanager
def _reported_here(function: str) -> Iterator[None]:
    """Leave out the ledger's own log lines from function: the command reports that error
    itself, in its one line."""
    logger = logging.getLogger("ledger")
    drop = _DropLogsOf(function)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def cmd_snapshot(ctx: Context, args: argparse.Namespace) -> int:
    _require_db(ctx)
    check_output(ctx.snapshot, ctx.own_files(snapshot=False), option="--snapshot")
    for folder, why in (
        (ctx.snapshot.resolve().parent, "positions.json is written there"),
        *(
            [(ctx.db_file.resolve().parent, "snapshot opens the ledger for writing")]
            if ctx.db_file is not None
            else []
        ),
    ):
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(
                ctx.snapshot,
                f"permission denied: {folder} is not writable for this user, and {why}",
            )

    async def go() -> tuple[Path, int, str]:
        async with ctx.open() as store:
            if args.force:
                ctx.warn("warning: --force: the log's chain was not checked")
            else:
                await check_chain(store)
        async with Ledger(ctx.db, snapshot_path=ctx.snapshot, settings=ctx.settings) as ledger:
            path = await ledger.write_snapshot()
            return path, ledger.book.last_seq, ledger.book.last_hash

    with output_errors(ctx.snapshot), _reported_here("write_snapshot"):
        path, seq, digest = _run(go)
    if ctx.as_json:
        ctx.emit_json({"path": str(path), "last_seq": seq, "last_hash": digest})
    else:
        ctx.say(f"wrote {path} at seq {seq} (hash {digest[:16]})")
    return 0


def cmd_backup(ctx: Context, args: argparse.Namespace) -> int:
    folder = Path(args.to or ctx.settings.backup_dir)
    if folder.exists() and not folder.is_dir():  # refused before anything opens the database
        check_output(folder, ctx.own_files(), option="--to")
        raise OutputError(folder, "it is a file; --to takes a folder")

    async def go() -> tuple[Path, int, str, str | None]:
        async with ctx.open() as store:
            ledger = Ledger(ctx.db, snapshot_path=ctx.snapshot, settings=ctx.settings, store=store)
            target = await ledger.backup(args.to)
        async with open_read_only(target, busy_timeout_ms=ctx.busy_timeout_ms) as copy:
            try:
                stats = await check_chain(copy)
            except IntegrityError as exc:
                return target, (await copy.end()).seq, "", str(exc)
            return target, stats.checked, stats.last_hash, None

    try:
        with output_errors(folder):
            target, events, digest, problem = _run(go)
    except sqlite3.Error as exc:  # the copy failed: a full disk is "database or disk is full"
        raise OutputError(folder, f"the copy failed: {exc}; no backup was written") from exc
    if ctx.as_json:
        ctx.emit_json(
            {"path": str(target), "events": events, "last_hash": digest, "chain_problem": problem}
        )
    else:
        ctx.say(f"backed up {ctx.shown} to {target}: {events} events")
        if problem is None:
            ctx.say(f"the copy's chain checks out (head {digest[:16]})")
    if problem is not None:
        ctx.warn(f"warning: the copy (and so the original) fails: {problem}")
    return 0


def cmd_copy(ctx: Context, args: argparse.Namespace) -> int:
    """Copy SRC to DST row for row; both ends then verify to the same head hash."""
    source: Location = args.source if is_url(args.source) else Path(args.source)
    target: Location = args.target if is_url(args.target) else Path(args.target)

    async def go() -> tuple[int, str, int]:
        async with open_read_only(source, busy_timeout_ms=ctx.busy_timeout_ms) as src:
            store = make_store(target, busy_timeout_ms=ctx.busy_timeout_ms)
            await store.open()
            try:
                before = (await store.head()).seq
                await copy_log(src, store)
                report = await store.verify_chain()
            finally:
                await store.close()
            return report.last_seq, report.last_hash, before

    last_seq, last_hash, before = _run(go)
    if ctx.as_json:
        ctx.emit_json({"copied": last_seq - before, "last_seq": last_seq, "last_hash": last_hash})
    else:
        ctx.say(
            f"copied {last_seq - before} events from {describe(source)} to {describe(target)}:"
            f" head seq {last_seq}, hash {last_hash}"
        )
    return 0


# -- plot ----------------------------------------------------------------------------------


def cmd_plot(ctx: Context, args: argparse.Namespace) -> int:
    from ledger.audit.equity import EquityCurve
    from ledger.plot import render_equity, require_matplotlib

    require_matplotlib()
    target = check_output(args.out, ctx.own_files(), option="the PNG path")
    bound = _bound(args)

    async def go() -> EquityCurve:
        async with ctx.open() as store:
            head = await store.end()
            if bound.seq is not None and bound.seq > head.seq:
                raise InvalidValue("--seq", bound.seq, f"past the end of the log (seq {head.seq})")
            if args.force:
                ctx.warn("warning: --force: the log's chain was not checked")
            return await equity_curve(
                store, bound=bound, check=not args.force, account=args.account
            )

    curve = _run(go)
    scope = f" · account {args.account}" if args.account else ""
    title = args.title or f"Realized equity · {Path(ctx.shown).name}{scope}"
    with output_errors(args.out), written_aside(target) as partial:
        render_equity(curve, partial, title=title)
    summary = curve.book.summary(args.account)
    message = {
        "path": str(args.out),
        "account": args.account,
        "points": len(curve.points),
        "closes": len(curve.closes),
        "realized_equity": curve.equity,
        "max_drawdown": summary.max_drawdown,
        "as_of_seq": curve.book.last_seq,
    }
    if ctx.as_json:
        ctx.emit_json(message)
    else:
        ctx.say(
            f"wrote {args.out}{scope}: {len(curve.closes)} closes, realized equity "
            f"{usd(curve.equity)}, max drawdown {usd(summary.max_drawdown)} "
            f"(as of seq {curve.book.last_seq})"
        )
    return 0


# -- watch, demo ---------------------------------------------------------------------------


def cmd_watch(ctx: Context, args: argparse.Namespace) -> int:
    from ledger.watch import watch

    async def go() -> int:
        async with ctx.open() as store:
            # a SQLite file opened without locks has this; other stores have no such state
            opened = getattr(store, "read_only_open", None)
            if not args.once and opened is not None and opened.unlocked is not None:
                raise StoreUnavailable(
                    f"cannot follow {ctx.shown}: its folder is not writable for this user and no "
                    "ledger process has it open, so SQLite has no lock index to share; "
                    "`ledger watch --once` shows it now, and following works while the "
                    "ledger runs"
                )
            return await watch(
                store,
                ctx.snapshot,
                checkpoints=ctx.checkpoints,
                where=str(ctx.db),
                console=ctx.out,
                interval=args.interval,
                once=args.once,
                max_seconds=args.max_seconds,
                max_events=args.max_events,
                plain=args.plain,
                recent_count=args.events,
            )

    try:
        return _run(go)
    except KeyboardInterrupt:  # a Ctrl-C that landed outside the event loop's handler
        return 0


def cmd_run(ctx: Context, args: argparse.Namespace) -> int:
    """The bot's background service against Bybit, keyed from the environment."""
    from ledger.exchange.ccxt_client import ExchangeGateway, bybit_from_env
    from ledger.exchange.service import BotService

    live = ctx.settings.live_updates if args.live is None else bool(args.live)

    async def go() -> None:
        client = bybit_from_env(args.testnet, pro=live)  # ConfigError when the keys are unset
        async with Ledger(ctx.db, snapshot_path=ctx.snapshot, settings=ctx.settings) as ledger:
            network = "testnet" if args.testnet else "mainnet"
            ctx.warn(f"syncing {ctx.shown} with Bybit {network} (live={live}); Ctrl-C stops")
            service = BotService(ledger, ExchangeGateway(client), live=live, handle_signals=True)
            await service.run()  # raises ExchangeAuthError when the keys are refused
            ctx.warn(f"stopped: {service.stop_reason or 'done'}")

    _run(go)
    return 0


def cmd_demo(ctx: Context, args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("ledger.demo")
    except ModuleNotFoundError as exc:
        if exc.name != "ledger.demo":
            raise
        ctx.warn("error: `ledger demo` is not available in this install")
        return 2
    run: Callable[[list[str]], int | None] = demo.main
    return int(run([str(a) for a in args.demo_args]) or 0)


# -- the parser ----------------------------------------------------------------------------


def _time_arg(text: str) -> datetime:
    try:
        return parse_time(text)
    except InvalidValue:
        raise argparse.ArgumentTypeError(
            f"not an ISO 8601 time: {text!r} (e.g. 2025-01-07T17:00:00, taken as UTC)"
        ) from None


def _seq_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a seq number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("seq must be 0 or more")
    return value


def _positive_int(text: str) -> int:
    value = _seq_arg(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


_EXAMPLES = {
    "run": """examples:
  BYBIT_API_KEY=... BYBIT_API_SECRET=... ledger run --testnet --live
keys come from the environment only and never appear in logs, events or errors.""",
    "stats": """examples:
  ledger stats
  ledger stats --as-of 2025-01-07T17:00:00          # naive times are UTC
  ledger stats --seq 120 --symbol SOL/USDT:USDT --json""",
    "positions": """examples:
  ledger positions --open
  ledger positions --closed --symbol BTC/USDT:USDT --limit 20
  ledger positions --json | jq '.open[].position_id'""",
    "history": """examples:
  ledger history pos_3f2a9c1b7d4e
  ledger history pos_3f2a9c1b7d4e --json""",
    "replay": """examples:
  ledger replay --as-of 2025-01-07T17:00:00
  ledger replay --as-of 2025-01-07T18:00:00+01:00
  ledger replay --seq 42 --json""",
    "verify": """examples:
  ledger verify
  ledger verify --db backups/ledger-20250107T000000Z.db --snapshot /dev/null
exit status: 0 when everything checks out, 1 naming the first bad seq.""",
    "export": """examples:
  ledger export --what trades --format csv --out trades.csv
  ledger export --what events --format jsonl --from 2025-01-07 --to 2025-01-08T00:00:00
  ledger export --what events --format csv | gzip > events.csv.gz""",
    "import": """examples:
  ledger --db data/ledger.db import old-bot/positions.json
  ledger import positions.json --dry-run""",
    "snapshot": """examples:
  ledger snapshot
  ledger snapshot --snapshot /tmp/positions.json""",
    "backup": """examples:
  ledger backup
  ledger backup --to /mnt/backups/ledger""",
    "copy": """examples:
  ledger copy data/ledger.db postgresql://ledger@db.internal/fleet
  ledger copy postgresql://auditor@replica.internal/fleet audit-2025-01-07.db""",
    "plot": """examples:
  ledger plot equity.png
  ledger plot equity-jan7.png --as-of 2025-01-07T23:59:59""",
    "watch": """examples:
  ledger watch
  ledger watch --interval 0.5 --events 20
  ledger watch --plain --max-seconds 60 > watch.log""",
}


def _common(json_flag: bool, force_flag: bool) -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("ledger location")
    group.add_argument(
        "--db",
        type=str,
        default=argparse.SUPPRESS,
        help="the ledger: a SQLite file or a postgresql:// URL (default: db_path from the"
        " settings, data/ledger.db)",
    )
    group.add_argument(
        "--snapshot",
        type=Path,
        default=argparse.SUPPRESS,
        help="positions.json (default: next to --db, else positions_file from the settings)",
    )
    group.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help="settings TOML file (default: $POSITION_LEDGER_CONFIG or ./position-ledger.toml)",
    )
    if json_flag:
        parent.add_argument("--json", action="store_true", help="machine-readable output")
    if force_flag:
        parent.add_argument(
            "--force",
            action="store_true",
            help="use the log even if its chain fails verification",
        )
    return parent


def _at_point(parser: argparse.ArgumentParser, *, required: bool) -> None:
    point = parser.add_mutually_exclusive_group(required=required)
    point.add_argument(
        "--as-of",
        type=_time_arg,
        metavar="TIME",
        help="events that occurred at or before TIME (ISO 8601; UTC when no zone)",
    )
    point.add_argument("--seq", type=_seq_arg, metavar="N", help="events up to seq N")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledger",
        description="Audit, replay, verify, export, import and watch a position ledger.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  ledger stats
  ledger --db data/ledger.db replay --as-of 2025-01-07T17:00:00
  ledger verify && ledger export --what trades --format csv --out trades.csv
--db, --snapshot and --config may come before COMMAND as well as after it.
run `ledger COMMAND --help` for each command's options and examples.""",
    )
    parser.add_argument("--db", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--snapshot", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help_text: str, *, json_flag: bool = True, force: bool = False
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_EXAMPLES[name],
            formatter_class=argparse.RawDescriptionHelpFormatter,
            parents=[_common(json_flag, force)],
        )
        return sub

    p = add("stats", "the session summary and a per-symbol table", force=True)
    _at_point(p, required=False)
    p.add_argument("--symbol", help="only positions on this symbol")
    p.add_argument("--account", help="one account's figures (default: the whole ledger)")
    p.add_argument("--by", choices=["account"], help="one summary per account")
    p.set_defaults(handler=cmd_stats)

    p = add("positions", "a table of positions", force=True)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--open", action="store_true", help="only open positions")
    which.add_argument("--closed", action="store_true", help="only closed positions")
    p.add_argument("--symbol", help="only positions on this symbol")
    p.add_argument("--limit", type=_positive_int, metavar="N", help="the N most recent of each")
    p.add_argument("--account", help="only this account's positions")
    p.set_defaults(handler=cmd_positions)

    p = add("history", "every event of one position, with running size and PnL", force=True)
    p.add_argument("position_id", metavar="POSITION_ID")
    p.add_argument("--account", help="refuse a position of another account")
    p.set_defaults(handler=cmd_history)

    p = add("replay", "the book as it stood at a past time or seq, from the log alone", force=True)
    _at_point(p, required=True)
    p.add_argument("--limit", type=_positive_int, metavar="N", help="show the N last closed")
    p.set_defaults(handler=cmd_replay)

    p = add("verify", "check the hash chain, seq, versions, rules and positions.json")
    p.set_defaults(handler=cmd_verify)

    p = add("export", "stream events or trades as CSV or JSON lines", json_flag=False, force=True)
    p.add_argument("--what", choices=["events", "trades"], required=True)
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--out", type=Path, metavar="FILE", help="write to FILE (default: stdout)")
    p.add_argument(
        "--from", dest="from_time", type=_time_arg, metavar="TIME", help="occurred/closed >= TIME"
    )
    p.add_argument(
        "--to", dest="to_time", type=_time_arg, metavar="TIME", help="occurred/closed <= TIME"
    )
    p.add_argument("--account", help=ACCOUNT_HELP)
    p.set_defaults(handler=cmd_export)

    p = add("import", "migrate a seed-format positions.json into a new or empty log")
    p.add_argument("file", type=Path, metavar="POSITIONS_JSON")
    p.add_argument("--dry-run", action="store_true", help="report what would be imported")
    p.add_argument(
        "--strict", action="store_true", help="refuse if any record cannot be interpreted"
    )
    p.set_defaults(handler=cmd_import)

    p = add("snapshot", "write positions.json for the log's head now", force=True)
    p.set_defaults(handler=cmd_snapshot)

    p = add("backup", "a consistent SQLite copy of the log (for PostgreSQL: the audit file)")
    p.add_argument("--to", type=Path, metavar="DIR", help="folder (default: backup_dir setting)")
    p.set_defaults(handler=cmd_backup)

    p = add("copy", "copy a log between backends keeping seq, event ids and hashes")
    p.add_argument("source", metavar="SRC", help="a SQLite file or a postgresql:// URL")
    p.add_argument("target", metavar="DST", help="an empty (or older copy of the) ledger")
    p.set_defaults(handler=cmd_copy)

    p = add("plot", "realized equity over time as a PNG (needs matplotlib)", force=True)
    p.add_argument("out", type=Path, metavar="PNG")
    _at_point(p, required=False)
    p.add_argument("--title", help="chart title")
    p.add_argument("--account", help=ACCOUNT_HELP)
    p.set_defaults(handler=cmd_plot)

    p = add("watch", "a live dashboard following the log", json_flag=False)
    p.add_argument(
        "--interval", type=_seconds, default=0.25, help="poll interval in seconds (0.25)"
    )
    p.add_argument("--events", type=_positive_int, default=10, help="latest events shown (10)")
    p.add_argument("--once", action="store_true", help="draw once and exit")
    p.add_argument("--plain", action="store_true", help="one line per event, even on a terminal")
    p.add_argument("--max-seconds", type=_seconds, metavar="S", help="exit after S seconds")
    p.add_argument("--max-events", type=_positive_int, metavar="N", help="exit after N new events")
    p.set_defaults(handler=cmd_watch)

    p = add("run", "sync with Bybit and run the background service", json_flag=False)
    p.add_argument("--testnet", action="store_true", help="Bybit's testnet instead of mainnet")
    p.add_argument(
        "--live",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="watch_positions on Bybit's WebSocket (default: the live_updates setting)",
    )
    p.set_defaults(handler=cmd_run)

    p = commands.add_parser(
        "demo",
        help="the main job behind scripts/run (its arguments go to the demo: ledger demo --help)",
        add_help=False,
    )
    p.set_defaults(handler=cmd_demo, demo_args=[])
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"position-ledger {version('position-ledger')}"
    except PackageNotFoundError:
        return "position-ledger (not installed)"


# -- main ----------------------------------------------------------------------------------


_VALUED = ("--db", "--snapshot", "--config")


def _command_index(argv: Sequence[str]) -> int | None:
    """Where the command name is: the first word that is not a global option or its value."""
    skip = False
    for i, word in enumerate(argv):
        if skip:
            skip = False
        elif word in _VALUED:
            skip = True
        elif not word.startswith("-"):
            return i
    return None


def _error(message: str) -> None:
    text = " ".join(str(message).split())  # one line, whatever the message held
    sys.stderr.write(f"ledger: error: {text}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    demo_args: list[str] | None = None
    at = _command_index(argv)
    if at is not None and argv[at] == "demo":  # everything after it is the demo's own
        argv, demo_args = argv[: at + 1], argv[at + 1 :]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if demo_args is not None:
        args.demo_args = demo_args
    try:
        ctx = _context(args)
        handler: Callable[[Context, argparse.Namespace], int] = args.handler
        return handler(ctx, args)
    except IntegrityError as exc:
        _error(f"refusing: {exc}; `ledger verify` tells more, --force uses it anyway")
        return 1
    except ImportRejected as exc:
        _error(f"import refused: {exc}")
        return 1
    except InvalidValue as exc:
        _error(str(exc))
        return 2
    except LedgerError as exc:
        _error(str(exc))
        return 2
    except sqlite3.Error as exc:
        _error(f"database error: {exc}")
        return 2
    except BrokenPipeError:
        # the reader went away (`| head`): stop quietly, as cat and grep do
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        _error(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
