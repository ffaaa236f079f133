"""Attack (adversary): runs of marks decided together (`_decide_marks`: `rules.decide_mark`,
`_plain_mark`) from many manager threads at once, on one position, while another thread
closes it and others send marks the rules or the bounds refuse (the seed's floats at and
past the bounds, NaN, a bool, below zero).

Each mark call answers True (stored), False (the position was closed first) or a typed
InvalidValue for a bad price, never anything else; the log holds exactly the marks answered
True, all before the close; the book equals a fold of the log.
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio

from ledger.blocking import ThreadSafePositionManager
from ledger.errors import InvalidValue
from ledger.events import PositionClosed, PositionMarked
from ledger.settings import Settings
from tests._workers import audit_log
from tests.test_adv_blocking_storm import seed_kwargs

WATCHDOG = 60.0
MARKERS = 8
MARKS_EACH = 12
BAD = [float("nan"), float("inf"), -1.0, 0.0, 1e16, True, "abc", 1e-13]
GOOD_EDGES = [1e15, 1e-12, 100.125, 7]


def test_marks_from_many_threads_racing_a_close_answer_true_false_or_typed(
    tmp_path: Path,
) -> None:
    db = tmp_path / "ledger.db"
    settings = Settings(max_concurrent_positions=100)
    answers: dict[tuple[int, int], object] = {}
    with ThreadSafePositionManager(tmp_path / "p.json", db_path=db, settings=settings) as m:
        pid = m.thread_safe_create_position(**seed_kwargs("MUSDT"))
        start = threading.Barrier(MARKERS + 1)
        closed: list[bool] = []

        def marker(i: int) -> None:
            start.wait()
            for k in range(MARKS_EACH):
                if i == 0 and k == MARKS_EACH // 2:
                    closed.append(m.close_position(pid, "race"))
                prices = BAD if i % 3 == 2 else GOOD_EDGES
                price = prices[k % len(prices)]
                try:
                    answers[i, k] = m.update_position_price(pid, price)  # type: ignore[arg-type]
                except BaseException as exc:  # handed to the test
                    answers[i, k] = exc

        threads = [threading.Thread(target=marker, args=(i,), daemon=True) for i in range(MARKERS)]
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join(WATCHDOG)
        assert not any(thread.is_alive() for thread in threads), "a caller hung"
        live_closed = m.exact.get_closed_positions()
    assert closed == [True]
    assert len(answers) == MARKERS * MARKS_EACH
    for (i, _), answer in answers.items():
        if i % 3 == 2:
            assert isinstance(answer, InvalidValue), answer
        else:
            assert answer is True or answer is False, answer
    audit = anyio.run(audit_log, db)
    marks = [r for r in audit.records if isinstance(r.event, PositionMarked)]
    (close,) = [r for r in audit.records if isinstance(r.event, PositionClosed)]
    assert len(marks) == sum(1 for answer in answers.values() if answer is True)
    assert all(r.seq < close.seq for r in marks)
    assert live_closed == list(audit.fold.closed.values())
