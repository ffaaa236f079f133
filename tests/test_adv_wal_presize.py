"""Adversary: the WAL sized before a FULL connection's first commit (8d28b13, ledger.store.wal),
attacked as a hostile user and an unlucky operator would:

- an interrupt (KeyboardInterrupt) injected before every opcode of the sizing, in a lone
  append (the inline lane) and in a group (`run_transaction`): the caller hears it, nothing of
  the append is stored, the write lock and the role are free, the same store appends again,
  and no descriptor of the WAL is left open (a signal's handler runs right after a call
  returns: after `os.open` returned, before its result was bound, the descriptor was lost);
- the POSIX locks SQLite holds (on the database file and -shm) are the same after the sizing
  opened and closed its own descriptor on the -wal, and another process still cannot write;
- a symlinked database path whose target's name holds '?', '#', '%', a newline and non-ASCII:
  the WAL SQLite uses is sized, nothing is created beside the link;
- a reader's snapshot, another store's frames already in the WAL, TRUNCATE checkpoints and
  other connections closing around the sizing: nothing stored changes, the snapshot holds;
- kill -9 of the sizing process while the zeros are written, once they are, and right after
  its commit: recovery by another process holds every acknowledged event, on a chain that
  verifies, and nothing else;
- page sizes other than 4096: each is sized to its own cycle and never grows within it;
- the benchmark's raw baseline: its WAL is sized as the store sizes its own (so the baseline
  pays no growing-file fdatasyncs the store does not pay: the comparison stays honest).
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import pytest

import ledger.store.sqlite as sqlite_store
from benchmarks._data import EventMix, create_empty_log, raw_connection, take
from ledger.envelope import NewEvent
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.wal import _is_wal, presize_wal, wal_target_bytes

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[1]
WATCHDOG = 60.0


def _wal(db: Path) -> Path:
    return db.with_name(db.name + "-wal")


def _open_descriptors(target: Path) -> int:
    """How many of this process's descriptors are open on target."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(target):
                count += 1
        except OSError:  # the listing's own descriptor, gone already
            pass
    return count


def _lock_is_free(db: Path) -> bool:
    """Whether another connection takes the write lock at once."""
    other = sqlite3.connect(db, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


async def _stored(db: Path) -> list[tuple[int, str]]:
    """(seq, event_id) of every stored event, read by a fresh store whose chain verifies."""
    store = SQLiteEventStore(db, read_only=True)
    await store.open()
    try:
        stored = [(r.seq, r.event_id) async for page in store.iterate() for r in page]
        report = await store.verify_chain()  # raises on a broken chain
        assert report.events == len(stored)
        return stored
    finally:
        await store.close()


# -- an interrupt before every opcode of the sizing -------------------------------------------

_SIZING = {presize_wal.__code__, _is_wal.__code__}


class _InterruptAt:
    """A trace that raises KeyboardInterrupt before the `at`-th opcode run in the sizing's
    frames (ledger.store.wal), once; `seen` counts the opcodes it ran past."""

    def __init__(self, at: int) -> None:
        self.at, self.seen, self.fired = at, 0, False

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code not in _SIZING:
            return None
        frame.f_trace_opcodes = True
        return self._opcode

    def _opcode(self, frame: FrameType, event: str, arg: Any) -> Any:
        if event == "opcode" and not self.fired:
            self.seen += 1
            if self.seen == self.at:
                self.fired = True
                raise KeyboardInterrupt("injected")
        return self._opcode


async def _interrupt_sizing_at(db: Path, at: int, batch: list[NewEvent]) -> bool:
    """A FULL store's first append (batch: one event, the inline lane; two, a group through
    run_transaction) with an interrupt before the at-th opcode of the sizing; asserts what
    must hold after it. False once the sizing ran whole (at is past its last opcode)."""
    store = SQLiteEventStore(db, synchronous="FULL")
    await store.open()
    wal = _wal(db)
    ours = _open_descriptors(wal)  # SQLite's own
    trace = _InterruptAt(at)
    try:
        with warnings.catch_warnings():
            # a file object dropped by the interrupt, closed by its finalizer, may say so
            warnings.simplefilter("ignore", ResourceWarning)
            sys.settrace(trace)
            try:
                await store.append(batch)
            except KeyboardInterrupt as exc:
                assert trace.fired and str(exc) == "injected"
            else:
                assert not trace.fired
            finally:
                sys.settrace(None)
            gc.collect()  # what the interrupt's traceback held
        assert _open_descriptors(wal) == ours, f"a descriptor of the WAL left open ({at})"
        assert store._writer is not None and store._writer._holder is None
        assert _lock_is_free(db), f"the write lock still held ({at})"
        if trace.fired:
            assert [r.seq for r in await store.append(batch)]  # the same events, once
    finally:
        await store.close()
    ids = [event_id for _, event_id in await _stored(db)]
    assert ids[-len(batch) :] == [new.event_id for new in batch]
    assert len(ids) == len(set(ids)) == 3 + len(batch)
    return trace.fired


@pytest.mark.parametrize("lane", ["lone", "group"])
async def test_an_interrupt_before_any_opcode_of_the_sizing_leaves_no_descriptor_open(
    tmp_path: Path, lane: str
) -> None:
    first = take(EventMix(seed=11), 3)
    batch = take(EventMix(seed=12), 1 if lane == "lone" else 2)
    fired = 0
    for at in range(1, 400):
        db = tmp_path / f"{at}.db"
        store = SQLiteEventStore(db, synchronous="NORMAL")  # a log, its WAL gone on close
        await store.open()
        await store.append(first)
        await store.close()
        assert not _wal(db).exists()
        if not await _interrupt_sizing_at(db, at, batch):
            break
        fired += 1
        for side in (db, _wal(db), db.with_name(db.name + "-shm")):
            side.unlink(missing_ok=True)
    else:
        pytest.fail("the sizing never ran whole")
    assert fired > 50  # every opcode of the sizing was a landing place
