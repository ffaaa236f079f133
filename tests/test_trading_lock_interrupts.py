"""An interrupt landing at any instruction of a manager's trading lock leaves it usable.

`ThreadSafePositionManager.trading()` holds off the exchange sync while the bot trades; its
lock is taken in one thread and may be given back in another (the async block takes it from a
worker thread). CPython raises KeyboardInterrupt (or a bot's handler's SystemExit) in the main
thread between any two instructions, at the entry of `threading.Condition.__exit__` too: there
the condition's own lock stayed with the interrupted thread and the trading lock stayed held,
and every later `trading()` block and sync waited for ever.

Swept as tests/test_write_role_interrupts.py sweeps the write path (its `Inject`: a trace
function raising before each instruction in turn, a NOP excepted) over the lock's code and the
Condition methods it runs: taking it alone; giving it back while another thread waits for it;
and waiting for it, notified, with a third thread waiting behind. After each: the interrupted
call heard the very exception (or finished first), nobody is left waiting, the lock and the
condition's lock are free. Every wait is bounded and fails the test instead of hanging it.
"""

from __future__ import annotations

import dis
import threading
import time
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import pytest

from ledger.blocking import Trading, _TradingLock
from tests._interrupts import WATCHDOG, Inject, on_thread
from tests.test_write_role_interrupts import ERRORS, MAX_FAILURES

# Not swept (see _Inject): the first instruction of Trading.__exit__ (its RESUME, where CPython
# may raise before any `try` of the method starts: as for any __exit__ written in Python,
# nothing there can give the lock back; everything it calls is swept), and Trading.__enter__'s
# `return` after its try (LOAD_CONST, RETURN_VALUE: CPython 3.11 raises a signal's exception
# only at a function's RESUME, right after a C call and at a backward jump, never there).
LOCK_PATH: frozenset[CodeType] = frozenset(
    {
        _TradingLock.acquire.__code__,
        _TradingLock.release.__code__,
        Trading.__enter__.__code__,
        Trading.__exit__.__code__,
        threading.Condition.__enter__.__code__,
        threading.Condition.__exit__.__code__,
        threading.Condition.wait.__code__,
        threading.Condition.notify.__code__,
        threading.Condition.notify_all.__code__,
    }
)


def _unswept() -> frozenset[tuple[CodeType, int]]:
    exit_code, enter_code = Trading.__exit__.__code__, Trading.__enter__.__code__
    [entry] = [i.offset for i in dis.get_instructions(exit_code) if i.opname == "RESUME"]
    table = dis._parse_exception_table(enter_code)  # type: ignore[attr-defined]
    after_try = [
        instruction
        for guarded in table[:1]
        for instruction in dis.get_instructions(enter_code)
        if guarded.end <= instruction.offset < guarded.target
    ]
    assert [i.opname for i in after_try] in ([], ["LOAD_CONST", "RETURN_VALUE"])
    return frozenset({(exit_code, entry), *((enter_code, i.offset) for i in after_try)})


UNSWEPT = _unswept()


class _Inject(Inject):
    """Inject over LOCK_PATH, past the instructions not swept (see LOCK_PATH)."""

    def __init__(self, at: int | None, error: type[BaseException]) -> None:
        super().__init__(at, error, LOCK_PATH)

    def _local(self, frame: FrameType, event: str, arg: object) -> Any:
        if event == "opcode" and (frame.f_code, frame.f_lasti) in UNSWEPT:
            return self._local
        return super()._local(frame, event, arg)


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WATCHDOG
    while not condition():
        assert time.monotonic() < deadline, "hung"
        time.sleep(0.001)


def _assert_free(lock: _TradingLock) -> None:
    """Nobody holds the lock and the condition's lock is free: a block runs from a thread."""
    assert on_thread(lambda: _enter_and_leave(lock)) is None


def _enter_and_leave(lock: _TradingLock) -> None:
    with Trading(lock):
        pass


def _traced(at: int | None, error: type[BaseException], work: Callable[[], None]) -> object:
    """work() under Inject(at) on a fresh thread: the instructions counted, or what it raised."""

    def body() -> object:
        with _Inject(at, error) as inject:
            try:
                work()
            except error:
                return ("raised", inject.where)
        return ("ran", inject.count)

    return on_thread(body)


def _sweep(error: type[BaseException], one: Callable[[int | None], object]) -> None:
    outcome = one(None)
    assert isinstance(outcome, tuple) and outcome[0] == "ran", outcome
    count = outcome[1]
    assert count > 10
    failures: list[str] = []
    for at in range(count):
        try:
            one(at)
        except AssertionError as failure:
            failures.append(f"#{at}: {failure}")
            if len(failures) >= MAX_FAILURES:
                break
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_a_trading_block_interrupted_anywhere_as_it_starts_leaves_the_lock_free(
    error: type[BaseException],
) -> None:
    def one(at: int | None) -> object:
        lock = _TradingLock()
        outcome = _traced(at, error, lambda: _enter_and_leave(lock))
        assert isinstance(outcome, tuple), outcome
        _assert_free(lock)
        return outcome

    _sweep(error, one)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_a_trading_block_interrupted_anywhere_as_it_ends_gives_the_lock_to_the_next(
    error: type[BaseException],
) -> None:
    def one(at: int | None) -> object:
        lock = _TradingLock()
        holder = Trading(lock)
        on_thread(holder.__enter__)  # held, for that block's ticket
        waiter = threading.Thread(target=_enter_and_leave, args=(lock,), daemon=True)
        waiter.start()
        _until(lambda: lock.waiting == 1)
        outcome = _traced(at, error, lambda: holder.__exit__(None, None, None))
        waiter.join(WATCHDOG)
        assert not waiter.is_alive(), f"the waiting block never got the lock ({outcome})"
        _assert_free(lock)
        return outcome

    _sweep(error, one)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.__name__)
def test_a_waiting_block_interrupted_anywhere_passes_its_turn_to_the_next(
    error: type[BaseException],
) -> None:
    def one(at: int | None) -> object:
        lock = _TradingLock()
        holder = Trading(lock)
        on_thread(holder.__enter__)
        box: list[object] = []
        first = threading.Thread(
            target=lambda: box.append(_traced(at, error, lambda: _enter_and_leave(lock))),
            daemon=True,
        )
        first.start()  # the condition's first waiter: release's notify wakes it
        _until(lambda: lock.waiting == 1 or not first.is_alive())
        second = threading.Thread(target=_enter_and_leave, args=(lock,), daemon=True)
        second.start()
        _until(lambda: lock.waiting == (2 if first.is_alive() else 1))
        on_thread(lambda: holder.__exit__(None, None, None))
        first.join(WATCHDOG)
        second.join(WATCHDOG)
        assert not first.is_alive() and not second.is_alive(), f"hung ({box})"
        _assert_free(lock)
        return box[0]

    _sweep(error, one)
