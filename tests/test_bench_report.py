"""benchmarks.report compares cases per unit (event, command), not per round."""

from __future__ import annotations

from typing import Any

from benchmarks.report import render, rows, target_rows
from benchmarks.targets import concurrent_case, harness_alone_case


def _bench(
    case: str, median: float, per_round: int, compare: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "group": "append-batch",
        "name": case,
        "stats": {"median": median, "min": median, "rounds": 5},
        "extra_info": {"case": case, "per_round": per_round, "unit": "events", "compare": compare},
    }


def _run(ours_per_round: int, ours_median: float) -> dict[str, Any]:
    compare = [
        {
            "to": "raw executemany x1,000, FULL",
            "max_ratio": 1 / 0.75,
            "target": ">= 75% of raw throughput",
            "target_id": "append-batch-full",
        }
    ]
    return {
        "benchmarks": [
            _bench("store.append x1,000, FULL", ours_median, ours_per_round, compare),
            # raw: 1,000 events in 10 ms a round
            _bench("raw executemany x1,000, FULL", 0.010, 1_000, []),
        ]
    }


def _target(data: dict[str, Any]) -> list[str]:
    (row,) = [r for r in target_rows(data) if r[0].startswith("1,000 events a call, FULL")]
    return row


def test_a_case_running_more_units_a_round_is_compared_per_unit() -> None:
    # 5,000 events in 60 ms against raw's 1,000 in 10 ms: 12 µs an event against 10, 1.2x
    data = _run(5_000, 0.060)
    assert _target(data)[1].startswith("1.20x") and _target(data)[2] == "met"
    (ours,) = [r for r in rows(data) if r[1].startswith("store.append")]
    assert ours[5].startswith("1.20x") and ours[7] == "yes"


def test_the_per_unit_ratio_still_finds_a_target_not_met() -> None:
    # 5,000 events in 70 ms: 14 µs an event against 10, 1.4x (per round it would read 7x)
    data = _run(5_000, 0.070)
    assert _target(data)[1].startswith("1.40x") and _target(data)[2] == "**not met**"


def test_cases_with_the_same_round_compare_as_before() -> None:
    data = _run(1_000, 0.012)
    assert _target(data)[1].startswith("1.20x") and _target(data)[2] == "met"


def _concurrent_run(
    harness_ms: float, *, staging: bool = False, harness: str = "asyncio"
) -> dict[str, Any]:
    def case(name: str, median_ms: float, per_round: int) -> dict[str, Any]:
        return {
            "group": "append-batch",
            "name": name,
            "stats": {"median": median_ms / 1e3, "min": median_ms / 1e3, "rounds": 5},
            "extra_info": {"case": name, "per_round": per_round, "unit": "commands"},
        }

    return {
        "benchmarks": [
            case("Ledger: 500 sequential commands", 150.0, 500),  # 10x allows 15 ms
            case(concurrent_case(500, harness), 20.0, 500),
            case(harness_alone_case(500, harness), harness_ms, 500),
            case("raw executemany x1,000, FULL", 8.0, 1_000),  # 500 rows: 4 ms
            *([case(_STAGING, 2.0, 1_000)] if staging else []),  # 500 events: 1 ms
        ]
    }


_STAGING = "staging alone x1,000 (encode, chain hash, records; no database)"


def test_the_concurrent_floor_adds_the_harness_and_raw_inserts_against_the_allowance() -> None:
    above = render(_concurrent_run(12.0))
    assert "allows 15.00 ms a round" in above
    assert "alone 12.00 ms" in above and "4.00 ms: 16.00 ms before any command" in above
    assert "above what the target allows by 1.00 ms" in above  # 16 ms spent of 15 allowed
    within = render(_concurrent_run(5.0))
    assert "9.00 ms before any command is decided, folded or answered, within" in within
    assert "6.00 ms left for the ledger" in within


def test_the_concurrent_floor_counts_the_staging_every_event_needs_when_measured() -> None:
    text = render(_concurrent_run(10.0, staging=True))
    assert "staging as many events (scaled from its 1,000-event round) 1.00 ms" in text
    assert "15.00 ms before any command" in text and "within what the target allows" in text
    text = render(_concurrent_run(10.5, staging=True))
    assert "15.50 ms before any command" in text and "allows by 500.0 µs" in text


def test_the_concurrent_floor_is_printed_for_each_harness_measured() -> None:
    anyio_only = render(_concurrent_run(12.0, harness="anyio"))
    assert "started by the anyio task group" in anyio_only and "asyncio.TaskGroup" not in anyio_only
    assert "the anyio task group alone 12.00 ms" in anyio_only
    both = _concurrent_run(3.0)
    both["benchmarks"] += _concurrent_run(12.0, harness="anyio")["benchmarks"][1:3]
    text = render(both)
    assert (
        "started by the asyncio.TaskGroup" in text and "the asyncio.TaskGroup alone 3.00 ms" in text
    )
    assert "started by the anyio task group" in text


def test_the_concurrent_target_is_read_on_asyncios_round() -> None:
    data = _concurrent_run(3.0)  # asyncio's round: 20 ms against 150 ms sequential
    data["benchmarks"].append(
        {
            "group": "append-batch",
            "name": concurrent_case(500, "anyio"),
            "stats": {"median": 0.010, "min": 0.010, "rounds": 5},
            "extra_info": {
                "case": concurrent_case(500, "anyio"),
                "per_round": 500,
                "unit": "commands",
            },
        }
    )
    (row,) = [r for r in target_rows(data) if r[0].startswith("500 concurrent")]
    assert row[1].startswith("0.13x") and row[2] == "**not met**"
