"""The log records the limits it was written under, and `verify` judges it by them; times and
files the CLI and the importer accept are handled without a traceback."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.audit_rules import violations
from ledger.commands import DEFAULT_LIMITS, Limits
from ledger.errors import ImportRejected, InvalidValue
from ledger.events import AnyEvent, PositionOpened, RulesConfigured
from ledger.seed_import import plan_import
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import Side, aware_time, parse_time, utc
from projections.book import Book
from tests.strategies import Stamper

ROOT = Path(__file__).resolve().parents[1]


def ledger_cli(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if not k.startswith("POSITION_LEDGER_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=base,
    )


def settings(max_positions: int, max_leverage: int = 100) -> Settings:
    return Settings(max_concurrent_positions=max_positions, max_leverage=max_leverage)


async def open_many(ledger: Ledger, count: int, leverage: int = 2) -> None:
    for n in range(count):
        await ledger.open_position(f"C{n}USDT", "buy", entry_price=10, qty=1, leverage=leverage)


async def recorded_rules(ledger: Ledger) -> list[RulesConfigured]:
    return [
        r.event for r in await ledger.history("account") if isinstance(r.event, RulesConfigured)
    ]


@pytest.mark.anyio
async def test_a_log_written_under_other_limits_verifies_for_any_auditor(db_path: Path) -> None:
    async with Ledger(db_path, settings=settings(10, max_leverage=125)) as ledger:
        await open_many(ledger, 7, leverage=120)
        assert await recorded_rules(ledger) == [
            RulesConfigured(max_concurrent_positions=10, min_leverage=1, max_leverage=125)
        ]
    # the auditor's own settings (3 positions, leverage up to 5) play no part
    auditor = {
        "POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "3",
        "POSITION_LEDGER_MAX_LEVERAGE": "5",
    }
    run = ledger_cli("--db", db_path, "verify", env=auditor)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.anyio
async def test_limits_are_recorded_when_first_used_and_again_only_when_changed(
    db_path: Path,
) -> None:
    async with Ledger(db_path, settings=settings(8)) as ledger:
        await open_many(ledger, 2)
    async with Ledger(db_path, settings=settings(8)) as ledger:  # same limits: nothing new
        await ledger.open_position("SAMEUSDT", "buy", entry_price=10, qty=1, leverage=2)
        assert len(await recorded_rules(ledger)) == 1
    async with Ledger(db_path, settings=settings(5)) as ledger:  # back to the defaults
        await ledger.open_position("BACKUSDT", "sell", entry_price=10, qty=1, leverage=2)
        rules = await recorded_rules(ledger)
    assert [r.max_concurrent_positions for r in rules] == [8, 5]
    run = ledger_cli("--db", db_path, "verify")
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.anyio
async def test_a_log_under_the_defaults_records_none_and_is_judged_by_them(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await open_many(ledger, 5)
        assert await recorded_rules(ledger) == []
    run = ledger_cli(
        "--db", db_path, "verify", env={"POSITION_LEDGER_MAX_CONCURRENT_POSITIONS": "2"}
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_limits_are_checked_per_limits_object_not_once_for_all() -> None:
    """rules_record checks a Limits object once and trusts that object (it is frozen)
    afterwards: a bad one given after a good one is still refused, every time."""
    from ledger.commands import OpenPosition
    from ledger.rules import decide

    def opening(n: int) -> OpenPosition:
        return OpenPosition(
            position_id=f"p{n}", symbol=f"S{n}USDT", side=Side.BUY, qty=Decimal(1),
            entry_price=Decimal(1), leverage=2,
        )  # fmt: skip

    good = Limits(max_concurrent_positions=7)
    backwards = Limits(min_leverage=5, max_leverage=2)
    mistyped = Limits(max_concurrent_positions="7")  # type: ignore[arg-type]
    book = Book()
    for _ in range(2):
        assert isinstance(decide(book, opening(1), good)[0], RulesConfigured)
        for bad in (backwards, mistyped, Limits(max_concurrent_positions=-1)):
            with pytest.raises(InvalidValue):
                decide(book, opening(2), bad)
    # the same figures in a new object: checked, and recorded the same
    again = Limits(max_concurrent_positions=7)
    assert decide(book, opening(3), again)[0] == decide(book, opening(3), good)[0]


def _opened(n: int, leverage: int = 2) -> PositionOpened:
    return PositionOpened(
        position_id=f"p{n}",
        symbol=f"S{n}USDT",
        side=Side.BUY,
        qty=Decimal(1),
        entry_price=Decimal(1),
        leverage=leverage,
    )


def _judge(history: list[AnyEvent], last: AnyEvent, limits: Limits = DEFAULT_LIMITS) -> str | None:
    """What the audit says of `last` after the events of `history`."""
    stamper = Stamper()
    book = Book()
    book.apply_all(stamper.stamp_all(history))
    return violations(book, stamper.stamp(last), limits)


def test_the_audit_rule_uses_the_recorded_limits_not_the_auditors() -> None:
    two = RulesConfigured(max_concurrent_positions=2, min_leverage=1, max_leverage=9)
    generous = Limits(max_concurrent_positions=100, max_leverage=1000)
    assert _judge([two, _opened(1), _opened(2)], _opened(3), generous) is not None
    assert "leverage" in (_judge([two], _opened(1, leverage=10), generous) or "")
    assert _judge([two, _opened(1)], _opened(2, leverage=9), generous) is None
    # without a record the log is judged by the limits given (by default the format's own)
    assert _judge([], _opened(1, leverage=100)) is None
    assert _judge([], _opened(1, leverage=101)) is not None
    backwards = RulesConfigured(max_concurrent_positions=1, min_leverage=5, max_leverage=2)
    assert _judge([], backwards) is not None


# -- times ------------------------------------------------------------------------------------

EXTREMES = [
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59+14:00",
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00",
    "9999-12-31",
    "2025-01-07T17:00:00+05:30",
]


@pytest.mark.parametrize("text", EXTREMES)
def test_parse_time_handles_the_ends_of_the_calendar(text: str) -> None:
    moment = parse_time(text)
    assert moment.tzinfo is not None and moment.utcoffset() == UTC.utcoffset(None)


def test_times_past_the_ends_clamp_to_them() -> None:
    assert parse_time("9999-12-31T23:59:59-14:00") == datetime.max.replace(tzinfo=UTC)
    assert parse_time("0001-01-01T00:00:00+14:00") == datetime.min.replace(tzinfo=UTC)
    assert parse_time("2025-01-07T17:00:00") == datetime(2025, 1, 7, 17, tzinfo=UTC)
    assert utc(datetime(2025, 1, 7, 17)) == datetime(2025, 1, 7, 17, tzinfo=UTC)


def test_naive_datetimes_and_zoneless_text_are_utc_alike() -> None:
    seventeen = datetime(2025, 1, 7, 17, tzinfo=UTC)
    assert aware_time("time", datetime(2025, 1, 7, 17)) == seventeen
    plus_one = timezone(timedelta(hours=1))
    assert aware_time("time", datetime(2025, 1, 7, 18, tzinfo=plus_one)) == seventeen
    for bad in (None, 5, 1.5, b"2025-01-07", "not a time", "2025-13-01"):
        with pytest.raises(InvalidValue):
            aware_time("time", bad)
    assert aware_time("time", "2025-01-07T17:00:00") == datetime(2025, 1, 7, 17, tzinfo=UTC)


@pytest.mark.anyio
async def test_as_of_takes_naive_as_utc_and_any_calendar_end(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await ledger.open_position("BTCUSDT", "buy", entry_price=10, qty=1, leverage=2)
        assert (await ledger.as_of(time=datetime(2000, 1, 7))).last_seq == 0
        with pytest.raises(InvalidValue):
            await ledger.as_of(time="yesterday")  # type: ignore[arg-type]
        everything = await ledger.as_of(time=parse_time("9999-12-31T23:59:59-14:00"))
        nothing = await ledger.as_of(time=parse_time("0001-01-01T00:00:00+14:00"))
    assert everything.last_seq == 1 and nothing.last_seq == 0


@pytest.mark.anyio
async def test_every_time_the_cli_accepts_runs_without_a_traceback(db_path: Path) -> None:
    async with Ledger(db_path) as ledger:
        await ledger.open_position("BTCUSDT", "buy", entry_price=10, qty=1, leverage=2)
    runs: list[tuple[str | Path, ...]] = [
        ("plot", "--as-of", EXTREMES[0], db_path.parent / "equity.png"),
        ("export", "--what", "trades", "--from", EXTREMES[3], "--to", EXTREMES[0]),
    ]
    for text in EXTREMES[:5]:
        runs += [
            ("stats", "--as-of", text),
            ("replay", "--as-of", text),
            ("export", "--what", "events", "--to", text),
        ]
    for args in runs:
        run = ledger_cli("--db", db_path, *args)
        assert "Traceback" not in run.stderr, (args, run.stderr)
        assert run.returncode == 0, (args, run.stdout, run.stderr)


# -- the importer -----------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [50, 5_000, 200_000])
def test_deeply_nested_json_is_refused_or_read_never_a_crash(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    documents = [
        nested,
        b'{"open_positions": {"p": {"open_reason": ' + nested + b"}}}",
        b'{"open_positions": {}, "session_stats": ' + nested + b"}",
    ]
    for data in documents:
        try:
            plan = plan_import(data, "positions.json")
        except ImportRejected:
            continue
        assert plan.report.file_name == "positions.json"
