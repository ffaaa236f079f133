"""thread_safe_create_position's usual call (the five fields a position needs, no other) takes
a shorter way than a call with more fields: it must give exactly what the longer way gives,
the same event stored and the same refusal (type, field and message), for every value a seed
bot may pass, good or bad. The longer way is forced with an extra field that changes nothing
(`open_reason=None`: no reason, as when it is not given)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.settings import Settings


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[ThreadSafePositionManager]:
    with ThreadSafePositionManager(
        tmp_path / "positions.json",
        db_path=tmp_path / "ledger.db",
        settings=Settings(max_concurrent_positions=1000),
        account="bot-7",  # not the default: the command must carry the manager's own
    ) as opened:
        yield opened


GOOD = {"side": "buy", "entry_price": 100.0, "position_size": 500.0, "leverage": 5}

# (field, value) changes of the usual call: good values of every type a seed bot passes, and
# every kind of bad one each check refuses
CHANGES: list[tuple[str, Any]] = [
    ("entry_price", 0.1),
    ("entry_price", 43_210.123456789),
    ("entry_price", Decimal("0.000001")),
    ("entry_price", "100.5"),
    ("entry_price", 7),
    ("position_size", 1e-3),
    ("position_size", Decimal("12345.6789")),
    ("leverage", 10.0),  # a float that is an int
    ("leverage", 2.5),
    ("leverage", "5"),
    ("leverage", True),
    ("leverage", 0),
    ("leverage", 10**6),
    ("side", "SHORT"),
    ("side", " long "),
    ("side", "sell"),
    ("side", "up"),
    ("side", 1),
    ("entry_price", -1.0),
    ("entry_price", 0),
    ("entry_price", float("nan")),
    ("entry_price", float("inf")),
    ("entry_price", True),
    ("entry_price", "abc"),
    ("entry_price", 1e30),
    ("position_size", -5.0),
    ("position_size", 0.0),
    ("position_size", None),
    ("entry_price", None),
    ("leverage", None),
    ("side", None),
    ("symbol", None),
    ("symbol", 42),
    ("symbol", ""),
    ("position_size", 1e-20),  # a qty below the bounds
]
# two bad fields at once: the first checked is the one refused
PAIRS: list[dict[str, Any]] = [
    {"symbol": None, "leverage": None},
    {"entry_price": -1.0, "symbol": 42},
    {"symbol": 42, "side": "up"},
    {"side": "up", "position_size": -1.0},
    {"entry_price": "abc", "position_size": None},
    {"position_size": 0.0, "leverage": 0},
]


def outcome(manager: ThreadSafePositionManager, fields: dict[str, Any]) -> tuple[str, object]:
    """What a create did: its refusal (type and message), or the body of the event it stored
    (its id in place of the new one)."""
    try:
        position_id = manager.thread_safe_create_position(**fields)
    except Exception as exc:
        return "refused", (type(exc).__name__, str(exc))
    body = last_body(manager)
    assert body["position_id"] == position_id
    body["position_id"] = "<new id>"
    return "stored", body


def last_body(manager: ThreadSafePositionManager) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{manager.db_path}?mode=ro", uri=True)
    try:
        (body,) = conn.execute("SELECT body FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    finally:
        conn.close()
    parsed: dict[str, Any] = json.loads(body)
    return parsed


@pytest.mark.parametrize("changes", [{field: value} for field, value in CHANGES] + PAIRS)
def test_the_usual_create_gives_what_the_longer_way_gives(
    manager: ThreadSafePositionManager, changes: dict[str, Any]
) -> None:
    usual = {"symbol": "AUSDT", **GOOD, **changes}
    longer = {**usual, "symbol": "BUSDT" if usual["symbol"] == "AUSDT" else usual["symbol"]}
    longer["open_reason"] = None
    kind, got = outcome(manager, usual)
    expected_kind, expected = outcome(manager, longer)
    assert kind == expected_kind
    if kind == "stored":
        assert isinstance(got, dict) and isinstance(expected, dict)
        assert got.pop("symbol") == "AUSDT" and expected.pop("symbol") == "BUSDT"
    assert got == expected


def test_the_usual_create_with_every_field_good_stores_the_seed_values(
    manager: ThreadSafePositionManager,
) -> None:
    kind, body = outcome(manager, {"symbol": "AUSDT", **GOOD})
    assert kind == "stored" and isinstance(body, dict)
    # independent of the ledger: 500 USD at 100 is 5 units, at the bot's own 100.0
    assert Decimal(body["qty"]) == Decimal(5) and body["entry_price"] == "100.0"
    assert body["leverage"] == 5 and body["side"] == "buy" and Decimal(body["fee"]) == 0
    assert body["account"] == "bot-7"
    (position,) = manager.get_active_positions()
    assert position.position_size == 500.0 and position.entry_price == 100.0
