"""A ThreadSafePositionManager writer for tests/test_adv_manager_crash.py's kill -9 test.

THREADS plain threads each run positions through the seed's calls (the usual five-field create,
a mark, a partial exit of `size * 0.5` as a seed bot computes it in floats, a close), one after
the other, as fast as they can, until the process is killed (symbols tagged with the run given:
a restart after a kill leaves the last run's positions open). Each acknowledged call prints one
line, `<verb> <position id>`, after it returned (so: durable); a small snapshot interval makes
positions.json rewrite often under the writes.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from ledger.blocking import ThreadSafePositionManager
from ledger.settings import Settings

THREADS = 4


def main(folder: str, run: str) -> None:
    settings = Settings(max_concurrent_positions=1000, snapshot_every_events=7)
    root = Path(folder)
    manager = ThreadSafePositionManager(
        root / "positions.json", db_path=root / "ledger.db", settings=settings
    )
    printing = threading.Lock()

    def say(verb: str, pid: str) -> None:
        with printing:
            sys.stdout.write(f"{verb} {pid}\n")
            sys.stdout.flush()

    def bot(i: int) -> None:
        n = 0
        while True:
            size = 250.0
            pid = manager.thread_safe_create_position(
                symbol=f"R{run}B{i}N{n}USDT",
                side="long" if n % 2 else "short",
                entry_price=100.0 + i,
                position_size=size,
                leverage=5,
            )
            say("open", pid)
            assert manager.update_position_price(pid, 101.5)
            say("mark", pid)
            assert manager.register_partial_exit(pid, size * 0.5, 102.25, None, "tp1")
            say("exit", pid)
            assert manager.close_position(pid, "done", 103)
            say("close", pid)
            n += 1

    threads = [threading.Thread(target=bot, args=(i,), daemon=True) for i in range(THREADS)]
    say("ready", "-")
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
