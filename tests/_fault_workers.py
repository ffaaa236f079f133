"""Child processes for the storage fault tests (a file-size limit is process-wide, a killed
writer must be a real process, an unprivileged user a real uid). Each prints JSON lines.

python -m tests._fault_workers fsize <db>      appends under RLIMIT_FSIZE until refused, then
                                               lifts the limit and appends once more
python -m tests._fault_workers write <db>      appends forever (the parent kills it)
python -m tests._fault_workers append <db>     opens the ledger and appends one event
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
from decimal import Decimal
from multiprocessing import Queue
from multiprocessing.synchronize import Barrier as ProcessBarrier

import anyio

from ledger.errors import LedgerError, StoreError
from ledger.service import Ledger
from ledger.settings import Settings

QUIET = Settings(
    snapshot_every_events=10**9, snapshot_every_seconds=10**6, max_concurrent_positions=1000
)


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _fsize(db: str) -> None:
    # without this the kernel kills the process (SIGXFSZ) instead of failing the write
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    async with Ledger(db, settings=QUIET) as ledger:
        position = await ledger.open_position("FSZUSDT", "long", entry_price=10, qty=1, leverage=2)
        acked = [ledger.last_seq]
        # RLIMIT_FSIZE refuses any write ending past the limit, inside a file or growing it;
        # the WAL, sized ahead of its commits at FULL (ledger.store.wal), fills from its
        # start, so its next frames pass the database file's size within a few commits
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(db) + 8192, hard))
        error = ""
        for i in range(1000):
            try:
                await ledger.mark(position.position_id, Decimal(11) + Decimal(i) / 100)
            except StoreError as exc:
                error = f"{type(exc).__name__}: {exc}"
                break
            acked.append(ledger.last_seq)
        refused_at = ledger.last_seq
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # the fault clears
        await ledger.mark(position.position_id, 99)
        acked.append(ledger.last_seq)
        say(acked=acked, error=error, refused_at=refused_at)


async def _write(db: str) -> None:
    async with Ledger(db, settings=QUIET) as ledger:
        position = await ledger.open_position(
            f"KILL{os.getpid()}USDT", "long", entry_price=10, qty=1, leverage=2
        )
        say(ready=ledger.last_seq)
        i = 0
        while True:
            i += 1
            await ledger.mark(position.position_id, Decimal(10) + Decimal(i % 1000) / 100)
            if i == 20:
                say(writing=ledger.last_seq)


async def _append(db: str) -> None:
    async with Ledger(db, settings=QUIET) as ledger:
        await ledger.open_position(
            f"AFTER{os.getpid()}USDT", "long", entry_price=10, qty=1, leverage=2
        )
        say(ok=ledger.last_seq)


async def _append_or_say(db: str) -> None:
    try:
        await _append(db)
    except LedgerError as exc:
        say(error=f"{type(exc).__name__}: {exc}")


def open_after_kill(db: str, barrier: ProcessBarrier, results: Queue[str]) -> None:
    """A process already started and imported: once the parent has killed the writer it
    passes the barrier with the others and they all open the database at once."""
    barrier.wait()
    try:
        anyio.run(_append, db)
        results.put("ok")
    except BaseException as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


def main(argv: list[str]) -> None:
    cases = {"fsize": _fsize, "write": _write, "append": _append_or_say}
    if len(argv) != 2 or argv[0] not in cases:
        raise SystemExit(__doc__)
    anyio.run(cases[argv[0]], argv[1])


if __name__ == "__main__":
    main(sys.argv[1:])
