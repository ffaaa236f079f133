"""Shared by the interrupt attacks (tests/test_adv_interrupt_locks.py and its workers): an
interrupt injected before a chosen opcode of the write path's lock code, and a bounded wait."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any

import ledger.blocking
import ledger.service
import ledger.store.writer

BOUND = 30.0
# the write path's lock code: the writer role and group commit, the manager, the Ledger's
# blocking and async command paths
LOCK_CODE = {ledger.store.writer.__file__, ledger.blocking.__file__, ledger.service.__file__}


class InterruptAt:
    """A trace (sys.settrace, this thread) that raises KeyboardInterrupt before the `at`-th
    opcode run in LOCK_CODE's frames (only those of the code objects `only`, if given),
    once; with `task`, only while that asyncio task is the one running (not in the loop's
    own callbacks, where asyncio lets it end the loop)."""

    def __init__(
        self, at: int, task: asyncio.Task[Any] | None = None, only: set[CodeType] | None = None
    ) -> None:
        self.at, self.task, self.only = at, task, only
        self.seen = 0
        self.where: tuple[str, int, int] | None = None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code.co_filename not in LOCK_CODE or (
            self.only is not None and frame.f_code not in self.only
        ):
            return None
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event != "opcode" or self.where is not None:
            return self._opcode
        if self.task is not None and asyncio.current_task() is not self.task:
            return self._opcode
        self.seen += 1
        if self.seen == self.at:
            self.where = (frame.f_code.co_name, frame.f_lineno, frame.f_lasti)
            raise KeyboardInterrupt("injected")
        return self._opcode


def bounded(work: Callable[[], object], what: str, limit: float = BOUND) -> object:
    """work() on a fresh thread, joined with a bound that fails the test when it passes."""
    box: list[object] = []

    def body() -> None:
        try:
            box.append(work())
        except BaseException as exc:  # handed to the test
            box.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"{what}: hung"
    if isinstance(box[0], BaseException):
        raise AssertionError(f"{what}: {box[0]!r}") from box[0]
    return box[0]
