"""Adversary: the durability setting, given by a caller as a bot builds its settings in code
(`Settings(...)`, which msgspec does not type-check) or straight to the store, went into
`PRAGMA synchronous = {value}` unchecked: "OFF" (or "0", or "normal" in lower case) opened a
ledger that acknowledges commits it never syncs, silently, and text with a second statement
failed on the first write with a driver's error. Anything but "FULL" or "NORMAL" is refused
before anything is opened or written: by Settings as its other out-of-range knobs are
(ValueError), by the store with a typed error (ConfigError, a LedgerError)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.commands import OpenPosition
from ledger.errors import ConfigError, LedgerError
from ledger.service import Ledger
from ledger.settings import Settings, load_settings
from ledger.store.sqlite import SQLiteEventStore
from ledger.values import Side

pytestmark = pytest.mark.anyio

BAD: list[Any] = ["OFF", "0", "off", "full", "normal", "EXTRA", "FULL; PRAGMA foo=1", "", 2, None]


@pytest.mark.parametrize("bad", BAD, ids=repr)
def test_settings_refuse_a_synchronous_mode_but_full_or_normal(bad: Any) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        Settings(synchronous=bad)
    with pytest.raises(ConfigError):
        load_settings(environ={}, synchronous=bad) if bad is not None else load_settings(
            environ={"POSITION_LEDGER_SYNCHRONOUS": "OFF"}
        )


@pytest.mark.parametrize("bad", BAD, ids=repr)
async def test_the_store_refuses_a_synchronous_mode_but_full_or_normal_and_opens_nothing(
    tmp_path: Path, bad: Any
) -> None:
    db = tmp_path / "ledger.db"
    with pytest.raises(ConfigError, match="synchronous") as refused:
        SQLiteEventStore(db, synchronous=bad)
    assert isinstance(refused.value, LedgerError)
    assert not db.exists()


@pytest.mark.parametrize("mode", ["FULL", "NORMAL"])
async def test_a_ledger_writes_at_the_synchronous_mode_it_was_given(
    tmp_path: Path, mode: str
) -> None:
    async with Ledger(tmp_path / "ledger.db", settings=Settings(synchronous=mode)) as ledger:  # type: ignore[arg-type]
        await ledger.execute(
            OpenPosition(
                position_id="p1",
                symbol="SOL/USDT:USDT",
                side=Side.BUY,
                qty=Decimal(1),
                entry_price=Decimal(100),
                leverage=5,
            )
        )
        store = ledger.store
        assert isinstance(store, SQLiteEventStore) and store._conn is not None
        (level,) = store._conn.execute("PRAGMA synchronous").fetchone()
        assert level == {"NORMAL": 1, "FULL": 2}[mode]
