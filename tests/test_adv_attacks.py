"""Adversarial checks of the write path's fast paths: runs of marks decided together, the
follower's bare future, the copy-on-write statistics, the lazily decoded marks of a rebuild.

Groups are forced as in test_group_commit: the store's writer thread is held while the jobs
queue behind it, so they share the one transaction that follows.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.commands import MarkPosition
from ledger.envelope import GENESIS_HASH, Recorded, chain_hash
from ledger.errors import (
    IntegrityError,
    InvalidValue,
    LedgerError,
    PositionAlreadyClosed,
    UnknownPosition,
)
from ledger.events import AnyEvent, PositionClosed, PositionMarked, PositionOpened
from ledger.rebuild import fold_log
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections.book import Book, fold_records
from tests._worker_process import kill_9, worker_process

pytestmark = pytest.mark.anyio

SETTINGS = Settings(max_concurrent_positions=1000)


def _same_book(a: Book, b: Book) -> None:
    assert a.last_seq == b.last_seq and a.last_hash == b.last_hash
    assert a.open == b.open
    assert dict(a.closed) == dict(b.closed)
    assert msgspec.json.encode(a.acc) == msgspec.json.encode(b.acc)
    assert {k: msgspec.json.encode(v) for k, v in a.accounts.items()} == {
        k: msgspec.json.encode(v) for k, v in b.accounts.items()
    }


async def _in_one_group(ledger: Ledger, calls: list[Callable[[], Awaitable[Any]]]) -> list[Any]:
    """Run each call as a task, all queued behind a held writer thread; each one's result or
    exception, in order."""
    hold, held = threading.Event(), threading.Event()

    def holding() -> None:
        held.set()
        hold.wait()

    outcomes: list[Any] = [None] * len(calls)

    async def run(i: int) -> None:
        try:
            outcomes[i] = await calls[i]()
        except Exception as exc:
            outcomes[i] = exc

    try:
        ledger.store.writer.submit(holding)
        await anyio.to_thread.run_sync(held.wait)
        async with anyio.create_task_group() as group:
            for i in range(len(calls)):
                group.start_soon(run, i)
            await anyio.wait_all_tasks_blocked()
            hold.set()
    finally:
        hold.set()
    return outcomes


async def _rebuilt(db_path: Path) -> Book:
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        report = await store.verify_chain()
        assert report.events == (await store.head()).seq
        book = await fold_log(store)
        assert msgspec.json.encode(book.acc) == msgspec.json.encode(
            fold_records(await store.read()).acc
        )
        return book
    finally:
        await store.close()


class _SubDecimal(Decimal):
    """A caller's own Decimal type."""


class _SubStr(str):
    """A caller's own str type."""

    __slots__ = ()


async def test_500_marks_in_one_group_with_bad_ones_in_the_middle(db_path: Path) -> None:
    """Each bad mark fails alone with a typed error; every other commits; the last good mark
    of each position is its price; the live book equals a rebuild from the log."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        ids = []
        for i in range(5):
            p = await ledger.open_position(
                f"S{i}USDT", "buy", entry_price=100, leverage=2, qty=1, position_id=f"p{i}"
            )
            ids.append(p.position_id)
        await ledger.close_position("p4", price=110)
        calls: list[Callable[[], Awaitable[Any]]] = []
        expected_price: dict[str, Decimal] = {}
        bad: dict[int, type[LedgerError]] = {}
        for n in range(500):
            pid = ids[n % 4]
            price = Decimal(100) + Decimal(n) / 100
            if n == 250:
                bad[n] = UnknownPosition
                calls.append(lambda: ledger.mark("nope", 101))
                continue
            if n == 251:
                bad[n] = PositionAlreadyClosed
                calls.append(lambda: ledger.mark("p4", 101))
                continue
            if n == 252:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark("p0", float("nan")))
                continue
            if n == 253:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark("p0", "abc"))
                continue
            if n == 254:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark("p0", -5))
                continue
            # subclasses pass the builder and are refused inside the group, each alone: msgspec
            # cannot write them (a mark's shortcut past the decoder takes only exact types)
            if n == 255:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark("p1", _SubDecimal(101)))
                continue
            if n == 256:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark(_SubStr("p2"), Decimal(101)))
                continue
            if n == 257:
                bad[n] = InvalidValue
                calls.append(lambda: ledger.mark("p3", Decimal(101), unrealized_pnl=_SubDecimal(1)))
                continue
            expected_price[pid] = price
            calls.append(functools.partial(ledger.mark, pid, price))
        before = ledger.last_seq
        outcomes = await _in_one_group(ledger, calls)
        for n, outcome in enumerate(outcomes):
            if n in bad:
                assert isinstance(outcome, bad[n]), (n, outcome)
            else:
                assert not isinstance(outcome, BaseException), (n, outcome)
        assert ledger.last_seq == before + 500 - len(bad)
        for pid, price in expected_price.items():
            position = ledger.get_position(pid)
            assert position is not None and position.current_price == price
        live = ledger.book
    _same_book(live, await _rebuilt(db_path))


async def test_marks_mixed_with_open_and_close_in_one_group(db_path: Path) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.open_position(
            "AUSDT", "buy", entry_price=10, leverage=2, qty=3, position_id="a"
        )
        await ledger.open_position(
            "BUSDT", "sell", entry_price=20, leverage=2, qty=1, position_id="b"
        )
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: ledger.mark("a", 11),
            lambda: ledger.mark("b", 19),
            lambda: ledger.mark("a", 12),
            lambda: ledger.close_position("a", price=13),
            lambda: ledger.mark("a", 14),  # closed by the job before: fails alone
            lambda: ledger.mark("b", 18),
            lambda: ledger.open_position(
                "CUSDT", "buy", entry_price=5, leverage=2, qty=2, position_id="c"
            ),
            lambda: ledger.mark("c", 6),
            lambda: ledger.mark("c", 7),
            lambda: ledger.mark("nope", 7),
            lambda: ledger.mark("b", 17),
        ]
        outcomes = await _in_one_group(ledger, calls)
        assert isinstance(outcomes[4], PositionAlreadyClosed)
        assert isinstance(outcomes[9], UnknownPosition)
        assert all(
            not isinstance(o, BaseException) for i, o in enumerate(outcomes) if i not in (4, 9)
        )
        assert "a" not in ledger.book.open and "a" in ledger.book.closed
        # the independent reference: qty 3 bought at 10, closed at 13
        assert ledger.book.closed["a"].realized_pnl == Decimal(9)
        assert ledger.book.open["b"].current_price == 17
        assert ledger.book.open["c"].current_price == 7
        live = ledger.book
    rebuilt = await _rebuilt(db_path)
    _same_book(live, rebuilt)


async def test_a_follower_cancelled_while_queued_leaves_no_duplicate_and_no_stray_error(
    db_path: Path,
) -> None:
    """Cancelled before its group runs: its job may still commit (documented), but once at
    most, the others commit, nothing is reported to the loop's exception handler."""
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    try:
        async with Ledger(db_path, settings=SETTINGS) as ledger:
            await ledger.open_position(
                "AUSDT", "buy", entry_price=10, leverage=2, qty=1, position_id="a"
            )
            hold, held = threading.Event(), threading.Event()

            def holding() -> None:
                held.set()
                hold.wait()

            ledger.store.writer.submit(holding)
            await anyio.to_thread.run_sync(held.wait)
            tasks = [asyncio.ensure_future(ledger.mark("a", 10 + i)) for i in range(1, 21)]
            try:
                await anyio.wait_all_tasks_blocked()
                for task in tasks[::3]:
                    task.cancel()
            finally:
                hold.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            cancelled = [t for t in tasks[::3]]
            assert all(t.cancelled() for t in cancelled)
            assert all(
                not isinstance(r, BaseException) for i, r in enumerate(results) if i % 3 != 0
            )
            # one more command after: the writer goes on
            await ledger.mark("a", 99)
            live = ledger.book
        rebuilt = await _rebuilt(db_path)
        _same_book(live, rebuilt)
        store = SQLiteEventStore(db_path, read_only=True)
        await store.open()
        try:
            records = await store.read()
        finally:
            await store.close()
        marks = [r.event.mark_price for r in records if isinstance(r.event, PositionMarked)]
        assert len(marks) == len(set(marks)), "a mark was stored twice"
        assert set(marks) >= {Decimal(10 + i) for i in range(1, 21) if (i - 1) % 3 != 0}
        assert len({r.event_id for r in records}) == len(records)
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert not reported, reported


def _closed(pid: str, symbol: str, pnl: int) -> list[AnyEvent]:
    return [
        PositionOpened(
            position_id=pid,
            symbol=symbol,
            side=Side.BUY,
            qty=Decimal(1),
            entry_price=Decimal(100),
            leverage=2,
        ),
        PositionClosed(
            position_id=pid,
            qty=Decimal(1),
            price=Decimal(100 + pnl),
            realized_pnl=Decimal(pnl),
            reason="t",
        ),
    ]


def test_statistics_shared_by_copies_never_leak_between_them() -> None:
    """copy / fork / successor share per_symbol until one side writes: a close folded on any
    of them never shows in another, nor in the book they came from."""
    seq = 0

    def records(events: list[AnyEvent]) -> list[Recorded]:
        nonlocal seq
        out = []
        for event in events:
            seq += 1
            out.append(
                Recorded(
                    seq=seq,
                    stream="s",
                    version=seq,
                    event_id=f"e{seq}",
                    occurred_at=datetime(2026, 1, 1, tzinfo=UTC),
                    recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
                    schema_version=1,
                    event=event,
                    hash=f"{seq:064x}",
                )
            )
        return out

    base = Book()
    base.apply_all(records(_closed("a", "AUSDT", 5)))
    frozen = msgspec.json.encode(base.acc)
    views = [base.copy(), base.fork(), base.successor()]
    encoded_views = [msgspec.json.encode(v.acc) for v in views]
    # fold a close on the base: no view may see it
    base.apply_all(records(_closed("b", "AUSDT", -3)))
    assert [msgspec.json.encode(v.acc) for v in views] == encoded_views
    after_base = msgspec.json.encode(base.acc)
    assert after_base != frozen
    # fold different closes on each view: neither the base nor the other views see them
    for i, view in enumerate(views):
        view.apply_all(records(_closed(f"v{i}", "AUSDT" if i % 2 else f"X{i}USDT", 7 + i)))
    assert msgspec.json.encode(base.acc) == after_base
    figures = [msgspec.json.encode(v.acc) for v in views]
    assert len(set(figures)) == 3
    for i, view in enumerate(views):
        assert view.acc.per_symbol["AUSDT"].closed_trades == (2 if i % 2 else 1)
        assert view.acc.closed_trades == 2
    assert base.acc.per_symbol["AUSDT"].closed_trades == 2
    assert base.acc.closed_trades == 2


@pytest.mark.parametrize("kind", ["timer", "reader"])
async def test_a_task_writing_in_a_loop_never_starves_the_event_loop(
    db_path: Path, kind: str
) -> None:
    """A command run inline may skip its yield when nothing is ready to run, but a task that
    awaits command after command must still let the loop run its timers and its I/O: a bot's
    heartbeat, a websocket reader, a timeout around the loop itself (it never fires if the loop
    never turns). Bounded: the timer is due at once, the socket readable at once."""
    loop = asyncio.get_running_loop()
    fired = asyncio.Event()
    async with Ledger(
        db_path, settings=Settings(max_concurrent_positions=10, synchronous="NORMAL")
    ) as ledger:
        await ledger.open_position(
            "AUSDT", "buy", entry_price=10, leverage=2, qty=1, position_id="a"
        )
        if kind == "timer":
            loop.call_later(0, fired.set)  # due now: runs at the loop's next turn
            closing: list[Any] = []
        else:
            left, right = socket.socketpair()
            closing = [left, right]
            loop.add_reader(left.fileno(), fired.set)
            right.send(b"x")  # readable now: seen at the loop's next poll
        try:
            commands = 0
            while not fired.is_set() and commands < 200:
                await ledger.mark("a", 10 + commands % 7)
                commands += 1
        finally:
            if closing:
                loop.remove_reader(closing[0].fileno())
                for sock in closing:
                    sock.close()
    assert fired.is_set(), f"{commands} commands ran and the loop never turned"


async def test_random_groups_live_book_equals_rebuild_and_snapshot_plus_tail(
    db_path: Path,
) -> None:
    """Seeded random groups of opens, marks, partial exits, funding and closes on a few
    symbols and two streams of commands at once: after every group the live book (forked,
    shared copy-on-write sums) equals a fold of the log; a reopen from positions.json plus the
    tail equals it too. The closed figures are checked against sums written here."""
    rng = random.Random(9)
    settings = Settings(max_concurrent_positions=1000, snapshot_every_events=7)
    realized: dict[str, Decimal] = {}  # symbol -> the realized PnL of its closed positions
    async with Ledger(db_path, settings=settings) as ledger:
        opened = 0
        for _ in range(25):
            calls: list[Callable[[], Awaitable[Any]]] = []
            live = list(ledger.book.open)
            for _ in range(rng.randint(1, 12)):
                roll = rng.random()
                if roll < 0.25 or not live:
                    opened += 1
                    calls.append(
                        functools.partial(
                            ledger.open_position,
                            f"S{opened % 4}USDT",
                            rng.choice(["buy", "sell"]),
                            entry_price=rng.randint(90, 110),
                            leverage=2,
                            qty=rng.randint(1, 4),
                            position_id=f"p{opened}",
                        )
                    )
                elif roll < 0.65:
                    calls.append(
                        functools.partial(ledger.mark, rng.choice(live), rng.randint(80, 120))
                    )
                elif roll < 0.75:
                    calls.append(
                        functools.partial(
                            ledger.register_partial_exit,
                            rng.choice(live),
                            price=rng.randint(80, 120),
                            qty=Decimal("0.5"),
                        )
                    )
                elif roll < 0.85:
                    calls.append(
                        functools.partial(
                            ledger.record_funding,  # a closed one's amends its close
                            rng.choice(live + list(ledger.book.closed)),
                            Decimal(rng.randint(-3, 3)) or Decimal(1),
                            execution_id=f"f{rng.random()}",
                        )
                    )
                else:
                    calls.append(
                        functools.partial(
                            ledger.close_position, rng.choice(live), price=rng.randint(80, 120)
                        )
                    )
            outcomes = await _in_one_group(ledger, calls)
            for outcome in outcomes:
                assert (
                    outcome is None
                    or not isinstance(outcome, BaseException)
                    or isinstance(outcome, LedgerError)
                ), outcome
            _same_book(ledger.book, fold_records(await ledger.store.read()))
        live_book = ledger.book
        for position in live_book.closed.values():
            realized[position.symbol] = realized.get(position.symbol, Decimal(0)) + (
                position.realized_pnl
            )
        assert live_book.closed, "the random walk closed nothing"
        for symbol, figures in live_book.acc.per_symbol.items():
            assert figures.realized_pnl == realized[symbol]
            assert figures.closed_trades == sum(
                1 for p in live_book.closed.values() if p.symbol == symbol
            )
    async with Ledger(db_path, settings=settings) as reopened:  # positions.json + the tail
        _same_book(reopened.book, live_book)
    _same_book(await _rebuilt(db_path), live_book)


def test_kill_9_during_groups_of_marks_loses_no_acknowledged_mark(tmp_path: Path) -> None:
    """A writer committing groups of 40 concurrent marks (the run-of-marks path) killed with
    SIGKILL: every mark it acknowledged is in the log as acknowledged, the chain verifies, and
    a ledger reopened on the file has the book a rebuild gives."""
    db = tmp_path / "ledger.db"
    acks: list[list[Any]] = []
    with worker_process("tests._adv_mark_worker", str(db)) as proc:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or b"{}").get("ready")
        assert isinstance(ready, int), proc.stderr.read() if proc.stderr else ""
        while len(acks) < 230:  # mid-way through a group of 40
            line = proc.stdout.readline()
            assert line.endswith(b"\n"), "the writer ended early"
            acks.append(json.loads(line))
        kill_9(proc)

    async def check() -> None:
        store = SQLiteEventStore(db, read_only=True)
        await store.open()
        try:
            records = {r.seq: r for r in await store.read()}
            await store.verify_chain()
        finally:
            await store.close()
        for seq, event_id, digest, pid, price in acks:
            stored = records.get(seq)
            assert stored is not None, f"acknowledged seq {seq} lost"
            assert (stored.event_id, stored.hash, stored.stream) == (event_id, digest, pid)
            assert isinstance(stored.event, PositionMarked)
            assert stored.event.mark_price == Decimal(price)
        async with Ledger(db) as ledger:
            live = ledger.book
        _same_book(live, await _rebuilt(db))

    anyio.run(check)


async def test_siblings_created_in_the_leaders_step_join_its_group_and_call_soon_ones_commit(
    db_path: Path,
) -> None:
    """The skip-yield heuristic: tasks a leader creates in the step it leads from are ready,
    so it yields and they share its transaction; a task created later by a call_soon callback
    commits in a group of its own. Every write lands once."""
    loop = asyncio.get_running_loop()
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.open_position(
            "AUSDT", "buy", entry_price=10, leverage=2, qty=1, position_id="a"
        )
        transactions = 0
        real = ledger.store.run_transaction

        def counted(unit: Callable[[Any], Any]) -> Any:
            nonlocal transactions
            transactions += 1
            return real(unit)

        ledger.store.run_transaction = counted  # type: ignore[method-assign]
        try:
            siblings = [asyncio.ensure_future(ledger.mark("a", 11 + i)) for i in range(10)]
            await ledger.mark("a", 30)
            await asyncio.gather(*siblings)
            assert transactions == 1, "the siblings did not join the leader's group"
            late: list[asyncio.Future[Any]] = []
            loop.call_soon(lambda: late.append(asyncio.ensure_future(ledger.mark("a", 40))))
            await ledger.mark("a", 41)
            while not late:
                await asyncio.sleep(0)
            await late[0]
        finally:
            ledger.store.run_transaction = real  # type: ignore[method-assign]
        store_records = await ledger.store.read()
    prices = sorted(
        r.event.mark_price for r in store_records if isinstance(r.event, PositionMarked)
    )
    assert prices == sorted(
        [Decimal(11 + i) for i in range(10)] + [Decimal(x) for x in (30, 40, 41)]
    )


def test_manager_threads_an_async_ledger_and_a_process_on_one_file(tmp_path: Path) -> None:
    """8 threads through the blocking manager, an async Ledger of this process and a second
    process, all on one file: the chain verifies, every id is unique, and the manager's book
    (caught up) equals a rebuild from the log, its realized sums those of its closes."""
    db = tmp_path / "ledger.db"
    settings = Settings(max_concurrent_positions=1000)
    manager = ThreadSafePositionManager(tmp_path / "positions.json", settings=settings)
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests._adv_mixed_worker", str(db)],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    errors: list[BaseException] = []

    def bot(n: int) -> None:
        try:
            for k in range(4):
                pid = manager.thread_safe_create_position(
                    symbol=f"T{n}{k}USDT",
                    side="buy",
                    entry_price=100.0,
                    position_size=500.0,
                    leverage=5,
                )
                for step in range(5):
                    assert manager.update_position_price(pid, 100.0 + step)
                assert manager.register_partial_exit(pid, 500.0 * 0.3, 110.0, None, "tp1")
                assert manager.close_position(pid, "done", 105.0)
        except BaseException as exc:
            errors.append(exc)

    async def loop_writer() -> None:
        async with Ledger(db, settings=settings) as ledger:
            for k in range(5):
                pid = f"loop-{k}"
                await ledger.open_position(
                    f"L{k}USDT", "buy", entry_price=20, leverage=2, qty=3, position_id=pid
                )
                await asyncio.gather(*(ledger.mark(pid, 20 + i) for i in range(12)))
                await ledger.close_position(pid, price=25)

    try:
        threads = [threading.Thread(target=bot, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        anyio.run(loop_writer)
        for thread in threads:
            thread.join(120)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out == b"done\n", err.decode()
        assert not errors, errors
        manager._acall(lambda ledger: ledger.refresh())  # what the others wrote since
        book = manager.ledger.book
    finally:
        manager.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rebuilt = anyio.run(_rebuilt, db)
    _same_book(book, rebuilt)
    # the process's partial exits (1 of qty 2) leave 2 of its 4 positions a round open
    assert len(rebuilt.closed) == 8 * 4 + 5 + 6 * 2
    assert len(rebuilt.open) == 6 * 2
    # each manager position: 150 USD of 500 exited at 110 from 100 (qty 1.5 -> 15), the rest
    # (qty 3.5) closed at 105 (17.5): 32.5 each
    for n in range(8):
        for k in range(4):
            (closed,) = [p for p in rebuilt.closed.values() if p.symbol == f"T{n}{k}USDT"]
            assert closed.realized_pnl == Decimal("32.5")
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--db", str(db), "verify"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("rehash", [False, True], ids=["edited", "edited-and-rechained"])
async def test_a_superseded_mark_edited_to_no_number_is_caught_by_verify(
    db_path: Path, rehash: bool
) -> None:
    """A rebuild parses only the marks it folds (a superseded mark's numbers stay text), so
    what vouches for every body is verify: an edited mark body, even with the chain's hashes
    written again to match it, fails verification at its seq, as do the audit's reads."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.open_position(
            "AUSDT", "buy", entry_price=10, leverage=2, qty=1, position_id="a"
        )
        for price in (11, 12, 13):
            await ledger.mark("a", price)
    con = sqlite3.connect(db_path)
    try:
        ((seq, body),) = [
            (row_seq, row_body)
            for row_seq, row_body in con.execute(
                "SELECT seq, body FROM events WHERE type = 'PositionMarked'"
            )
            if b'"12"' in row_body
        ]
        con.execute(
            "UPDATE events SET body = ? WHERE seq = ?", (body.replace(b'"12"', b'"x"'), seq)
        )
        if rehash:
            prev = GENESIS_HASH
            for row in con.execute(
                "SELECT seq, stream, version, event_id, occurred_us, recorded_us,"
                " schema_version, body FROM events ORDER BY seq"
            ).fetchall():
                prev = chain_hash(
                    prev,
                    seq=row[0],
                    stream=row[1],
                    version=row[2],
                    event_id=row[3],
                    occurred_us=row[4],
                    recorded_us=row[5],
                    schema_version=row[6],
                    body=row[7],
                )
                con.execute("UPDATE events SET hash = ? WHERE seq = ?", (prev, row[0]))
        con.commit()
    finally:
        con.close()
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        with pytest.raises(IntegrityError) as caught:
            await store.verify_chain()
        assert caught.value.seq == seq
    finally:
        await store.close()
    stats = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--db", str(db_path), "stats"],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stats.returncode != 0 and f"seq {seq}" in stats.stderr, stats.stderr


@pytest.mark.parametrize(
    "bad",
    ["open please", None, 5, object(), MarkPosition, [MarkPosition]],
    ids=["str", "None", "int", "object", "a command class", "a list"],
)
async def test_what_is_no_command_is_refused_with_a_typed_error(db_path: Path, bad: object) -> None:
    """execute / execute_blocking / transact's check of a command given something that is no
    command at all: InvalidValue (a LedgerError), nothing appended, the ledger goes on."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        before = ledger.last_seq
        with pytest.raises(InvalidValue):
            await ledger.execute(bad)  # type: ignore[arg-type]
        with pytest.raises(InvalidValue):
            await anyio.to_thread.run_sync(ledger.execute_blocking, bad)  # type: ignore[arg-type]
        assert ledger.last_seq == before
        await ledger.open_position("AUSDT", "buy", entry_price=1, leverage=2, qty=1)
        assert ledger.last_seq > before
