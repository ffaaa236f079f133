"""Adversary: a book once published never changes (81828ef's `Book.successor` shares the
imported files and the closed layers' base, 4e9ea63 one per-symbol dict between the fleet's
and a lone account's sums, a snapshot load shares it too). A reader holding `ledger.book`
keeps exactly the state it read while commands go on: single commands (a group of one,
`_decide_one`), groups of several with refused jobs among them (the fork folded again), a
reopen from positions.json, funding that amends a closed position. Each held book is
encoded when taken and again at the end: the bytes are the same."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.errors import LedgerError
from ledger.service import Ledger
from ledger.settings import Settings
from projections.book import Book
from projections.snapshot import encode_snapshot

pytestmark = pytest.mark.anyio

AT = datetime(2024, 1, 1, tzinfo=UTC)


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        max_concurrent_positions=1000,
        snapshot_every_events=6,
        positions_file=str(tmp_path / "positions.json"),
    )


def _command(rng: random.Random, ledger: Ledger, serial: list[int]) -> Awaitable[Any]:
    live = [p.position_id for p in ledger.book.open.values()]
    roll = rng.random()
    if roll < 0.3 or not live:
        serial[0] += 1
        return ledger.open_position(
            f"S{rng.randint(0, 2)}USDT",
            rng.choice(["buy", "sell"]),
            entry_price=rng.randint(90, 110),
            leverage=2,
            qty=rng.randint(1, 3),
            fee=Decimal("0.1"),
            position_id=f"h{serial[0]}",
        )
    if roll < 0.45:
        return ledger.mark(rng.choice(live), rng.randint(80, 120))
    if roll < 0.6:  # sometimes more than is left: refused, alone
        return ledger.register_partial_exit(
            rng.choice(live), price=rng.randint(80, 120), qty=Decimal(rng.choice(["0.5", "9"]))
        )
    if roll < 0.72:
        target = rng.choice(live + [p for p in ledger.book.closed])
        return ledger.record_funding(
            target, Decimal(rng.randint(-2, 2)) or Decimal(1), execution_id=f"f{rng.random()}"
        )
    return ledger.close_position(rng.choice(live), price=rng.randint(80, 120))


@pytest.mark.parametrize("seed", [4, 5])
async def test_a_held_book_never_changes_while_commands_go_on(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    serial = [0]
    held: list[tuple[Book, bytes]] = []

    def hold(book: Book) -> None:
        held.append((book, encode_snapshot(book, AT)))

    db = tmp_path / "ledger.db"
    for _ in range(2):  # the second time from positions.json (shared per-symbol figures)
        async with Ledger(db, settings=_settings(tmp_path)) as ledger:
            hold(ledger.book)
            for step in range(40):
                if step % 3 == 2:  # a group of several, some refused
                    calls = [_command(rng, ledger, serial) for _ in range(rng.randint(2, 6))]
                    outcomes = await asyncio.gather(*calls, return_exceptions=True)
                    for outcome in outcomes:
                        assert not isinstance(outcome, BaseException) or isinstance(
                            outcome, LedgerError
                        ), outcome
                else:
                    with contextlib.suppress(LedgerError):  # refused alone: no change
                        await _command(rng, ledger, serial)
                hold(ledger.book)
            assert ledger.book.closed, "nothing was closed"
    changed = [i for i, (book, before) in enumerate(held) if encode_snapshot(book, AT) != before]
    assert not changed, f"held books {changed} changed after they were published"
