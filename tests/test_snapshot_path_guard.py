"""The library refuses a snapshot_path on the database's own files: positions.json written
there, or a foreign file there moved aside at start-up, would take the log with it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import anyio
import pytest

from ledger.errors import OutputRefused
from ledger.service import Ledger
from ledger.settings import Settings


async def _make(db: Path) -> None:
    async with Ledger(db, settings=Settings()) as ledger:
        await ledger.open_position(
            "SOL/USDT:USDT", "buy", entry_price=100, leverage=5, notional=500, position_id="p1"
        )


def _files(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.is_symlink()
    }


@pytest.mark.parametrize("target", ["db", "wal", "shm", "symlink", "dotdot"])
def test_a_snapshot_path_on_the_database_is_refused_before_anything_opens(
    tmp_path: Path, target: str
) -> None:
    db = tmp_path / "ledger.db"
    anyio.run(_make, db)
    (tmp_path / "sub").mkdir()
    link = tmp_path / "sub" / "positions.json"
    link.symlink_to(db)
    path = {
        "db": db,
        "wal": Path(f"{db}-wal"),
        "shm": Path(f"{db}-shm"),
        "symlink": link,
        "dotdot": tmp_path / "sub" / ".." / "ledger.db",
    }[target]
    before = _files(tmp_path)

    async def open_it() -> None:
        async with Ledger(db, snapshot_path=path, settings=Settings()):
            pass  # pragma: no cover - refused in the constructor

    with pytest.raises(OutputRefused) as refused:
        anyio.run(open_it)
    assert refused.value.option == "snapshot_path"
    assert _files(tmp_path) == before


def test_the_default_snapshot_path_beside_the_database_is_fine(tmp_path: Path) -> None:
    anyio.run(_make, tmp_path / "ledger.db")
    assert (tmp_path / "positions.json").exists()
