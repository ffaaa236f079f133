"""One bad command fails alone: group commit poisoned by an Exception, a BaseException, an
event that cannot be staged or folded; and a live book that cannot take committed events.

Every group here is forced: the store's writer thread is held by a callable waiting on a
threading.Event while the jobs queue up behind it (anyio.wait_all_tasks_blocked tells when
every task has submitted), so they all share the one transaction that follows.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.envelope import NewEvent, Recorded
from ledger.errors import BookOutOfStep, ExitExceedsPosition, StoreError
from ledger.events import PartialExitRecorded, PositionMarked, PositionOpened, RulesConfigured
from ledger.service import Ledger, Plan, mark_command
from ledger.settings import Settings
from ledger.store.base import StoreTransaction
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side
from projections import positions as fold
from projections.book import Book, fold_records

pytestmark = pytest.mark.anyio

SETTINGS = Settings(max_concurrent_positions=1000)
GOOD = 10


class Poison(BaseException):
    """Not an Exception: what a KeyboardInterrupt or SystemExit inside a decider looks like."""


def opening(i: int) -> Callable[[Book], Sequence[Plan]]:
    def decide(book: Book) -> list[Plan]:
        return [
            Plan(
                PositionOpened(
                    position_id=f"good-{i}",
                    symbol=f"G{i}USDT",
                    side=Side.BUY,
                    qty=Decimal(2),
                    entry_price=Decimal(10),
                    leverage=3,
                )
            )
        ]

    return decide


def raising(exc: BaseException) -> Callable[[Book], Sequence[Plan]]:
    def decide(book: Book) -> list[Plan]:
        raise exc

    return decide


def overflowing(book: Book) -> list[Plan]:
    """Valid to stage, but its fold overflows (qty x price beyond the decimal context)."""
    return [
        Plan(
            PositionOpened(
                position_id="huge",
                symbol="HUGEUSDT",
                side=Side.BUY,
                qty=Decimal("9e999999"),
                entry_price=Decimal("1e10"),
                leverage=2,
            )
        )
    ]


def unstageable(book: Book) -> list[Plan]:
    """Decides, but its event cannot be encoded (a value of no storable type)."""
    return [Plan(PositionMarked(position_id="good-0", mark_price=object()))]  # type: ignore[arg-type]


async def one_group(
    ledger: Ledger, deciders: Sequence[Callable[[Book], Sequence[Plan]]]
) -> tuple[list[list[Recorded] | BaseException], int]:
    """Run every decider in one group commit; each one's records or exception, and how many
    transactions the group took."""
    transactions = 0
    real = ledger.store.run_transaction

    def counted(unit: Callable[[StoreTransaction], Any]) -> Any:
        nonlocal transactions
        transactions += 1
        return real(unit)

    ledger.store.run_transaction = counted  # type: ignore[method-assign]
    hold, held = threading.Event(), threading.Event()

    def holding() -> None:
        held.set()
        hold.wait()

    outcomes: list[list[Recorded] | BaseException] = [[] for _ in deciders]

    async def submit(i: int, decider: Callable[[Book], Sequence[Plan]]) -> None:
        try:
            outcomes[i] = await ledger.transact(decider)
        except BaseException as exc:  # Poison included: it is this caller's own
            outcomes[i] = exc

    try:
        ledger.store.writer.submit(holding)
        await anyio.to_thread.run_sync(held.wait)
        async with anyio.create_task_group() as group:
            for i, decider in enumerate(deciders):
                group.start_soon(submit, i, decider)
            await anyio.wait_all_tasks_blocked()  # every job is queued behind the hold
            hold.set()
    finally:
        hold.set()
        ledger.store.run_transaction = real  # type: ignore[method-assign]
    return outcomes, transactions


async def stored(db_path: Path) -> list[Recorded]:
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        assert (await store.verify_chain()).events == (await store.head()).seq
        return await store.read()
    finally:
        await store.close()


def good_ids(records: Sequence[Recorded]) -> set[str]:
    return {r.stream for r in records if r.stream.startswith("good-")}


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(raising(ValueError("decider bug")), id="decider raises ValueError"),
        pytest.param(raising(ArithmeticError("overflow")), id="decider raises ArithmeticError"),
        pytest.param(overflowing, id="fold of its event overflows"),
        pytest.param(unstageable, id="its event cannot be staged"),
    ],
)
async def test_one_bad_job_fails_alone_and_the_rest_of_its_group_commits(
    db_path: Path, bad: Callable[[Book], Sequence[Plan]]
) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        deciders = [opening(i) for i in range(GOOD // 2)]
        deciders += [bad] + [opening(i) for i in range(GOOD // 2, GOOD)]
        outcomes, transactions = await one_group(ledger, deciders)
        assert transactions == 1, "the jobs did not share one group"
        failed = outcomes.pop(GOOD // 2)
        assert isinstance(failed, Exception), failed
        assert all(isinstance(o, list) and len(o) == 1 for o in outcomes), outcomes
        assert {p.position_id for p in ledger.active_positions()} == {
            f"good-{i}" for i in range(GOOD)
        }
        assert ledger.get_position("huge") is None
        # the ledger goes on: the next command commits after the bad one
        after = await ledger.mark("good-1", 12)
    log = await stored(db_path)
    assert good_ids(log) == {f"good-{i}" for i in range(GOOD)}
    assert [r.seq for r in log] == list(range(1, GOOD + 2))
    assert after.current_price == 12
    assert fold_records(log).open.keys() == {f"good-{i}" for i in range(GOOD)}


_POISON = Decimal(666)


def _fold_then_fail(real: Callable[..., Any]) -> Callable[..., Any]:
    """Book.apply that folds an exit at 666 into the book, then raises: a fork left holding
    part of a job that failed (it must be built again, not published)."""

    def apply(book: Book, record: Recorded) -> None:
        real(book, record)
        if isinstance(record.event, PartialExitRecorded) and record.event.price == _POISON:
            raise ArithmeticError("this book cannot take an exit at 666")

    return apply


def _stage_fails(real: Callable[..., Any]) -> Callable[..., Any]:
    def stage(tx: StoreTransaction, batch: Sequence[NewEvent], **kwargs: Any) -> list[Recorded]:
        staged: list[Recorded] = real(tx, batch, **kwargs)  # staged, then refused: unstaged
        if any(getattr(new.event, "price", None) == _POISON for new in batch):
            raise ValueError("this store cannot take an exit at 666")
        return staged

    return stage


@pytest.mark.parametrize(
    ("target", "patch", "error"),
    [
        pytest.param(None, None, ExitExceedsPosition, id="refused by the rules"),
        pytest.param(Book, ("apply", _fold_then_fail), StoreError, id="its fold fails"),
        pytest.param(StoreTransaction, ("stage", _stage_fails), StoreError, id="staging fails"),
    ],
)
async def test_a_lone_command_fails_alone_as_in_a_group(
    db_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: Any,
    patch: tuple[str, Callable[[Callable[..., Any]], Callable[..., Any]]] | None,
    error: type[Exception],
) -> None:
    """A command in a group of its own (the sequential case: `Ledger._decide_one`) that is
    refused, or whose events cannot be staged or folded, fails with its error, stores
    nothing, leaves the live book a fold of the log, and the next command commits."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        position = await ledger.open_position("SOLUSDT", "buy", entry_price=100, qty=5, leverage=5)
        pid = position.position_id
        if patch is not None:
            name, make = patch
            monkeypatch.setattr(target, name, make(getattr(target, name)))
        qty = 9 if patch is None else 1  # more than the position holds / a valid exit
        with pytest.raises(error):
            await ledger.register_partial_exit(pid, qty=qty, price=_POISON)
        monkeypatch.undo()
        live = ledger.book
        assert live.open[pid].qty == 5 and not live.open[pid].partial_exits
        after = await ledger.register_partial_exit(pid, qty=2, price=110)
    log = await stored(db_path)
    assert [type(r.event) for r in log] == [RulesConfigured, PositionOpened, PartialExitRecorded]
    folded = fold_records(log[:-1])
    assert live.open == folded.open and live.last_hash == folded.last_hash
    assert live.acc == folded.acc and live.last_seq == folded.last_seq == 2
    assert after.qty == 3 and after.realized_pnl == 20


async def test_a_base_exception_rolls_the_group_back_and_no_caller_hears_stored(
    db_path: Path,
) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        before = ledger.last_seq
        # good jobs before the poison (decided and staged already) and after it
        deciders = [opening(0), opening(1), raising(Poison()), opening(2)]
        outcomes, transactions = await one_group(ledger, deciders)
        assert transactions == 1
        assert isinstance(outcomes[2], Poison)  # its own exception, in its own caller
        for i in (0, 1, 3):
            error = outcomes[i]
            assert isinstance(error, StoreError), f"caller {i} was told {error!r}"
            assert "rolled back" in str(error)
        assert ledger.last_seq == before and not ledger.active_positions()
        # the writer thread survived: the next command commits
        (record,) = await ledger.transact(opening(7))
        assert record.seq == before + 1
    assert good_ids(await stored(db_path)) == {"good-7"}


async def test_a_failed_commit_tells_every_caller_of_the_group(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        real = ledger.store.run_transaction

        def commit_fails(unit: Callable[[StoreTransaction], Any]) -> Any:
            def then_fail(tx: StoreTransaction) -> Any:
                unit(tx)
                raise OSError(28, "No space left on device")  # as a COMMIT would fail

            return real(then_fail)

        monkeypatch.setattr(ledger.store, "run_transaction", commit_fails)
        outcomes, _ = await one_group(ledger, [opening(0), opening(1), opening(2)])
        monkeypatch.undo()
        assert all(isinstance(o, StoreError) for o in outcomes), outcomes
        assert not ledger.active_positions()
        await ledger.transact(opening(3))
    assert good_ids(await stored(db_path)) == {"good-3"}


async def test_a_book_that_cannot_take_committed_events_refuses_commands_until_it_reloads(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process commits an event this process's book cannot fold (here a fold bug is
    simulated for one mark price): commands are refused with BookOutOfStep, nothing is
    appended meanwhile, and once the book can take it, the ledger reloads and goes on."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        await ledger.transact(opening(0))
        other = Ledger(db_path, settings=SETTINGS)
        async with other:
            await other.mark("good-0", 13)
        _fold_fails_on_a_mark_at(13, monkeypatch)
        for _ in range(2):
            with pytest.raises(BookOutOfStep):
                await ledger.transact(opening(1))
        assert ledger.get_position("good-1") is None
        monkeypatch.undo()
        (record,) = await ledger.transact(opening(1))
        assert record.seq == 3
        assert ledger.get_position("good-0").current_price == 13  # type: ignore[union-attr]
        assert ledger.last_seq == 3
    assert good_ids(await stored(db_path)) == {"good-0", "good-1"}


def _fold_fails_on_a_mark_at(price: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fold bug: the book cannot take a PositionMarked at price (until monkeypatch.undo)."""
    real_marked = fold.marked

    def broken_marked(position: Any, event: PositionMarked, at: datetime) -> Any:
        if event.mark_price == price:
            raise RuntimeError("fold bug")
        return real_marked(position, event, at)

    monkeypatch.setattr(fold, "marked", broken_marked)


async def test_a_lone_command_on_a_book_out_of_step_reloads_it_as_a_group_does(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case above through a command's own methods (a group of one command, which takes
    `_decide_one` while the book is in step): refused with BookOutOfStep while the book
    cannot take the other process's event, then the book is reloaded from the log (the
    mark at 13 in it) before the command is decided, not decided on the book left behind."""
    async with Ledger(db_path, settings=SETTINGS) as ledger:
        first = await ledger.open_position("AUSDT", "buy", entry_price=10, qty=2, leverage=3)
        other = Ledger(db_path, settings=SETTINGS)
        async with other:
            await other.mark(first.position_id, 13)
        _fold_fails_on_a_mark_at(13, monkeypatch)
        for _ in range(2):
            with pytest.raises(BookOutOfStep):
                await ledger.open_position("BUSDT", "buy", entry_price=10, qty=2, leverage=3)
        assert ledger.active_positions() == [first]
        monkeypatch.undo()
        second = await ledger.open_position("BUSDT", "buy", entry_price=10, qty=2, leverage=3)
        assert ledger.get_position(first.position_id).current_price == 13  # type: ignore[union-attr]
        await ledger.mark(second.position_id, 11)
        assert ledger.last_seq == 5  # rules recorded, open, the other's mark, open, mark
        assert ledger.get_position(second.position_id).current_price == 11  # type: ignore[union-attr]


# -- hand-offs ---------------------------------------------------------------------------------


def test_blocking_commands_and_reads_never_go_through_the_ledgers_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ThreadSafePositionManager command goes from the caller's thread to the store's
    writer thread and back (one hand-off each way), a read happens on the caller's thread:
    neither waits for the ledger's event loop, which takes no callback meanwhile."""
    with ThreadSafePositionManager(
        tmp_path / "positions.json", db_path=tmp_path / "ledger.db", settings=SETTINGS
    ) as manager:
        portal = manager._portal
        assert portal is not None
        loop_calls: list[str] = []
        real_call = portal.call

        def counted(*args: Any) -> Any:
            loop_calls.append(repr(args[0]))
            return real_call(*args)

        monkeypatch.setattr(portal, "call", counted)
        pid = manager.thread_safe_create_position(
            symbol="HOPUSDT", side="buy", entry_price=10.0, position_size=100.0, leverage=2
        )
        assert manager.update_position_price(pid, 11.0)
        assert manager.register_partial_exit(pid, 50.0, 12.0, None, "tp1")
        assert manager.get_position(pid) is not None
        assert manager.get_active_positions()
        assert manager.close_position(pid, "tp", 12.0)
        assert manager.get_session_summary()["closed_trades"] == 1
        assert loop_calls == []


async def test_commands_sharing_a_group_get_distinct_uuid4_ids_and_a_refused_one_fails_alone(
    db_path: Path,
) -> None:
    """Event ids are drawn for a whole group at once (ledger.service._EventIds): every event
    of the group still gets its own random uuid4, in this group and the next."""
    import uuid

    from ledger.errors import UnknownPosition

    async with Ledger(db_path, settings=SETTINGS) as ledger:
        opened = await ledger.open_position("BTCUSDT", "buy", entry_price=100, qty=1, leverage=2)
        pid = opened.position_id
        before = ledger.last_seq  # the open (and the limits it records)
        marks = 40

        def marking(i: int) -> Callable[[Book], Sequence[Plan]]:
            return ledger._decider(mark_command(pid, 100 + i))

        deciders = [marking(i) for i in range(marks // 2)]
        deciders += [ledger._decider(mark_command("nobody", 1))]
        deciders += [marking(i) for i in range(marks // 2, marks)]
        outcomes, transactions = await one_group(ledger, deciders)
        assert transactions == 1, "the jobs did not share one group"
        assert isinstance(outcomes.pop(marks // 2), UnknownPosition)
        assert all(isinstance(o, list) and len(o) == 1 for o in outcomes), outcomes
        await ledger.mark(pid, 7)  # a group of its own, after
    log = await stored(db_path)
    assert len(log) == before + marks + 1
    assert [r.event.mark_price for r in log[before:-1]] == [100 + i for i in range(marks)]  # type: ignore[union-attr]
    ids = [r.event_id for r in log]
    assert len(set(ids)) == len(ids)
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.hex == event_id and parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def _mixed_group(ledger: Ledger, ids: list[str]) -> list[Callable[[Book], Sequence[Plan]]]:
    """Marks of several positions in runs, broken by an exit, a close, an open, a generic
    decider that reads a mark, and marks the rules refuse (an unknown and a closed position)."""
    from ledger.commands import OpenPosition
    from ledger.service import close_command, partial_exit_command

    a, b, c = ids

    def mark(pid: str, price: int) -> Callable[[Book], Sequence[Plan]]:
        return ledger._decider(mark_command(pid, price))

    def reads_the_mark(book: Book) -> list[Plan]:
        # a decider that reads what the marks before it set: they must be folded by now
        position = book.open[b]
        event = PositionMarked(position_id=b, mark_price=position.current_price + 1)
        return [Plan(event)]

    opening = OpenPosition(
        position_id="late", symbol="LATEUSDT", side=Side.SELL, qty=Decimal(3),
        entry_price=Decimal(50), leverage=4, account=ledger.account,
    )  # fmt: skip
    return [
        mark(a, 101), mark(b, 202), mark(a, 103), mark(c, 305),
        ledger._decider(partial_exit_command(a, price=104, qty=1)),
        mark(a, 105), mark("nobody", 1), mark(b, 206),
        reads_the_mark,
        mark(b, 208), ledger._decider(close_command(c, price=309)), mark(c, 310),
        mark(a, 107), ledger._decider(opening), mark("late", 51), mark(b, 209),
    ]  # fmt: skip


async def _open_three(ledger: Ledger) -> list[str]:
    ids = []
    for n, side in enumerate(["buy", "sell", "buy"]):
        opened = await ledger.open_position(
            f"M{n}USDT", side, entry_price=100 * (n + 1), qty=2 + n, leverage=3
        )
        ids.append(opened.position_id)
    return ids


async def test_marks_folded_together_leave_the_book_a_fold_of_the_log_gives(
    db_path: Path,
) -> None:
    """A group's marks wait and are folded together (ledger.service._fold_waiting); the
    published book is the one folding every stored event one at a time gives."""
    from ledger.errors import PositionAlreadyClosed, UnknownPosition

    async with Ledger(db_path, settings=SETTINGS) as ledger:
        ids = await _open_three(ledger)
        outcomes, transactions = await one_group(ledger, _mixed_group(ledger, ids))
        assert transactions == 1, "the jobs did not share one group"
        failed = [type(o) for o in outcomes if isinstance(o, BaseException)]
        assert failed == [UnknownPosition, PositionAlreadyClosed], outcomes
        live = ledger.book
    log = await stored(db_path)
    folded = fold_records(log)
    assert live.last_seq == folded.last_seq == log[-1].seq
    assert live.last_hash == folded.last_hash
    assert live.open == folded.open and dict(live.closed) == dict(folded.closed)
    assert live.open[ids[1]].current_price == 209
    assert live.open[ids[0]].current_price == 107 and live.open[ids[0]].qty == 1
    assert ids[2] in live.closed and live.open["late"].current_price == 51
    # the generic decider saw the marks before it: 206 + 1
    b_marks = [r.event.mark_price for r in log if isinstance(r.event, PositionMarked)]
    assert [m for m in b_marks if m // 100 == 2] == [202, 206, 207, 208, 209]


class _Price(Decimal):
    """A Decimal subclass: check_command lets it by, msgspec cannot write it."""


async def test_marks_decided_together_give_what_each_decided_alone_gives(
    tmp_path: Path,
) -> None:
    """A run of mark commands in one group (`_decide_marks`, which decides each with
    `rules.decide_mark` and checks its event with `_plain_mark`) gives each command what the
    same command decided in a group of its own gives (`_CommandDecider.events`): the same
    refusal (type and message) or the same event, for marks the rules refuse (unknown,
    closed, a price, contracts or margin below zero), marks the codec must refuse (a Decimal
    subclass) and marks with every optional figure, of the bot and of the exchange."""
    from ledger.commands import MarkPosition
    from ledger.values import Source

    def commands(a: str, b: str, c: str) -> list[MarkPosition]:
        d = Decimal
        return [
            MarkPosition(position_id=a, mark_price=d(101)),
            MarkPosition(position_id="nobody", mark_price=d(1)),
            MarkPosition(position_id=b, mark_price=d("202.5"), unrealized_pnl=d("-3.25")),
            MarkPosition(position_id=c, mark_price=d(301)),
            MarkPosition(position_id=a, mark_price=d(-1)),
            MarkPosition(position_id=a, mark_price=d(0)),
            MarkPosition(position_id=a, mark_price=d(5), contracts=d(-1)),
            MarkPosition(position_id=a, mark_price=d(5), initial_margin=d(-2)),
            MarkPosition(position_id=b, mark_price=_Price(7)),
            MarkPosition(position_id=b, mark_price=d(8), unrealized_pnl=_Price(1)),
            MarkPosition(
                position_id=b, mark_price=d("203.125"), unrealized_pnl=d("1e-12"),
                contracts=d("3"), initial_margin=d("1e15"), source=Source.EXCHANGE,
            ),
            MarkPosition(position_id=a, mark_price=d("1e-12"), initial_margin=d(0)),
            MarkPosition(position_id=a, mark_price=d("104")),
        ]  # fmt: skip

    def outcome(result: object) -> object:
        if isinstance(result, BaseException):
            return (type(result), str(result))
        assert isinstance(result, list)
        return [(r.stream, r.event) for r in result]

    async def setup(ledger: Ledger) -> list[str]:
        a, b, c = await _open_three(ledger)
        await ledger.close_position(c, price=300)
        return [a, b, c]

    async with Ledger(tmp_path / "together.db", settings=SETTINGS) as ledger:
        ids = await setup(ledger)
        deciders = [ledger._decider(command) for command in commands(*ids)]
        together, transactions = await one_group(ledger, deciders)
        assert transactions == 1, "the jobs did not share one group"
        live = ledger.book
    async with Ledger(tmp_path / "alone.db", settings=SETTINGS) as other:
        other_ids = await setup(other)
        alone: list[object] = []
        for command in commands(*other_ids):
            try:
                alone.append(await other.execute(command))
            except Exception as exc:
                alone.append(exc)
    renamed = dict(zip(other_ids, ids, strict=True))
    expected = [outcome(result) for result in alone]
    got = [outcome(result) for result in together]
    for i, (mine, theirs) in enumerate(zip(got, expected, strict=True)):
        if isinstance(theirs, list):
            theirs = [
                (renamed[stream], msgspec.structs.replace(event, position_id=renamed[stream]))
                for stream, event in theirs
            ]
        elif renamed:
            text = theirs[1]  # type: ignore[index]
            for old, new in renamed.items():
                text = text.replace(old, new)
            theirs = (theirs[0], text)  # type: ignore[index]
        assert mine == theirs, (i, mine, theirs)
    refused = [i for i, o in enumerate(got) if isinstance(o, tuple)]
    assert refused == [1, 3, 4, 5, 6, 7, 8, 9], got
    log = await stored(tmp_path / "together.db")
    folded = fold_records(log)
    assert live.open == folded.open and live.last_hash == folded.last_hash


async def test_a_mark_the_book_cannot_take_fails_alone_when_folded_with_others(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold of waiting marks fails (here, on a mark at price 666): they are unstaged and
    decided again one at a time, and only that mark's command fails."""
    poison = Decimal(666)

    def refusing(real: Callable[..., Any]) -> Callable[..., Any]:
        def fold(book: Book, items: Any, *args: Any, **kwargs: Any) -> Any:
            items = list(items) if not isinstance(items, Recorded) else items
            for item in [items] if isinstance(items, Recorded) else items:
                event = item.event if isinstance(item, Recorded) else item[2]
                if isinstance(event, PositionMarked) and event.mark_price == poison:
                    raise ArithmeticError("this book cannot take a mark at 666")
            return real(book, items, *args, **kwargs)

        return fold

    async with Ledger(db_path, settings=SETTINGS) as ledger:
        ids = await _open_three(ledger)
        monkeypatch.setattr(Book, "apply", refusing(Book.apply))
        monkeypatch.setattr(Book, "apply_facts", refusing(Book.apply_facts))
        a, b, _ = ids
        deciders = [
            ledger._decider(mark_command(pid, price))
            for pid, price in [(a, 101), (b, 201), (a, 666), (b, 202), (a, 102)]
        ]
        outcomes, transactions = await one_group(ledger, deciders)
        monkeypatch.undo()
        assert transactions == 1
        assert isinstance(outcomes[2], StoreError), outcomes[2]
        assert all(isinstance(o, list) and len(o) == 1 for i, o in enumerate(outcomes) if i != 2)
        live = ledger.book
        after = await ledger.mark(a, 103)  # the ledger goes on
    log = await stored(db_path)
    marks = [r.event.mark_price for r in log if isinstance(r.event, PositionMarked)]
    assert marks == [101, 201, 202, 102, 103]
    assert len({r.event_id for r in log}) == len(log)
    folded = fold_records(log[:-1])
    assert live.open == folded.open and live.last_hash == folded.last_hash
    assert after.current_price == 103


async def test_a_mark_that_cannot_be_staged_fails_alone_when_staged_with_others(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run of marks is staged in one call (ledger.service._decide_marks), all or nothing:
    when it fails (here, on a mark at price 666) nothing of the run stays staged, its jobs
    are decided again one at a time, and only that mark's command fails."""
    poison = Decimal(666)
    real = StoreTransaction.stage
    calls: list[int] = []

    def stage(tx: StoreTransaction, batch: Sequence[NewEvent], **kwargs: Any) -> list[Recorded]:
        calls.append(len(batch))
        marks = [new.event for new in batch if isinstance(new.event, PositionMarked)]
        if any(event.mark_price == poison for event in marks):
            raise ValueError("this store cannot take a mark at 666")
        return real(tx, batch, **kwargs)

    async with Ledger(db_path, settings=SETTINGS) as ledger:
        ids = await _open_three(ledger)
        a, b, _ = ids
        deciders = [
            ledger._decider(mark_command(pid, price))
            for pid, price in [(a, 101), (b, 201), (a, 666), (b, 202), (a, 102)]
        ]
        monkeypatch.setattr(StoreTransaction, "stage", stage)
        outcomes, transactions = await one_group(ledger, deciders)
        monkeypatch.undo()
        assert transactions == 1
        assert calls[0] == 5, "the run was not staged in one call"
        assert isinstance(outcomes[2], StoreError), outcomes[2]
        assert all(isinstance(o, list) and len(o) == 1 for i, o in enumerate(outcomes) if i != 2)
        live = ledger.book
    log = await stored(db_path)
    marks = [r.event.mark_price for r in log if isinstance(r.event, PositionMarked)]
    assert marks == [101, 201, 202, 102]
    folded = fold_records(log)
    assert live.open == folded.open and live.last_hash == folded.last_hash
