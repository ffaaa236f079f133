"""Hypothesis strategies and helpers shared by the tests: valid histories and stamped records.

A history is drawn as abstract actions; `command_for` turns each into a command against the
book as it stands (picking among open positions by index), so every drawn history is valid.
`Stamper` wraps events in Recorded envelopes with increasing seq and time and a real chain hash.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import strategies as st

from ledger.codec import SCHEMA_VERSION, encode_event
from ledger.commands import (
    AnyCommand,
    ClosePosition,
    IncreasePosition,
    Limits,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordFunding,
    RecordPartialExit,
)
from ledger.envelope import GENESIS_HASH, Recorded, chain_hash
from ledger.errors import CommandRejected
from ledger.events import AnyEvent, stream_of
from ledger.rules import decide
from ledger.values import Side, to_micros
from projections.book import Book

T0 = datetime(2025, 1, 7, 16, 45, tzinfo=UTC)
SYMBOLS = ("SOL/USDT:USDT", "BTC/USDT:USDT", "ETH/USDT:USDT")


class Stamper:
    """Wraps events in envelopes as a store would: seq, stream version, times, chain hash."""

    def __init__(self, start: datetime = T0) -> None:
        self.seq = 0
        self.hash = GENESIS_HASH
        self.versions: dict[str, int] = {}
        self.start = start

    def at(self, seq: int) -> datetime:
        """The occurred_at given to the event with this seq (one second apart)."""
        return self.start + timedelta(seconds=seq)

    def stamp(self, event: AnyEvent) -> Recorded:
        self.seq += 1
        stream = stream_of(event)
        version = self.versions.get(stream, 0) + 1
        self.versions[stream] = version
        moment = self.at(self.seq)
        event_id = f"evt-{self.seq}"
        self.hash = chain_hash(
            self.hash,
            seq=self.seq,
            stream=stream,
            version=version,
            event_id=event_id,
            occurred_us=to_micros(moment),
            recorded_us=to_micros(moment),
            schema_version=SCHEMA_VERSION,
            body=encode_event(event),
        )
        return Recorded(
            seq=self.seq,
            stream=stream,
            version=version,
            event_id=event_id,
            occurred_at=moment,
            recorded_at=moment,
            schema_version=SCHEMA_VERSION,
            event=event,
            hash=self.hash,
        )

    def stamp_all(self, events: Iterable[AnyEvent]) -> list[Recorded]:
        return [self.stamp(event) for event in events]


# -- abstract actions ---------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAct:
    symbol: str
    side: Side
    qty: Decimal
    price: Decimal
    leverage: int
    fee: Decimal
    margin: Decimal | None


@dataclass(frozen=True)
class MarkAct:
    pick: int
    price: Decimal
    unrealized_pnl: Decimal | None
    margin: Decimal | None


@dataclass(frozen=True)
class ExitAct:
    pick: int
    fraction: Decimal
    price: Decimal
    fee: Decimal
    realized_pnl: Decimal | None


@dataclass(frozen=True)
class CloseAct:
    pick: int
    price: Decimal | None
    fee: Decimal
    realized_pnl: Decimal | None


@dataclass(frozen=True)
class FundingAct:
    pick: int
    amount: Decimal


@dataclass(frozen=True)
class IncreaseAct:
    pick: int
    qty: Decimal
    price: Decimal
    fee: Decimal


@dataclass(frozen=True)
class BalanceAct:
    total: Decimal
    available: Decimal


Action = OpenAct | MarkAct | ExitAct | CloseAct | FundingAct | IncreaseAct | BalanceAct


def cents(low: int, high: int) -> st.SearchStrategy[Decimal]:
    """Exact Decimals with two places between low/100 and high/100."""
    return st.integers(low, high).map(lambda n: Decimal(n) / 100)


prices = cents(1, 10_000_000)
quantities = st.integers(1, 100_000).map(lambda n: Decimal(n) / 1000)
fees = cents(0, 500)
signed_pnl = cents(-100_000, 100_000)
picks = st.integers(0, 10)

open_actions = st.builds(
    OpenAct,
    symbol=st.sampled_from(SYMBOLS),
    side=st.sampled_from(list(Side)),
    qty=quantities,
    price=prices,
    leverage=st.integers(1, 100),
    fee=fees,
    margin=st.none() | cents(1, 10_000_000),
)
actions: st.SearchStrategy[Action] = st.one_of(
    open_actions,
    st.builds(
        MarkAct,
        pick=picks,
        price=prices,
        unrealized_pnl=st.none() | signed_pnl,
        margin=st.none() | cents(1, 10_000_000),
    ),
    st.builds(
        ExitAct,
        pick=picks,
        fraction=st.sampled_from([Decimal("0.1"), Decimal("0.25"), Decimal("0.5"), Decimal(1)]),
        price=prices,
        fee=fees,
        realized_pnl=st.none() | signed_pnl,
    ),
    st.builds(
        CloseAct,
        pick=picks,
        price=st.none() | prices,
        fee=fees,
        realized_pnl=st.none() | signed_pnl,
    ),
    st.builds(FundingAct, pick=picks, amount=cents(-500, 500)),
    st.builds(IncreaseAct, pick=picks, qty=quantities, price=prices, fee=fees),
    st.builds(BalanceAct, total=cents(0, 10_000_000), available=cents(0, 10_000_000)),
)
# Opening actions first make sure most histories have positions to act on.
histories: st.SearchStrategy[list[Action]] = st.builds(
    lambda head, tail: [*head, *tail],
    st.lists(open_actions, min_size=1, max_size=4),
    st.lists(actions, max_size=40),
)


def command_for(action: Action, book: Book, serial: int) -> AnyCommand | None:
    """The command an action stands for against this book, or None when it has no target."""
    if isinstance(action, OpenAct):
        return OpenPosition(
            position_id=f"p{serial}",
            symbol=action.symbol,
            side=action.side,
            qty=action.qty,
            entry_price=action.price,
            leverage=action.leverage,
            fee=action.fee,
            real_initial_margin=action.margin,
        )
    if isinstance(action, BalanceAct):
        return ObserveBalance(total=action.total, available=action.available)
    ids = list(book.open)
    if not ids:
        return None
    target = ids[action.pick % len(ids)]
    if isinstance(action, MarkAct):
        return MarkPosition(
            position_id=target,
            mark_price=action.price,
            unrealized_pnl=action.unrealized_pnl,
            initial_margin=action.margin,
        )
    if isinstance(action, ExitAct):
        return RecordPartialExit(
            position_id=target,
            qty=book.open[target].qty * action.fraction,
            price=action.price,
            fee=action.fee,
            realized_pnl=action.realized_pnl,
        )
    if isinstance(action, CloseAct):
        return ClosePosition(
            position_id=target,
            price=action.price,
            fee=action.fee,
            realized_pnl=action.realized_pnl,
        )
    if isinstance(action, FundingAct):
        return RecordFunding(
            position_id=target, amount=action.amount, execution_id=f"fund-{serial}"
        )
    return IncreasePosition(position_id=target, qty=action.qty, price=action.price, fee=action.fee)


@dataclass
class History:
    """A valid history: its records, and the book built by applying each as it was decided."""

    records: list[Recorded]
    incremental: Book
    rejected: int


def run_history(
    history: Sequence[Action], limits: Limits | None = None, stamper: Stamper | None = None
) -> History:
    """Decide each action's command against the book, stamp the events and apply them."""
    limits = limits or Limits()
    stamper = stamper or Stamper()
    book = Book()
    records: list[Recorded] = []
    rejected = 0
    for serial, action in enumerate(history):
        command = command_for(action, book, serial)
        if command is None:
            continue
        try:
            events = decide(book, command, limits)
        except CommandRejected:
            rejected += 1  # e.g. a sixth open position, or a second long on one symbol
            continue
        for event in events:
            record = stamper.stamp(event)
            book.apply(record)
            records.append(record)
    return History(records, book, rejected)
