"""Adversary: commands cancelled at every point of their way (a group of one, decided on its
own path once 81828ef merges; a group of several; a group handed to the writer thread), by
`task.cancel()` after k turns of the loop for every k until the command ends on its own.
Whatever the caller heard, the live book is the log's (a command committed for a cancelled
caller is in both, one refused or never run in neither), and it equals a fresh fold."""

from __future__ import annotations

import asyncio
from contextlib import nullcontext
from pathlib import Path

import msgspec
import pytest

from ledger.events import PositionOpened
from ledger.rebuild import fold_log
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.store.sqlite import SQLiteEventStore
from projections.book import Book
from tests.test_adv_cancel_appends import _role_held_elsewhere

pytestmark = pytest.mark.anyio


async def _rebuilt(db_path: Path) -> Book:
    store = SQLiteEventStore(db_path, read_only=True)
    await store.open()
    try:
        await store.verify_chain()
        return await fold_log(store)
    finally:
        await store.close()


@pytest.mark.parametrize("mode", ["alone", "in a group", "role taken"])
async def test_a_command_cancelled_after_any_number_of_turns_is_in_book_and_log_or_neither(
    tmp_path: Path, mode: str
) -> None:
    db = tmp_path / "ledger.db"
    settings = Settings(
        max_concurrent_positions=1000, positions_file=str(tmp_path / "positions.json")
    )
    async with Ledger(db, settings=settings) as ledger:
        for turns in range(12):
            held = _role_held_elsewhere(ledger.store) if mode == "role taken" else nullcontext()
            with held as release:
                task = asyncio.ensure_future(
                    ledger.open_position(
                        "CXLUSDT",
                        "buy",
                        entry_price=100,
                        leverage=2,
                        qty=1,
                        position_id=f"c{turns}",
                    )
                )
                others = (
                    [
                        asyncio.ensure_future(ledger.mark(f"c{turns - 1}", 101))
                        for _ in range(3)
                        if turns
                    ]
                    if mode == "in a group"
                    else []
                )
                for _ in range(turns):
                    await asyncio.sleep(0)
                task.cancel()
                if release is not None:
                    release.set()
                await asyncio.gather(task, *others, return_exceptions=True)
            await ledger.refresh()
        live = ledger.book
        in_log = {
            r.event.position_id
            for r in await ledger.store.read()
            if isinstance(r.event, PositionOpened)
        }
    rebuilt = await _rebuilt(db)
    assert set(live.open) == set(rebuilt.open) == in_log
    assert (live.last_seq, live.last_hash) == (rebuilt.last_seq, rebuilt.last_hash)
    assert msgspec.json.encode(live.acc) == msgspec.json.encode(rebuilt.acc)
