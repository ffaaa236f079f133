"""A writer for test_adv_wal_presize's kill -9 attack: a NORMAL store appends five events
(frames left in the WAL, not checkpointed: it stays open), then a FULL store on the same file
makes its first append, whose transaction sizes the WAL. The worker stops (blocks on stdin,
to be killed) at `stage`: `written` (the zeros written, not yet fdatasynced), `synced` (the
sizing returned, the event not yet inserted) or `committed` (the append acknowledged). Each
acknowledgement is printed (seq, event_id) once `append` returned it."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from typing import Any

import anyio
import pytest

import ledger.store.sqlite
from benchmarks._data import EventMix, take
from ledger.store.sqlite import SQLiteEventStore
from ledger.store.wal import presize_wal


def _stop(stage: str) -> None:
    print(json.dumps({"stop": stage}), flush=True)
    sys.stdin.read()  # until killed
    raise SystemExit("not killed")


def _before(real: Callable[..., Any], stage: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        _stop(stage)
        return real(*args)

    return call


def _after(real: Callable[..., Any], stage: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        result = real(*args)
        _stop(stage)
        return result

    return call


async def main(db: str, stage: str) -> None:
    first = SQLiteEventStore(db, synchronous="NORMAL")
    await first.open()
    for event in take(EventMix(seed=21), 5):
        [record] = await first.append([event])
        print(json.dumps({"ack": [record.seq, record.event_id]}), flush=True)
    second = SQLiteEventStore(db, synchronous="FULL")
    await second.open()
    patch = pytest.MonkeyPatch()
    if stage == "written":
        patch.setattr(os, "fdatasync", _before(os.fdatasync, stage))
    elif stage == "synced":
        patch.setattr(ledger.store.sqlite, "presize_wal", _after(presize_wal, stage))
    [event] = take(EventMix(seed=22), 1)
    print(json.dumps({"try": event.event_id}), flush=True)
    [record] = await second.append([event])
    print(json.dumps({"ack": [record.seq, record.event_id]}), flush=True)
    _stop(stage)


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], sys.argv[2])
