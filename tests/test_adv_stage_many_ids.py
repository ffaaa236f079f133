"""Adversary: a long batch's staging tells a repeated id from the one dict of its records (no set
of the ids first), reads its streams once in `_stage_appends` and hands them to `_stage_many`
(240553d). Against the per-event path, written independently of the column-by-column one:
ids repeated within the batch, ids a batch before it staged in the same transaction, streams
interleaved, both ways in (`stage`, `_stage_appends`). And an interrupt at every instruction of
the changed code stages the batch whole or not at all (the transaction as it was before).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.envelope import NewEvent
from ledger.events import PositionMarked
from ledger.store.base import (
    STAGE_MANY_FROM,
    Head,
    StoreTransaction,
    _PendingAppend,
    _stage_appends,
)
from ledger.store.writer import Completion
from tests._interrupts import Inject, no_cyclic_gc
from tests.test_staged_hashes import RECORDED_AT, _Staging

__all__ = ["no_cyclic_gc"]

STREAMS = ["a", "b", "c"]
T0 = datetime(2024, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)
T1 = datetime(2024, 3, 1, 12, 0, 1, tzinfo=UTC)


def _head() -> Head:
    return Head(7, "ab" * 32, {stream: 2 for stream in STREAMS})


def _new(index: int, event_id: str, stream: str) -> NewEvent:
    event = PositionMarked(position_id=stream, mark_price=Decimal(f"7.{index}"))
    return NewEvent(
        stream=stream, event=event, event_id=event_id, occurred_at=T0 if index % 2 else T1
    )


@st.composite
def cases(draw: st.DrawFn) -> tuple[list[NewEvent], list[NewEvent]]:
    """(staged first in the transaction, one by one; the long batch)."""
    length = draw(st.integers(STAGE_MANY_FROM, STAGE_MANY_FROM + 20))
    pool = draw(st.integers(length - 1, length + 10))
    # ids repeated in the batch, or each once (then only a batch staged before may hold one)
    unique = draw(st.booleans())
    ids = draw(st.lists(st.integers(0, pool), min_size=length, max_size=length, unique=unique))
    streams = draw(st.lists(st.sampled_from(STREAMS), min_size=length, max_size=length))
    batch = [_new(i, f"id-{ids[i]}", streams[i]) for i in range(length)]
    before = draw(st.lists(st.integers(0, pool), max_size=3, unique=True))
    prior = [_new(100 + n, f"id-{n}", STREAMS[n % 3]) for n in before]
    return prior, batch


def _state(tx: StoreTransaction) -> tuple[object, ...]:
    return (
        list(tx.rows),
        tx.head.seq,
        tx.head.hash,
        {stream: tx.head.version(stream) for stream in STREAMS},  # (own may repeat base's)
        {event_id: record.seq for event_id, record in tx._staged_ids.items()},
    )


def _one_by_one(
    prior: list[NewEvent], batch: list[NewEvent]
) -> tuple[list[int], tuple[object, ...]]:
    """The reference: every event staged alone, in order (a repeated id: the staged record)."""
    single = _Staging(_head(), [], RECORDED_AT)
    for new in prior:
        single.stage([new])
    seqs = [single.stage([new])[0].seq for new in batch]
    return seqs, _state(single)


def _appends(tx: StoreTransaction, batch: list[NewEvent]) -> list[int]:
    pending = _PendingAppend(batch=batch, expected={}, done=Completion())
    _stage_appends(tx, [pending], ask=False)
    assert pending.error is None, pending.error
    return [record.seq for record in pending.result]


@settings(max_examples=150, deadline=None)
@given(cases(), st.sampled_from(["stage", "appends"]))
def test_a_long_batch_with_repeated_or_staged_ids_stages_what_one_by_one_stages(
    case: tuple[list[NewEvent], list[NewEvent]], way: str
) -> None:
    prior, batch = case
    if way == "appends":
        prior = []  # a group's unit starts the transaction
    whole = _Staging(_head(), [], RECORDED_AT)
    for new in prior:
        whole.stage([new])
    seqs = (
        [record.seq for record in whole.stage(batch)] if way == "stage" else _appends(whole, batch)
    )
    expected_seqs, expected_state = _one_by_one(prior, batch)
    assert seqs == expected_seqs
    assert _state(whole) == expected_state


_CODES = frozenset({StoreTransaction._stage_many.__code__, _stage_appends.__code__})


# (a group's unit starts its transaction: `_stage_appends` is never after another batch)
@pytest.mark.parametrize(
    ("way", "prior"),
    [("stage", 0), ("stage", 1), ("appends", 0)],
    ids=["first-batch", "after-another", "appends"],
)
def test_a_long_batch_interrupted_anywhere_stages_whole_or_nothing(way: str, prior: int) -> None:
    batch = [_new(i, f"id-{i}", STREAMS[i % 3]) for i in range(STAGE_MANY_FROM)]
    first = [_new(99, "first", "b")][:prior]
    _, done_state = _one_by_one(first, batch)
    at, hits = 0, 0
    while True:
        tx = _Staging(_head(), [], RECORDED_AT)
        for new in first:
            tx.stage([new])
        before = _state(tx)
        inject = Inject(at, codes=_CODES)
        try:
            with inject:
                if way == "stage":
                    tx.stage(batch)
                else:
                    _appends(tx, batch)
        except KeyboardInterrupt:
            hits += 1
            left = _state(tx)
            # nothing staged, or (interrupted past its last step) the whole batch
            assert left in (before, done_state), inject.where
        else:
            assert inject.where is None
            assert _state(tx) == done_state
            break
        # the transaction goes on from what is left: a next event chains on its head
        seq = tx.head.seq
        (after,) = tx.stage([_new(7, "after", "c")])
        assert after.seq == seq + 1 and after.version == left[3]["c"] + 1, inject.where  # type: ignore[index]
        at += 1
    assert hits > 50  # the sweep reached well into the staging
