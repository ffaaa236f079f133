"""The targets of issue 9 §4 (and §2, §3), each a ratio between two cases of one run.

`benchmarks.report` prints every target here with met / not met, or "not measured" when the
run holds no case for it. A case is found by the target's id among its `Compare(target_id=...)`
entries, or else by its group and case name (exact text, or a regular expression).

Ratios are time ratios: the case's time per unit (event, command, create+close: a round's time
over what one round does) over its baseline's, both from medians (the minimums are printed
beside them). "At least 1.5x the rate" is a time ratio of at most 1/1.5.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# How a concurrent round's tasks are started, by name in its case: the target is read on
# asyncio's (the bot is an asyncio program); anyio's is measured beside it.
HARNESSES = {"asyncio": "asyncio.TaskGroup", "anyio": "anyio task group"}


def concurrent_case(n: int, harness: str) -> str:
    return f"Ledger: {n} concurrent commands ({HARNESSES[harness]})"


def harness_alone_case(n: int, harness: str) -> str:
    return f"{HARNESSES[harness]} alone: {n} tasks, no command"


@dataclass(frozen=True, kw_only=True)
class Target:
    id: str
    text: str  # the target as the issue words it
    group: str
    case: str  # regular expression matched against the whole case name
    vs: str = ""  # the baseline's case name (regular expression); "" for a value target
    max_ratio: float | None = None  # time ratio case / baseline at most this
    value_key: str = ""  # for a value target: the extra_info key ...
    max_value: float | None = None  # ... and its ceiling
    at_events: int | None = None  # the log size the target is stated for, if any
    same_work: str = ""  # what makes the comparison fair, printed beside the row


TARGETS: tuple[Target, ...] = (
    Target(
        id="append-single-full",
        text="one event a transaction, FULL: within 1.3x of raw sqlite3",
        group="append-single",
        case=r"store\.append x1, FULL",
        vs=r"raw sqlite3 x1, FULL",
        max_ratio=1.3,
        same_work="same rows, indexes, WAL, synchronous=FULL, one commit per event",
    ),
    Target(
        id="append-single-normal",
        text="one event a transaction, NORMAL: at least 20% of raw sqlite3",
        group="append-single",
        case=r"store\.append x1, NORMAL",
        vs=r"raw sqlite3 x1, NORMAL",
        max_ratio=5.0,
        same_work="same rows, indexes, WAL, synchronous=NORMAL, one commit per event",
    ),
    Target(
        id="sequential-ledger-vs-eventsourcing",
        text="sequential commands through Ledger: at least 1.5x the eventsourcing library's rate",
        group="eventsourcing",
        case=r"Ledger: .*",
        vs=r"eventsourcing: .*",
        max_ratio=1 / 1.5,
        same_work="same open / partial exit / close work, one durable commit per command",
    ),
    Target(
        id="sequential-blocking-vs-eventsourcing",
        text=(
            "sequential commands through ThreadSafePositionManager: at least 1.5x the "
            "eventsourcing library's rate"
        ),
        group="eventsourcing",
        case=r"ThreadSafePositionManager: .*",
        vs=r"eventsourcing: .*",
        max_ratio=1 / 1.5,
        same_work="same open / partial exit / close work, one durable commit per command",
    ),
    Target(
        id="append-batch-full",
        text="1,000 events a call, FULL: at least 75% of raw executemany",
        group="append-batch",
        case=r"store\.append x1,000, FULL",
        vs=r"raw executemany x1,000, FULL",
        max_ratio=1 / 0.75,
        same_work="same rows, indexes, WAL, synchronous=FULL, one commit per call",
    ),
    Target(
        id="append-batch-normal",
        text="1,000 events a call, NORMAL: at least 75% of raw executemany",
        group="append-batch",
        case=r"store\.append x1,000, NORMAL",
        vs=r"raw executemany x1,000, NORMAL",
        max_ratio=1 / 0.75,
        same_work="same rows, indexes, WAL, synchronous=NORMAL, one commit per call",
    ),
    Target(
        id="concurrent-vs-sequential",
        text="500 concurrent commands: at least 10x faster than 500 sequential",
        group="append-batch",
        case=re.escape(concurrent_case(500, "asyncio")),
        vs=r"Ledger: 500 sequential commands",
        max_ratio=0.1,
        same_work=(
            "same commands on the same ledger, synchronous=FULL; the 500 tasks started by "
            "asyncio's TaskGroup, as an asyncio bot (ccxt) starts them"
        ),
    ),
    Target(
        id="create-close-vs-seed",
        text="create+close at 10k closed: at least 1,000x faster than the seed (power-loss safe)",
        group="create-close",
        case=r"Ledger \(SQLite, FULL\), 10,000 closed",
        vs=r"seed \(rewrite JSON \+ fsync\), 10,000 closed",
        max_ratio=0.001,
        same_work=(
            "both survive a power loss: synchronous=FULL commits; the seed's JSON rewrite"
            " fsynced, and its folder after the rename"
        ),
    ),
    Target(
        id="create-close-vs-seed-as-written",
        text="create+close at 10k closed: at least 1,000x faster than the seed as written",
        group="create-close",
        case=r"Ledger \(SQLite, NORMAL\), 10,000 closed",
        vs=r"seed \(rewrite JSON\), 10,000 closed",
        max_ratio=0.001,
        same_work=(
            "both survive a process crash, not a power loss: synchronous=NORMAL in WAL (no"
            " fsync per commit); the seed's temp file + rename without fsync"
        ),
    ),
    Target(
        id="rebuild",
        text="rebuild 1M: fold within 2x the raw SELECT scan",
        group="rebuild",
        case=r"fold [\d,]+ events into a Book",
        vs=r"raw sqlite3 SELECT scan",
        max_ratio=2.0,
        at_events=1_000_000,
        same_work="same rows in seq order from the same file; the scan reads every column",
    ),
    Target(
        id="rebuild-rss",
        text="peak memory of the 1M rebuild: at most 150 MB RSS",
        group="rebuild",
        case=r"fold [\d,]+ events into a Book",
        value_key="peak_rss_mb",
        max_value=150.0,
        at_events=1_000_000,
        same_work="a fresh process folding the whole log (VmHWM)",
    ),
    Target(
        id="cold-start",
        text="cold start of 4,500 events, no positions.json: at most 2x raw scan + decode",
        group="cold-start",
        case=r"Ledger start-up, [\d,]+ events, no positions\.json",
        vs=r"raw sqlite3 scan \+ decode, [\d,]+ events",
        max_ratio=2.0,
        same_work="same rows, a fresh connection each round; start-up also writes positions.json",
    ),
    Target(
        id="startup",
        text="start-up from snapshot + 1k tail at 1M: at least 25x faster than a full rebuild",
        group="startup",
        case=r"start-up, snapshot \+ [\d,]+-event tail",
        vs=r"start-up, full rebuild \(no snapshot\)",
        max_ratio=0.04,
        at_events=1_000_000,
        same_work="same log and Ledger; only the opening is timed",
    ),
    *(
        Target(
            id=f"audit-{command}",
            text=f"`ledger {command}` on a 1M log: at most 1.5x a raw sqlite3 scan (fresh process)",
            group="audit-reads",
            case=rf"ledger {command}\b.*",
            vs=r"raw sqlite3 scan, fresh process",
            max_ratio=1.5,
            at_events=1_000_000,
            same_work="both fresh processes reading the same file",
        )
        for command in ("stats", "positions", "history", "watch", "replay --seq", "replay --as-of")
    ),
)
