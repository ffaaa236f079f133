"""Attack (adversary): a group commit's fast lanes (a run of marks decided with
`rules.decide_mark` and checked with `_plain_mark`, staged and folded together; the one-pass
open rules: duplicate per account and market in any spelling, then the per-account limit;
`Book.apply` folding each event inline) against the plainest reference there is: the same
commands executed one at a time, each in its own transaction, on a fresh ledger.

Hypothesis draws command lists over three position ids: opens (two accounts, one market
spelled three ways, both sides, limits on and off, a limit of two open positions per
account), marks (good, negative, zero, with a negative contract count, of a position closed
or opened earlier in the same group), partial exits (some larger than what is left, some of
all that is left, by qty or by notional, with a PnL and a fee) and closes, increases, funding
payments and balance observations, in any order. The first third runs one command at a time
(positions.json copied aside then), the rest is queued behind a held writer role and committed
as ONE group; each command must get exactly what it gets alone (the same
events, or the same refusal: type and message), and the group's published book must equal a
fold of its log, ledgers reopened from positions.json (the last one, and the one taken
before the group: snapshot + tail) and one rebuilt from the log alone.
"""

from __future__ import annotations

import shutil
import tempfile
from decimal import Decimal
from pathlib import Path

import anyio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.commands import (
    ClosePosition,
    IncreasePosition,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordFunding,
    RecordPartialExit,
)
from ledger.errors import LedgerError
from ledger.service import Decider, Ledger
from ledger.settings import Settings
from ledger.values import Side, Source
from projections.book import fold_records
from tests._workers import book_state
from tests.test_group_commit import one_group, stored

LIMITS = Settings(max_concurrent_positions=2)
IDS = ("p0", "p1", "p2")
SPELLINGS = ("AUSDT", "A/USDT:USDT", "a-usdt", "BUSDT")

Command = (
    OpenPosition
    | MarkPosition
    | RecordPartialExit
    | ClosePosition
    | IncreasePosition
    | RecordFunding
    | ObserveBalance
)

prices = st.sampled_from([Decimal(-1), Decimal(0), Decimal("1e-12"), Decimal(97), Decimal("103.5")])
qtys = st.sampled_from([Decimal("0.5"), Decimal(1), Decimal(2), Decimal(3)])

opens = st.builds(
    OpenPosition,
    position_id=st.sampled_from(IDS),
    symbol=st.sampled_from(SPELLINGS),
    side=st.sampled_from([Side.BUY, Side.SELL]),
    qty=qtys,
    entry_price=st.sampled_from([Decimal(100), Decimal("99.5")]),
    leverage=st.sampled_from([1, 5]),
    enforce_limits=st.booleans(),
    account=st.sampled_from(["main", "other"]),
)
marks = st.builds(
    MarkPosition,
    position_id=st.sampled_from((*IDS, "nobody")),
    mark_price=prices,
    contracts=st.sampled_from([None, Decimal(-1), Decimal(2)]),
)
exits = st.builds(
    RecordPartialExit,
    position_id=st.sampled_from(IDS),
    price=st.sampled_from([Decimal(101), Decimal(99)]),
    qty=qtys,
)
closes = st.builds(
    ClosePosition,
    position_id=st.sampled_from(IDS),
    price=st.sampled_from([None, Decimal(104)]),
)
increases = st.builds(
    IncreasePosition,
    position_id=st.sampled_from(IDS),
    qty=qtys,
    price=st.sampled_from([Decimal(100), Decimal(105)]),
)
fundings = st.builds(
    RecordFunding,
    position_id=st.sampled_from(IDS),
    amount=st.sampled_from([Decimal("-0.5"), Decimal("0.25")]),
    execution_id=st.sampled_from(["x1", "x2"]),
)
balances = st.builds(
    ObserveBalance,
    total=st.sampled_from([Decimal(1000), Decimal(0)]),
    available=st.sampled_from([Decimal(900), Decimal(5000)]),
)
exchange_marks = st.builds(
    MarkPosition,
    position_id=st.sampled_from(IDS),
    mark_price=prices,
    unrealized_pnl=st.sampled_from([None, Decimal("-3.5")]),
    initial_margin=st.sampled_from([None, Decimal(0), Decimal(7)]),
    source=st.sampled_from([Source.BOT, Source.EXCHANGE]),
)
notional_exits = st.builds(
    RecordPartialExit,
    position_id=st.sampled_from(IDS),
    price=st.just(Decimal(101)),
    notional=st.sampled_from([Decimal(50), Decimal(100), Decimal(1000)]),
    realized_pnl=st.sampled_from([None, Decimal(3)]),
    fee=st.sampled_from([Decimal(0), Decimal("0.1")]),
)
commands = st.lists(
    st.one_of(
        opens,
        marks,
        marks,
        exchange_marks,
        exits,
        notional_exits,
        closes,
        increases,
        fundings,
        balances,
    ),
    min_size=2,
    max_size=14,
)


def outcome(result: object) -> object:
    if isinstance(result, LedgerError):
        return (type(result), str(result))
    assert isinstance(result, list), result  # anything but a LedgerError is a finding
    return [(r.stream, r.event) for r in result]


async def grouped(db: Path, batch: list[Command]) -> tuple[list[object], tuple[object, ...]]:
    """The first third of the batch one command at a time, positions.json copied aside (the
    snapshot a later start-up takes, the rest being its tail), then the rest as one group."""
    prefix = len(batch) // 3
    async with Ledger(db, snapshot_path=db.with_suffix(".json"), settings=LIMITS) as ledger:
        results: list[object] = []
        for command in batch[:prefix]:
            try:
                results.append(await ledger.execute(command))
            except LedgerError as refused:
                results.append(refused)
        written = await ledger.write_snapshot()
        shutil.copyfile(written, db.with_name("mid.json"))
        deciders: list[Decider] = []
        where: list[int] = []
        for command in batch[prefix:]:
            try:
                deciders.append(ledger._decider(command))
            except LedgerError as refused:  # refused before it is queued
                results.append(refused)
                continue
            where.append(len(results))
            results.append(None)
        got, transactions = await one_group(ledger, deciders)
        assert transactions <= 1, "the commands did not share one group"
        for at, result in zip(where, got, strict=True):
            results[at] = result
        live = book_state(ledger.book)
    return [outcome(r) for r in results], live


async def one_by_one(db: Path, batch: list[Command]) -> list[object]:
    async with Ledger(db, settings=LIMITS) as ledger:
        results: list[object] = []
        for command in batch:
            try:
                results.append(await ledger.execute(command))
            except LedgerError as refused:
                results.append(refused)
    return [outcome(r) for r in results]


async def reopened(db: Path, snapshot: Path) -> tuple[object, ...]:
    async with Ledger(db, snapshot_path=snapshot, settings=LIMITS) as ledger:
        return book_state(ledger.book)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=commands)
def test_a_group_gives_each_command_what_it_gets_alone(batch: list[Command]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        together, live = anyio.run(grouped, root / "group.db", batch)
        alone = anyio.run(one_by_one, root / "alone.db", batch)
        assert together == alone
        log = anyio.run(stored, root / "group.db")
        assert live == book_state(fold_records(log))
        # from positions.json, then by the rebuild's own fold (Book.apply_facts) from nothing
        assert anyio.run(reopened, root / "group.db", root / "group.json") == live
        # from the snapshot taken before the group, the group's events its tail
        assert anyio.run(reopened, root / "group.db", root / "mid.json") == live
        assert anyio.run(reopened, root / "group.db", root / "none" / "positions.json") == live
