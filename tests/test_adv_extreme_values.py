"""Adversary: the commands' own events at the ends of what the builders accept (1e-12, 1e15,
28 significant digits, fees of both ends) through the fast paths (64c9aa1/45040d7's
`_plain_event` skipping the decoder's round trip, 9a27539's `_decide_one`, efc6566's
`run_now`): every refusal is a typed LedgerError, and the live book equals a fold of the log
and a reopen from positions.json plus the tail."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import msgspec
import pytest

from ledger.errors import LedgerError
from ledger.rebuild import fold_log
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import Book

pytestmark = pytest.mark.anyio

VALUES = [
    Decimal("1e-12"),
    Decimal("1e15"),
    Decimal("999999999999999.999999999999"),
    Decimal("0.000000000001"),
    Decimal("123456789.123456789123"),
    Decimal(1),
    Decimal(3),
]
FEES = [Decimal(0), *VALUES]


def _same(a: Book, b: Book) -> None:
    assert (a.last_seq, a.last_hash) == (b.last_seq, b.last_hash)
    assert a.open == b.open
    assert dict(a.closed) == dict(b.closed)
    assert msgspec.json.encode(a.acc) == msgspec.json.encode(b.acc)
    assert msgspec.json.encode(a.accounts) == msgspec.json.encode(b.accounts)


async def test_commands_at_the_ends_of_the_bounds_are_typed_and_fold_alike(
    tmp_path: Path,
) -> None:
    rng = random.Random(1)
    db = tmp_path / "ledger.db"
    settings = Settings(
        max_concurrent_positions=10_000,
        snapshot_every_events=25,
        positions_file=str(tmp_path / "positions.json"),
    )
    accepted = 0
    async with Ledger(db, settings=settings) as ledger:
        for i in range(300):
            live = list(ledger.book.open)
            roll = rng.random()
            try:
                if roll < 0.35 or not live:
                    await ledger.open_position(
                        "XUSDT",
                        rng.choice(["buy", "sell"]),
                        entry_price=rng.choice(VALUES),
                        leverage=rng.choice([1, 2, 100]),
                        qty=rng.choice(VALUES),
                        fee=rng.choice(FEES),
                        position_id=f"x{i}",
                    )
                elif roll < 0.5:
                    await ledger.mark(rng.choice(live), rng.choice(VALUES))
                elif roll < 0.7:
                    await ledger.register_partial_exit(
                        rng.choice(live),
                        price=rng.choice(VALUES),
                        qty=rng.choice(VALUES),
                        fee=rng.choice(FEES),
                    )
                elif roll < 0.8:
                    await ledger.record_funding(
                        rng.choice(live),
                        rng.choice(VALUES) * rng.choice([1, -1]),
                        execution_id=f"f{i}",
                    )
                else:
                    await ledger.close_position(
                        rng.choice(live), price=rng.choice(VALUES), fee=rng.choice(FEES)
                    )
                accepted += 1
            except LedgerError:
                pass  # refused, typed: nothing changed
        live_book = ledger.book
    assert accepted > 150 and live_book.closed
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        await store.verify_chain()
        _same(live_book, await fold_log(store))
    finally:
        await store.close()
    async with Ledger(db, settings=settings) as reopened:
        _same(reopened.book, live_book)
