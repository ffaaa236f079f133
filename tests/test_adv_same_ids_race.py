"""Two processes on one file open positions by the same ids at the same time.

An open's stream is staged as new without reading its version (`assume_new`), proven empty by
its insert. Here two processes race to open p0..pN (the same ids, other symbols), one command
a transaction each, A from p0 up and B from pN down, meeting
somewhere: every id is opened exactly once, by the process told it was; the other is
told the id is used, never told it opened it; each stream holds one open, versions
consecutive, and the log verifies.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import anyio

from ledger.events import PositionOpened
from tests._adv_same_ids_worker import race
from tests._workers import audit_log

COUNT = 150


def test_two_processes_opening_the_same_ids_open_each_once(tmp_path: Path) -> None:
    db = str(tmp_path / "ledger.db")
    spawn = multiprocessing.get_context("spawn")
    start = spawn.Barrier(2)
    out: multiprocessing.Queue[object] = spawn.Queue()
    workers = [
        spawn.Process(target=race, args=(db, name, COUNT, start, out)) for name in ("A", "B")
    ]
    for worker in workers:
        worker.start()
    heard: dict[str, object] = {}
    for _ in workers:
        answer: tuple[str, object] = out.get(timeout=120)  # type: ignore[assignment]
        heard[answer[0]] = answer[1]
    for worker in workers:
        worker.join(30)
        assert worker.exitcode == 0
    told = {name: answer for name, answer in heard.items() if isinstance(answer, dict)}
    assert len(told) == 2, heard
    audit = anyio.run(audit_log, Path(db))  # gapless, chained, consecutive versions
    opens = [(r.stream, r.event) for r in audit.records if isinstance(r.event, PositionOpened)]
    assert sorted(stream for stream, _ in opens) == sorted(f"p{n}" for n in range(COUNT))
    for stream, opened in opens:
        winner = opened.symbol[0]
        loser = "B" if winner == "A" else "A"
        assert told[winner][stream] == "opened"
        assert told[loser][stream].startswith("refused"), told[loser][stream]
