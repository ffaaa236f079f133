"""The main job: the demo session runs end to end and leaves a consistent ledger behind."""

from __future__ import annotations

import json
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from ledger.envelope import Recorded
from ledger.events import PositionClosed
from ledger.service import Ledger
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Source
from projections.book import fold_records


def test_demo_leaves_a_verifiable_ledger(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = subprocess.run(
        [sys.executable, "-c", "from ledger.demo import main; raise SystemExit(main())",
         "--data", str(data), "--steps", "30"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "Session summary" in done.stdout

    records: list[Recorded] = []

    async def check() -> None:
        store = SQLiteEventStore(data / "ledger.db", read_only=True)
        await store.open()
        try:
            report = await store.verify_chain()
            records.extend(await store.read())
            book = fold_records(records)
        finally:
            await store.close()
        snapshot = json.loads((data / "positions.json").read_text(), parse_float=Decimal)
        assert snapshot["last_seq"] == report.last_seq == book.last_seq
        assert snapshot["last_hash"] == report.last_hash
        assert not book.open, "the demo closes everything it opens"
        assert len(snapshot["closed_positions"]) == len(book.closed) >= 4
        summary = book.summary()
        assert summary.closed_trades == summary.wins + summary.losses
        assert summary.total_realized_pnl == sum(p.realized_pnl for p in book.closed.values())
        closed = list(book.closed.values())
        assert any(p.source is Source.EXCHANGE for p in closed), "a position adopted by hand"
        assert any(p.partial_exits and p.partial_exits[0].rule for p in closed), "an ROE exit"
        assert any(p.funding for p in closed), "funding was paid"
        events = [r.event for r in records]
        assert any(
            isinstance(e, PositionClosed) and e.source is Source.EXCHANGE and not e.pnl_estimated
            for e in events
        ), "a close seen on the exchange, with Bybit's closed PnL"
        # every fee, funding payment and PnL the exchange booked is in the ledger, to the cent
        assert summary.balance == 10_000 + summary.total_realized_pnl
        assert snapshot["session_stats"]["total_pnl"] == summary.total_pnl

    anyio.run(check)


@pytest.mark.anyio
async def test_demo_can_run_twice_on_the_same_folder(tmp_path: Path) -> None:
    from rich.console import Console

    from ledger.demo import run_session

    first = await run_session(tmp_path, seed=1, steps=5, console=Console(quiet=True))
    second = await run_session(tmp_path, seed=2, steps=5, console=Console(quiet=True))
    assert second.closed_trades == first.closed_trades * 2
    async with Ledger(tmp_path / "ledger.db", snapshot_path=tmp_path / "positions.json") as led:
        assert not led.rebuilt_on_start
        assert led.session_summary() == second
