"""A process for test_adv_interrupt_locks' real-SIGINT attack: a storm of manager writes from
helper threads and from the main thread, while the test delivers SIGINT to this process one at
a time (the next once this process said it heard the last: one in flight, never a timed race).

The main thread opens positions and marks them in a loop; each KeyboardInterrupt it hears is
reported as a line {"interrupted": n}. Once told "stop" on stdin it stops, and so do the
helpers; then, each bounded (a hang is reported, never waited out): the helpers are joined, a
write from a fresh thread must complete, the live book must equal a fold of the log, and
close() must return. The outcome is printed as one JSON line {"result": ...}.

Run: python -m tests._adv_sigint_storm_worker <dir> <helpers>
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import anyio

from ledger.blocking import ThreadSafePositionManager
from ledger.settings import Settings
from tests._workers import audit_log, book_state

BOUND = 60.0
SETTINGS = Settings(
    max_concurrent_positions=100_000, snapshot_every_events=10**9, snapshot_every_seconds=10**6
)


def _bounded(work: Callable[[], object]) -> str:
    """'ok', the error's name, or 'hung' once BOUND passed."""
    box: list[str] = []

    def body() -> None:
        try:
            work()
            box.append("ok")
        except BaseException as exc:
            box.append(type(exc).__name__)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    thread.join(BOUND)
    return "hung" if thread.is_alive() else box[0]


def _say(what: dict[str, object]) -> None:
    print(json.dumps(what), flush=True)


def main(folder: Path, helpers: int) -> None:
    # the test's SIGINTs are KeyboardInterrupts here whatever this process inherited: a shell
    # starts a background job (a CI step's `scripts/test &`) with SIGINT ignored, and Python
    # then leaves it ignored (every signal lost, the storm never reported)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    faulthandler.dump_traceback_later(
        float(os.environ.get("STORM_DUMP", 4 * BOUND)), exit=True
    )  # a hang shows where, then ends
    manager = ThreadSafePositionManager(
        file_path=folder / "positions.json", db_path=folder / "ledger.db", settings=SETTINGS
    )
    stop = threading.Event()
    acked: dict[str, list[str]] = {}
    errors: list[str] = []

    def helper(tag: str) -> None:
        mine = acked.setdefault(tag, [])
        j = 0
        while not stop.is_set():
            j += 1
            try:
                pid = manager.thread_safe_create_position(
                    symbol=f"{tag}{j}USDT",
                    side="long",
                    entry_price=10,
                    position_size=100,
                    leverage=2,
                )
                mine.append(pid)
                manager.update_position_price(pid, 11)
            except BaseException as exc:  # any refusal here is a finding, and so is
                errors.append(f"{tag}: {type(exc).__name__}: {exc}")  # another's interrupt
                return

    def listen() -> None:
        sys.stdin.readline()
        stop.set()

    threads = [
        threading.Thread(target=helper, args=(f"H{i}-",), daemon=True) for i in range(helpers)
    ]
    for thread in threads:
        thread.start()
    threading.Thread(target=listen, daemon=True).start()
    attempted: list[str] = []
    heard, reported = 0, -1  # the first report says it is ready
    while True:  # a signal may land anywhere in here, a report's own print included
        try:
            while True:
                if reported < heard:
                    reported = heard
                    _say({"interrupted": heard})  # the test sends the next one on reading it
                if stop.is_set() or errors:
                    break
                symbol = f"M{len(attempted)}USDT"
                attempted.append(symbol)
                pid = manager.thread_safe_create_position(
                    symbol=symbol, side="long", entry_price=10, position_size=100, leverage=2
                )
                manager.update_position_price(pid, 12)
            break
        except KeyboardInterrupt:
            heard += 1
        except Exception as exc:
            errors.append(f"main: {type(exc).__name__}: {exc}")
            break
    stop.set()
    joined = [_bounded(lambda t=t: t.join(BOUND)) for t in threads]  # type: ignore[misc]
    alive = sum(t.is_alive() for t in threads)
    after = _bounded(
        lambda: manager.thread_safe_create_position(
            symbol="AFTERUSDT", side="long", entry_price=10, position_size=100, leverage=2
        )
    )
    live = book_state(manager.ledger.book)
    closed = _bounded(manager.close)
    audit = anyio.run(audit_log, folder / "ledger.db")
    stored = {p.symbol for p in [*audit.fold.open.values(), *audit.fold.closed.values()]}
    helper_acked = {pid for pids in acked.values() for pid in pids}
    _say(
        {
            "result": {
                "heard": heard,
                "errors": errors,
                "helpers_alive": alive,
                "joined": joined,
                "write_after": after,
                "close": closed,
                "book_is_fold": live == book_state(audit.fold),
                "helper_acked_stored": helper_acked <= set(audit.fold.open),
                "main_stored_attempted": {s for s in stored if s.startswith("M")} <= set(attempted),
                "helper_commands": len(helper_acked),
            }
        }
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
