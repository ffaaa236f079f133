"""Every command x every field x every wrong type: a typed InvalidValue, nothing appended, and
a log that another process still opens, decodes and verifies."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest

from ledger.blocking import ThreadSafePositionManager
from ledger.codec import ensure_decodable
from ledger.commands import (
    ClosePosition,
    IncreasePosition,
    MarkPosition,
    ObserveBalance,
    OpenPosition,
    RecordFunding,
    RecordPartialExit,
)
from ledger.errors import InvalidValue
from ledger.events import PositionClosed, PositionOpened
from ledger.service import Ledger
from ledger.values import Side

ROOT = Path(__file__).resolve().parents[1]
NAIVE = datetime(2025, 1, 7, 17, 0)
NOT_STR: list[object] = [None, 5, 1.5, True, b"BTCUSDT", ["x"], {"a": 1}, object(), NAIVE]
NOT_OPTIONAL_STR: list[object] = [v for v in NOT_STR if v is not None]


class _LyingDecimal(Decimal):
    """A Decimal subclass that says every value is finite and small (a hostile caller)."""

    def is_finite(self) -> bool:
        return True

    def copy_abs(self) -> Decimal:
        return Decimal(1)


class _Unshowable:
    """A caller's object whose repr raises (an error naming it must still be raised)."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _LyingFloat(float):
    """A float subclass whose repr is not its value (a hostile caller)."""

    def __repr__(self) -> str:
        return "1.5"


NOT_NUMBER: list[object] = [
    None, True, False, "abc", "", [1], {"x": 1}, object(), NAIVE, b"1", float("nan"), 1j,
    float("inf"), float("-inf"), Decimal("sNaN"), Decimal("-Infinity"), 10**400, "1e-13",
    _LyingDecimal("NaN"), _LyingDecimal("sNaN"), _LyingDecimal("1e400"), _LyingFloat(1e300),
    10**5000, _Unshowable(),
]  # fmt: skip
NOT_OPTIONAL_NUMBER: list[object] = [v for v in NOT_NUMBER if v is not None]
NOT_INT: list[object] = [None, True, 5.5, "5", Decimal("5.5"), [5], object()]

Call = Callable[[Ledger, str, object], Awaitable[object]]

# (command name, field, wrong values, how to call it with that field wrong)
ASYNC_CASES: list[tuple[str, list[object], Call]] = []


def _case(name: str, values: list[object], call: Call) -> None:
    ASYNC_CASES.append((name, values, call))


def _open(**wrong: object) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {
            "symbol": "ETHUSDT",
            "side": "buy",
            "entry_price": 10,
            "leverage": 2,
            "qty": 1,
        }
        field = next(iter(wrong))
        args[field] = bad
        return ledger.open_position(**args)  # type: ignore[arg-type]

    return call


for field, values in {
    "symbol": NOT_STR,
    "side": [*NOT_STR, "up"],
    "entry_price": NOT_NUMBER,
    "leverage": NOT_INT,
    "qty": NOT_OPTIONAL_NUMBER,
    "fee": NOT_NUMBER,
    "confidence": NOT_OPTIONAL_NUMBER,
    "open_reason": NOT_STR,
    "atr": NOT_OPTIONAL_NUMBER,
    "adx": NOT_OPTIONAL_NUMBER,
    "volatility": NOT_OPTIONAL_NUMBER,
    "real_initial_margin": NOT_OPTIONAL_NUMBER,
    "position_id": NOT_OPTIONAL_STR,
}.items():
    _case(f"open_position.{field}", values, _open(**{field: None}))


def _exit(field: str) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {"position_id": pid, "price": 11, "qty": "0.1"}
        args[field] = bad
        return ledger.register_partial_exit(**args)  # type: ignore[arg-type]

    return call


for field, values in {
    "position_id": NOT_STR,
    "price": NOT_NUMBER,
    "qty": NOT_OPTIONAL_NUMBER,
    "realized_pnl": NOT_OPTIONAL_NUMBER,
    "fee": NOT_NUMBER,
    "reason": NOT_STR,
    "rule": NOT_OPTIONAL_STR,
}.items():
    _case(f"register_partial_exit.{field}", values, _exit(field))


def _close(field: str) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {"position_id": pid, "price": 11}
        args[field] = bad
        return ledger.close_position(**args)  # type: ignore[arg-type]

    return call


for field, values in {
    "position_id": NOT_STR,
    "reason": NOT_STR,
    "price": NOT_OPTIONAL_NUMBER,
    "realized_pnl": NOT_OPTIONAL_NUMBER,
    "fee": NOT_NUMBER,
}.items():
    _case(f"close_position.{field}", values, _close(field))


def _mark(field: str) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {"position_id": pid, "price": 11}
        args[field] = bad
        return ledger.mark(**args)  # type: ignore[arg-type]

    return call


for field, values in {
    "position_id": NOT_STR,
    "price": NOT_NUMBER,
    "unrealized_pnl": NOT_OPTIONAL_NUMBER,
    "initial_margin": NOT_OPTIONAL_NUMBER,
}.items():
    _case(f"mark.{field}", values, _mark(field))


def _funding(field: str) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {"position_id": pid, "amount": "0.1", "execution_id": "e"}
        args[field] = bad
        return ledger.record_funding(**args)  # type: ignore[arg-type]

    return call


for field, values in {
    "position_id": NOT_STR,
    "amount": NOT_NUMBER,
    "execution_id": [*NOT_STR, "", "  "],
}.items():
    _case(f"record_funding.{field}", values, _funding(field))


def _balance(field: str) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        args: dict[str, object] = {"total": 10, "available": 5}
        args[field] = bad
        return ledger.observe_balance(**args)  # type: ignore[arg-type]

    return call


for field in ("total", "available"):
    _case(f"observe_balance.{field}", NOT_NUMBER, _balance(field))


# Commands built by hand and handed to execute(): the same boundary, field by field.
def _command(build: Callable[[str, object], object]) -> Call:
    def call(ledger: Ledger, pid: str, bad: object) -> Awaitable[object]:
        return ledger.execute(build(pid, bad))  # type: ignore[arg-type]

    return call


COMMANDS: dict[str, tuple[type[object], dict[str, object]]] = {
    "OpenPosition": (
        OpenPosition,
        {
            "position_id": "new",
            "symbol": "ETHUSDT",
            "side": Side.BUY,
            "qty": Decimal(1),
            "entry_price": Decimal(10),
            "leverage": 2,
        },
    ),
    "IncreasePosition": (IncreasePosition, {"qty": Decimal(1), "price": Decimal(10)}),
    "MarkPosition": (MarkPosition, {"mark_price": Decimal(10)}),
    "RecordPartialExit": (RecordPartialExit, {"qty": Decimal("0.1"), "price": Decimal(10)}),
    "ClosePosition": (ClosePosition, {"price": Decimal(10)}),
    "RecordFunding": (RecordFunding, {"amount": Decimal(1), "execution_id": "x"}),
    "ObserveBalance": (ObserveBalance, {"total": Decimal(1), "available": Decimal(1)}),
}


def _wrong_for(annotation: object) -> list[object]:
    text = str(annotation)
    optional = "None" in text
    if "Decimal" in text:
        return [v for v in NOT_NUMBER if not (optional and v is None)] + [1, 1.5, "1"]
    if "bool" in text:
        return [None, 1, "yes"]
    if "int" in text:
        return NOT_INT
    return [v for v in NOT_STR if not (optional and v is None)]


def _hand_built() -> None:
    import msgspec

    for name, (cls, base) in COMMANDS.items():
        for info in msgspec.structs.fields(cls):  # type: ignore[arg-type]
            if info.name == "position_id" and name != "OpenPosition":
                values = NOT_STR
            else:
                values = _wrong_for(info.type)

            def build(pid: str, bad: object, cls: type = cls, base: dict[str, object] = base,
                      field: str = info.name, name: str = name) -> object:  # fmt: skip
                args = dict(base)
                if name != "OpenPosition" and name != "ObserveBalance":
                    args.setdefault("position_id", pid)
                args[field] = bad
                return cls(**args)

            _case(f"execute({name}).{info.name}", values, _command(build))


_hand_built()


async def _exercise(db_path: Path) -> int:
    refused = 0
    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price=10, qty=1, leverage=2)
        head = ledger.last_seq
        for name, values, call in ASYNC_CASES:
            for bad in values:
                with pytest.raises(InvalidValue):
                    await call(ledger, pos.position_id, bad)
                    pytest.fail(f"{name}={bad!r} was accepted")
                assert ledger.last_seq == head, f"{name}={bad!r} appended"
                refused += 1
        # the ledger still works after all that
        await ledger.close_position(pos.position_id, reason="done", price=12)
    return refused


def _open_in_another_process(db_path: Path) -> None:
    script = (
        "import sys, anyio\n"
        "from ledger.store.sqlite import SQLiteEventStore\n"
        "async def main():\n"
        "    store = SQLiteEventStore(sys.argv[1])\n"
        "    await store.open()\n"
        "    n = 0\n"
        "    async for page in store.iterate():\n"
        "        n += len(page)\n"
        "    await store.close()\n"
        "    print(n)\n"
        "anyio.run(main)\n"
    )
    read = subprocess.run(
        [sys.executable, "-c", script, str(db_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert read.returncode == 0, read.stderr
    assert int(read.stdout) >= 2
    verify = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "--db", str(db_path), "verify"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.anyio
async def test_every_command_field_refuses_every_wrong_type_and_the_log_still_opens(
    db_path: Path,
) -> None:
    refused = await _exercise(db_path)
    assert refused > 300
    _open_in_another_process(db_path)


def test_the_blocking_api_refuses_wrong_types_and_the_log_still_opens(tmp_path: Path) -> None:
    snapshot = tmp_path / "positions.json"
    with ThreadSafePositionManager(snapshot) as manager:
        base: dict[str, object] = {
            "symbol": "ETHUSDT",
            "side": "buy",
            "entry_price": 10.0,
            "position_size": 100.0,
            "leverage": 2,
        }
        pid = manager.thread_safe_create_position(**{**base, "symbol": "BTCUSDT"})
        head = manager.ledger.last_seq
        create_fields = {
            "symbol": NOT_STR,
            "side": NOT_STR,
            "entry_price": NOT_NUMBER,
            "position_size": NOT_NUMBER,
            "leverage": [None, True, 5.5, "5", [5], object()],
            "confidence": NOT_OPTIONAL_NUMBER,
            "open_reason": NOT_OPTIONAL_STR,
            "atr": NOT_OPTIONAL_NUMBER,
            "adx": NOT_OPTIONAL_NUMBER,
            "volatility": NOT_OPTIONAL_NUMBER,
            "real_initial_margin": NOT_OPTIONAL_NUMBER,
            "current_price": NOT_OPTIONAL_NUMBER,
            "position_id": NOT_OPTIONAL_STR,
            "fee": NOT_NUMBER,
            "open_time": [5, 1.5, True, b"2025", "not a time", "2025-13-01", [1], object()],
        }
        calls: list[tuple[str, object, Callable[[], object]]] = []
        for field, values in create_fields.items():
            for bad in values:

                def create(f: str = field, b: object = bad) -> object:
                    return manager.thread_safe_create_position(**{**base, f: b})

                calls.append((f"create.{field}", bad, create))
        for bad in NOT_STR:
            calls.append(("close.reason", bad, lambda b=bad: manager.close_position(pid, b)))  # type: ignore[misc]
            calls.append(("close.id", bad, lambda b=bad: manager.close_position(b, "x")))  # type: ignore[misc]
            calls.append(
                (
                    "exit.reason",
                    bad,
                    lambda b=bad: manager.register_partial_exit(pid, 10.0, 11.0, None, b),  # type: ignore[misc]
                )
            )
            calls.append(
                ("mark.id", bad, lambda b=bad: manager.update_position_price(b, 11.0))  # type: ignore[misc]
            )
        for bad in NOT_OPTIONAL_NUMBER:
            calls.append(
                ("close.price", bad, lambda b=bad: manager.close_position(pid, "x", b))  # type: ignore[misc]
            )
            calls.append(
                (
                    "exit.size",
                    bad,
                    lambda b=bad: manager.register_partial_exit(pid, b, 11.0, None, "x"),  # type: ignore[misc]
                )
            )
            calls.append(
                (
                    "exit.price",
                    bad,
                    lambda b=bad: manager.register_partial_exit(pid, 10.0, b, None, "x"),  # type: ignore[misc]
                )
            )
            calls.append(
                (
                    "exit.pnl",
                    bad,
                    lambda b=bad: manager.register_partial_exit(pid, 10.0, 11.0, b, "x"),  # type: ignore[misc]
                )
            )
            calls.append(
                ("mark.price", bad, lambda b=bad: manager.update_position_price(pid, b))  # type: ignore[misc]
            )
        for bad in NOT_STR:
            calls.append(
                ("resize.id", bad, lambda b=bad: manager.update_position_size(b, 50.0))  # type: ignore[misc]
            )
            calls.append(
                (
                    "resize.reason",
                    bad,
                    lambda b=bad: manager.update_position_size(pid, 50.0, reason=b),  # type: ignore[misc]
                )
            )
        for bad in NOT_NUMBER:
            calls.append(
                ("resize.size", bad, lambda b=bad: manager.update_position_size(pid, b))  # type: ignore[misc]
            )
        for bad in NOT_OPTIONAL_NUMBER:
            calls.append(
                (
                    "resize.price",
                    bad,
                    lambda b=bad: manager.update_position_size(pid, 50.0, b),  # type: ignore[misc]
                )
            )
        for name, bad, call in calls:
            with pytest.raises(InvalidValue):
                call()
                pytest.fail(f"{name}={bad!r} was accepted")
            assert manager.ledger.last_seq == head, f"{name}={bad!r} appended"
        assert manager.close_position(pid, "done", 12.0)
    _open_in_another_process(tmp_path / "ledger.db")


def test_ensure_decodable_refuses_what_would_not_read_back() -> None:
    good = PositionOpened(
        position_id="p", symbol="X", side=Side.BUY, qty=Decimal(1), entry_price=Decimal(1),
        leverage=2,
    )  # fmt: skip
    assert ensure_decodable(good)
    import msgspec

    bad_values: list[dict[str, object]] = [
        {"symbol": None},
        {"symbol": 5},
        {"qty": True},
        {"qty": Decimal("NaN")},
        {"qty": Decimal("Infinity")},
        {"open_reason": object()},
        {"leverage": "2"},
        {"side": "sideways"},
        {"qty": 1.5},
    ]
    for change in bad_values:
        with pytest.raises(InvalidValue):
            ensure_decodable(msgspec.structs.replace(good, **change))
    close = PositionClosed(position_id="p", qty=Decimal(1), price=Decimal(1), realized_pnl=0)  # type: ignore[arg-type]
    ensure_decodable(close)  # an int where a Decimal belongs reads back as the same number


def test_every_mark_command_builds_passes_check_command() -> None:
    """`Ledger.mark` sends mark_command's command to the writer without check_command (see
    there): so every command mark_command builds, from any input it does not refuse, must pass
    check_command, and whatever check_command refuses mark_command refuses too."""
    from ledger.rules import check_command
    from ledger.service import mark_command

    class Number(Decimal):
        pass

    class Text(str):
        pass

    numbers: list[object] = [
        *NOT_NUMBER, 1, 11, -1, 0, "1.5", " 2 ", 1.5, Decimal("1e15"), Decimal("1e16"),
        Decimal("1e-12"), Decimal("1e-13"), Decimal("-1e16"), Decimal("sNaN"), "1e400",
        "-Infinity", 10**20, Number(3), Number("1e16"),
    ]  # fmt: skip
    ids: list[object] = [*NOT_STR, "p", " ", "", "\x00", "pos_\u00e9", Text("p"), Text("")]
    built = 0
    for position_id in ids:
        for price in numbers:
            for pnl in [None, *numbers[::3]]:
                for margin in [None, *numbers[1::4]]:
                    try:
                        command = mark_command(
                            position_id,  # type: ignore[arg-type]
                            price,  # type: ignore[arg-type]
                            unrealized_pnl=pnl,  # type: ignore[arg-type]
                            initial_margin=margin,  # type: ignore[arg-type]
                        )
                    except InvalidValue:
                        continue
                    check_command(command)  # raises InvalidValue where mark_command let it by
                    built += 1
    assert built > 100


def _refusal(check: Callable[[], object]) -> tuple[str, str] | None:
    try:
        check()
    except InvalidValue as refused:
        return type(refused).__name__, str(refused)
    return None


def test_built_commands_are_checked_as_execute_checks(tmp_path: Path) -> None:
    """open_position, the manager's create, register_partial_exit and close_position hand
    their command to the writer through `Ledger._built_decider`, without a second
    check_command: for every command their builders can make, _built_decider refuses exactly
    what check_command refuses, with the same error (an OpenPosition's fields the builders
    pass as given included: position_id, symbol, leverage, open_reason, account, and a qty
    derived from a notional, unbounded)."""
    import itertools

    from ledger.rules import check_command
    from ledger.service import close_command, partial_exit_command

    class Number(Decimal):
        pass

    class Text(str):
        pass

    class Int(int):
        pass

    ledger = Ledger(tmp_path / "never-opened.db")  # _built_decider needs no open store
    refused = passed = 0

    def same(command: object) -> None:
        nonlocal refused, passed
        expected = _refusal(lambda: check_command(command))  # type: ignore[arg-type]
        assert _refusal(lambda: ledger._built_decider(command)) == expected, command  # type: ignore[arg-type]
        refused, passed = refused + (expected is not None), passed + (expected is None)

    texts: list[object] = ["p", "", Text("p"), None, 5, b"p"]
    quantities: list[object] = [
        Decimal(5), Decimal("1e15"), Decimal("1e16"), Decimal("-1e27"), Decimal("1e-12"),
        Decimal("1e-13"), Decimal("NaN"), Decimal("Infinity"), Number(3), Number("1e16"), 5,
        None, 5.0,
    ]  # fmt: skip
    leverages: list[object] = [5, 0, Int(5), True, 5.0, "5", None]
    for position_id, symbol, qty, leverage, reason, account in itertools.product(
        texts[:4], texts[:4], quantities, leverages, texts[::2], ["default", None]
    ):
        same(
            OpenPosition(
                position_id=position_id,  # type: ignore[arg-type]
                symbol=symbol,  # type: ignore[arg-type]
                side=Side.BUY,
                qty=qty,  # type: ignore[arg-type]
                entry_price=Decimal(10),
                leverage=leverage,  # type: ignore[arg-type]
                open_reason=reason,  # type: ignore[arg-type]
                account=account,  # type: ignore[arg-type]
            )
        )
    numbers: list[object] = [
        *NOT_NUMBER, 1, -1, 0, "1.5", 1.5, Decimal("1e16"), Decimal("1e-13"), Decimal("sNaN"),
        "1e400", 10**20, Number(3), Number("1e16"),
    ]  # fmt: skip
    for position_id, number, text in itertools.product(
        [*NOT_STR[:3], "p", " ", Text("p")], numbers, [*NOT_STR[:3], "", Text("r")]
    ):
        builds: list[tuple[Callable[..., object], dict[str, object]]] = [
            (partial_exit_command, {"price": number, "qty": 1, "reason": text}),
            (partial_exit_command, {"price": 2, "notional": number, "rule": text}),
            (partial_exit_command, {"price": 2, "qty": 1, "realized_pnl": number}),
            (close_command, {"price": number, "reason": text}),
            (close_command, {"realized_pnl": number, "fee": number}),
        ]
        for build, args in builds:
            try:
                command = build(position_id, **args)
            except InvalidValue:
                continue
            same(command)
    assert refused > 1000 and passed > 300


@pytest.mark.anyio
async def test_an_open_whose_notional_gives_a_qty_out_of_bounds_is_refused(tmp_path: Path) -> None:
    """qty derived from a notional is not bounded by its builder: the command path bounds it
    (as check_command does), so nothing past 1e15 is stored."""
    async with Ledger(tmp_path / "l.db") as ledger:
        head = ledger.last_seq
        with pytest.raises(InvalidValue, match="qty"):
            await ledger.open_position(
                "BTCUSDT", "buy", entry_price="1e-12", notional="1e15", leverage=2
            )
        assert ledger.last_seq == head


def test_the_manager_refuses_a_size_whose_qty_is_out_of_bounds(tmp_path: Path) -> None:
    with ThreadSafePositionManager(tmp_path / "positions.json") as manager:
        with pytest.raises(InvalidValue, match="qty"):
            manager.thread_safe_create_position(
                symbol="BTCUSDT", side="buy", entry_price=1e-12, position_size=1e15, leverage=2
            )
        assert manager.ledger.last_seq == 0


def test_ensure_decodable_names_every_number_out_of_what_a_fold_takes() -> None:
    """Each number field of an event, whatever the field before it holds (a Decimal, an
    int): a non-finite one, one outside 1e-100..1e30 (an int too: 10**400 reads back as
    itself, and a fold of it may overflow), or a float is refused naming that field; the
    same event with the field in range passes."""
    import msgspec

    from ledger.events import PartialExitRecorded

    opened = PositionOpened(
        position_id="p", symbol="X", side=Side.BUY, qty=Decimal(1), entry_price=Decimal(1),
        leverage=2, confidence=Decimal("0.5"),
    )  # fmt: skip
    exited = PartialExitRecorded(
        position_id="p", qty=Decimal(1), price=Decimal(2), realized_pnl=Decimal(0)
    )
    bad: list[object] = [
        Decimal("1e31"), Decimal("-1e31"), Decimal("1e-101"), Decimal("NaN"), Decimal("sNaN"),
        Decimal("-Infinity"), 1.5, 0.0, 10**31, -(10**31), 10**400, 10**5000,
    ]  # fmt: skip
    fine: list[object] = [
        Decimal("1e30"), Decimal("-1e-100"), Decimal(0), Decimal("-0"), 7, None, 10**31 - 1,
        -(10**31) + 1, 0,
    ]  # fmt: skip
    checked = 0
    for event, fields in (
        (opened, ["qty", "entry_price", "fee", "confidence", "volatility"]),
        (exited, ["qty", "price", "realized_pnl", "fee"]),
    ):
        for before in [Decimal("0.5"), 3]:  # what the field before holds
            for field in fields:
                earlier = fields[: fields.index(field)]
                base = msgspec.structs.replace(event, **dict.fromkeys(earlier[-1:], before))
                for value in bad:
                    with pytest.raises(InvalidValue) as refused:
                        ensure_decodable(msgspec.structs.replace(base, **{field: value}))
                    # a NaN never reads back as itself: refused as written, before its range
                    nan = isinstance(value, Decimal) and value.is_nan()
                    # so does an int too long for the encoder (over 4,300 digits)
                    unwritable = type(value) is int and value.bit_length() > 10_000
                    named = type(base).__name__ if nan or unwritable else field
                    assert refused.value.field == named, (field, value)
                    checked += 1
                for value in fine:
                    if value is None and field not in ("confidence", "volatility"):
                        continue  # a required number
                    ensure_decodable(msgspec.structs.replace(base, **{field: value}))
    assert checked > 100


@pytest.mark.anyio
async def test_a_deciders_int_outside_what_a_fold_takes_is_refused_and_stores_nothing(
    db_path: Path,
) -> None:
    """A decider of the caller's own (Ledger.transact) may plan an int where a Decimal
    belongs; one outside the range a fold takes is refused with InvalidValue like a Decimal
    would be, and nothing is stored; an int inside it is stored, and read back as a Decimal."""
    from ledger.events import PositionMarked
    from ledger.service import Plan

    async with Ledger(db_path) as ledger:
        pos = await ledger.open_position("BTCUSDT", "buy", entry_price=10, qty=1, leverage=2)
        head = ledger.last_seq

        def marking(price: object) -> Callable[[object], list[Plan]]:
            # an int where the struct declares a Decimal: what a decider of the caller's own
            # may build (msgspec does not check types on construction)
            event = PositionMarked(position_id=pos.position_id, mark_price=price)  # type: ignore[arg-type]
            return lambda book: [Plan(event)]

        for huge in (10**400, -(10**31)):
            with pytest.raises(InvalidValue):
                await ledger.transact(marking(huge))
            assert ledger.last_seq == head
        await ledger.transact(marking(12))
        assert ledger.last_seq == head + 1
    async with Ledger(db_path) as again:
        position = again.get_position(pos.position_id)
        assert position is not None and position.current_price == Decimal(12)


class _UnshowableStr(str):
    """A caller's str type whose repr raises."""

    __slots__ = ()

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def test_refusals_naming_a_value_too_big_to_show_are_still_typed(tmp_path: Path) -> None:
    """A leverage of 10**5000 (an int too long for repr), an id whose repr raises: the refusal
    is LeverageOutOfRange / UnknownPosition, never the ValueError or RuntimeError of showing
    the value, through the async Ledger and the manager alike; nothing is appended."""
    from ledger.errors import LeverageOutOfRange, UnknownPosition

    async def through_the_ledger() -> None:
        async with Ledger(tmp_path / "ledger.db") as ledger:
            with pytest.raises(LeverageOutOfRange):
                await ledger.open_position(
                    "BTCUSDT", "buy", entry_price=10, qty=1, leverage=10**5000
                )
            with pytest.raises(UnknownPosition):
                await ledger.close_position(_UnshowableStr("nope"), price=10)
            with pytest.raises(UnknownPosition):
                await ledger.mark(_UnshowableStr("nope"), 10)
            assert ledger.last_seq == 0

    import anyio

    anyio.run(through_the_ledger)
    with ThreadSafePositionManager(tmp_path / "m" / "positions.json") as manager:
        head = manager.ledger.last_seq
        with pytest.raises(LeverageOutOfRange):
            manager.thread_safe_create_position(
                symbol="BTCUSDT", side="buy", entry_price=10.0, position_size=100.0,
                leverage=10**5000,
            )  # fmt: skip
        # the seed's answer for an unknown position: False (the refusal was made and caught)
        assert manager.register_partial_exit(_UnshowableStr("nope"), 1.0, 10.0, 0.0, "r") is False
        assert manager.close_position(_UnshowableStr("nope"), "r", 10.0) is False
        assert manager.ledger.last_seq == head
