"""Adversary: per-symbol figures of several accounts in one fleet ledger (4e9ea63 shares one
per_symbol dict between the fleet's sums and a lone account's, on a close and on a snapshot
load; 81828ef's `Book.successor` copies the accounts' sums on its own path).

Two ledgers of two accounts write one file, on the same symbols, each folding the other's
events from the tail; one starts from a snapshot written while it was the only account (the
load shares the dict), then the other account's first closes arrive. After every step each
live book equals a fold of the log, a reopen from positions.json plus the tail equals it, and
each account's per-symbol figures equal sums written here from the closed positions.
"""

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

SYMBOLS = ["S0USDT", "S1USDT", "S2USDT"]


def _settings(tmp_path: Path, account: str) -> Settings:
    return Settings(
        max_concurrent_positions=1000,
        snapshot_every_events=5,
        account=account,
        positions_file=str(tmp_path / "positions.json"),
    )


def _figures(book: Book) -> dict[str, str]:
    return {
        "fleet": msgspec.json.encode(book.acc).decode(),
        **{name: msgspec.json.encode(acc).decode() for name, acc in book.accounts.items()},
    }


def _same_book(a: Book, b: Book) -> None:
    assert (a.last_seq, a.last_hash) == (b.last_seq, b.last_hash)
    assert a.open == b.open
    assert dict(a.closed) == dict(b.closed)
    assert _figures(a) == _figures(b)


def _expected_per_symbol(book: Book) -> dict[str | None, dict[str, tuple[int, Decimal]]]:
    """(closed trades, realized PnL) per symbol, per account and for the fleet (None),
    summed here from the closed positions."""
    out: dict[str | None, dict[str, tuple[int, Decimal]]] = {}
    for position in book.closed.values():
        for key in (None, position.account):
            figures = out.setdefault(key, {})
            count, pnl = figures.get(position.symbol, (0, Decimal(0)))
            figures[position.symbol] = (count + 1, pnl + position.realized_pnl)
    return out


def _check_per_symbol(book: Book) -> None:
    expected = _expected_per_symbol(book)
    got: dict[str | None, dict[str, tuple[int, Decimal]]] = {
        None: {s: (f.closed_trades, f.realized_pnl) for s, f in book.acc.per_symbol.items()}
    }
    for name, acc in book.accounts.items():
        figures = {s: (f.closed_trades, f.realized_pnl) for s, f in acc.per_symbol.items()}
        if figures:
            got[name] = figures
    assert got == expected


async def _rebuilt(db_path: Path) -> Book:
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        return await fold_log(store)
    finally:
        await store.close()


async def _step(rng: random.Random, ledger: Ledger, serial: list[int]) -> None:
    mine = [p for p in ledger.book.open.values() if p.account == ledger.account]
    roll = rng.random()
    try:
        if roll < 0.35 or not mine:
            serial[0] += 1
            await ledger.open_position(
                rng.choice(SYMBOLS),
                rng.choice(["buy", "sell"]),
                entry_price=rng.randint(90, 110),
                leverage=2,
                qty=rng.randint(1, 4),
                fee=Decimal("0.01"),
                position_id=f"{ledger.account}-{serial[0]}",
            )
        elif roll < 0.5:
            await ledger.mark(rng.choice(mine).position_id, rng.randint(80, 120))
        elif roll < 0.62:
            await ledger.register_partial_exit(
                rng.choice(mine).position_id, price=rng.randint(80, 120), qty=Decimal("0.5")
            )
        elif roll < 0.72:
            closed = [p for p in ledger.book.closed.values() if p.account == ledger.account]
            target = rng.choice(mine + closed)  # a closed one's funding amends its close
            await ledger.record_funding(
                target.position_id,
                Decimal(rng.randint(-3, 3)) or Decimal(1),
                execution_id=f"f{rng.random()}",
            )
        else:
            await ledger.close_position(rng.choice(mine).position_id, price=rng.randint(80, 120))
    except LedgerError:
        pass  # a refusal (an exit larger than what is left): changes nothing


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_two_accounts_on_one_file_keep_exact_per_symbol_figures(
    tmp_path: Path, seed: int
) -> None:
    rng = random.Random(seed)
    db_path = tmp_path / "ledger.db"
    serial = [0]
    # a lone account first: its closes share one dict with the fleet's, and the snapshot
    # written meanwhile is loaded with them shared
    async with Ledger(db_path, settings=_settings(tmp_path, "alpha")) as alpha:
        for _ in range(25):
            await _step(rng, alpha, serial)
        assert any(True for _ in alpha.book.closed.values()), "alpha closed nothing"
    async with (
        Ledger(db_path, settings=_settings(tmp_path, "alpha")) as alpha,
        Ledger(db_path, settings=_settings(tmp_path, "beta")) as beta,
    ):
        for _ in range(60):
            ledger = alpha if rng.random() < 0.5 else beta
            await _step(rng, ledger, serial)
            await alpha.refresh()
            await beta.refresh()
            rebuilt = await _rebuilt(db_path)
            _same_book(alpha.book, rebuilt)
            _same_book(beta.book, rebuilt)
            _check_per_symbol(alpha.book)
        assert {p.account for p in alpha.book.closed.values()} == {"alpha", "beta"}
        live = alpha.book
        await alpha.write_snapshot()
    async with Ledger(db_path, settings=_settings(tmp_path, "beta")) as reopened:
        _same_book(reopened.book, live)
        _check_per_symbol(reopened.book)
