"""Print a pytest-benchmark JSON file as a Markdown table, each case beside its baselines.

    scripts/bench --benchmark-json=bench.json          # BENCH_SCALE=full for the 1M-event logs
    python -m benchmarks.report bench.json

Scales (BENCH_SCALE): smoke runs each benchmark once on tiny data (scripts/test, with
--benchmark-disable, a few seconds); default (scripts/bench) folds a 100k-event log and takes
a few minutes; full folds, starts up and audits a 1M-event log (a copy of it is verified for
the audit reads): about 20 minutes on a busy 2-core machine.

Columns: the group, the case, its median time per round, its rate (events, commands or
start-ups per second), the case it is compared with, the time ratio (this case's median time
per unit over that one's, a unit being what the rate counts: below 1 is faster; the ratio of the
two minimums beside it, since a shared machine's noise moves single rounds) and, where the issue
sets one, the target and whether it is met.

Then every target of issue 9 (`benchmarks.targets`) with met / not met, judged on the ratio of
medians, or "not measured" when the run has no case for it; a target stated for a 1M-event log
and measured on a smaller one says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.targets import HARNESSES, TARGETS, Target, concurrent_case, harness_alone_case

_MEMORY_KEYS = (
    "peak_rss_mb",
    "peak_rss_growth_mb",
    "tracemalloc_peak_mb",
    "book_mb",
    "snapshot_mb",
)


def _seconds(value: float) -> str:
    if value >= 1:
        return f"{value:.2f} s"
    if value >= 1e-3:
        return f"{value * 1e3:.2f} ms"
    return f"{value * 1e6:.1f} µs"


def _rate(per_round: float, median: float, unit: str) -> str:
    if median <= 0:
        return "—"
    rate = per_round / median
    return f"{rate:,.0f} {unit}/s" if rate >= 10 else f"{rate:.2f} {unit}/s"


def _cases(data: dict[str, Any]) -> list[dict[str, Any]]:
    cases = []
    for bench in data.get("benchmarks", []):
        info = bench.get("extra_info") or {}
        cases.append(
            {
                "group": bench.get("group") or "",
                "case": info.get("case") or bench["name"],
                "median": float(bench["stats"]["median"]),
                "min": float(bench["stats"]["min"]),
                "rounds": int(bench["stats"]["rounds"]),
                "per_round": float(info.get("per_round", 1)),
                "unit": str(info.get("unit", "rounds")),
                "compare": list(info.get("compare") or []),
                "info": info,
            }
        )
    return cases


def rows(data: dict[str, Any]) -> Iterable[list[str]]:
    """One row per case and comparison: group, case, median, rate, vs, ratio, target, met."""
    cases = _cases(data)
    by_key = {(c["group"], c["case"]): c for c in cases}
    groups = list(dict.fromkeys(c["group"] for c in cases))
    for case in sorted(cases, key=lambda c: groups.index(c["group"])):
        base = [
            case["group"],
            case["case"],
            _seconds(case["median"]),
            _rate(case["per_round"], case["median"], case["unit"]),
        ]
        if not case["compare"]:
            yield [*base, "—", "—", "", ""]
            continue
        for i, compare in enumerate(case["compare"]):
            other = by_key.get((case["group"], compare["to"]))
            cells = base if i == 0 else ["", "", "", ""]
            if other is None:
                yield [*cells, compare["to"], "not in this run", compare.get("target", ""), ""]
                continue
            ratio = _unit_ratio(case, other, "median")
            limit = compare.get("max_ratio")
            met = "" if limit is None else ("yes" if ratio <= limit else "**no**")
            shown = _ratio(ratio, _unit_ratio(case, other, "min"))
            yield [*cells, compare["to"], shown, compare.get("target", ""), met]


def _unit_ratio(case: dict[str, Any], base: dict[str, Any], stat: str) -> float:
    """The case's time per unit (event, command, create+close) over its baseline's: a round's
    time divided by what one round does, so a case may run more units a round than its
    baseline (to spread a fixed per-round cost of the harness) and still compare fairly."""
    ratio: float = (case[stat] / case["per_round"]) / (base[stat] / base["per_round"])
    return ratio


def _times(ratio: float) -> str:
    return f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"


def _ratio(median: float, minimum: float) -> str:
    shown = f"{_times(median)} (min {_times(minimum)})"
    if median < 1:
        shown += f", {1 / median:.1f}x faster"
    return shown


def _pair(
    cases: list[dict[str, Any]], target: Target
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The target's case and baseline: declared by target_id, else matched by name."""
    by_key = {(c["group"], c["case"]): c for c in cases}
    for case in cases:
        for compare in case["compare"]:
            if compare.get("target_id") == target.id:
                return case, by_key.get((case["group"], compare["to"]))

    def named(pattern: str) -> dict[str, Any] | None:
        found = [
            c for c in cases if c["group"] == target.group and re.fullmatch(pattern, c["case"])
        ]
        return found[0] if found else None

    return named(target.case), (named(target.vs) if target.vs else None)


def target_rows(data: dict[str, Any]) -> Iterable[list[str]]:
    """One row per target: the target, the measured figure, met, the events, what is equal."""
    cases = _cases(data)
    for target in TARGETS:
        case, base = _pair(cases, target)
        if case is None or (target.vs and base is None):
            yield [target.text, "—", "not measured", "", target.same_work]
            continue
        if target.vs and base is not None:
            ratio = _unit_ratio(case, base, "median")
            figure = _ratio(ratio, _unit_ratio(case, base, "min"))
            met = target.max_ratio is not None and ratio <= target.max_ratio
        else:
            value = case["info"].get(target.value_key)
            if value is None:
                yield [target.text, "—", "not measured", "", target.same_work]
                continue
            figure = f"{value} MB"
            met = target.max_value is not None and float(value) <= target.max_value
        events = case["info"].get("events")
        scope = "" if events is None else f"{int(events):,}"
        verdict = "met" if met else "**not met**"
        if target.at_events is not None and events is not None and int(events) < target.at_events:
            verdict += f" (at {int(events):,} events; the target is for {target.at_events:,})"
        yield [target.text, figure, verdict, scope, target.same_work]


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(lines)


def _rebuild_breakdown(cases: list[dict[str, Any]]) -> list[str]:
    """Where the rebuild's time goes: rows (the raw scan of the fold's columns), the store's
    read (the store reading them as the fold does, less the rows) and decode + fold (the
    rest: the fold decodes each body only as far as it folds it), from medians."""
    named = {c["case"]: c for c in cases if c["group"] == "rebuild"}
    rows = named.get("raw sqlite3 SELECT of the fold's 4 columns")
    facts = named.get("store.fold_pages (the fold's rows as it reads them, no decode, no fold)")
    fold = next((c for name, c in named.items() if name.startswith("fold ")), None)
    if rows is None or facts is None or fold is None:
        return []
    parts = {
        "rows": rows["median"],
        "store's read": facts["median"] - rows["median"],
        "decode + fold": fold["median"] - facts["median"],
    }
    shown = ", ".join(f"{name} {_seconds(max(value, 0.0))}" for name, value in parts.items())
    return [f"\nWhere the rebuild's time goes (medians): {shown}; total {_seconds(fold['median'])}"]


def _concurrent_floor(cases: list[dict[str, Any]]) -> list[str]:
    """What the concurrent target leaves the ledger, from medians of this run, for each
    harness measured: 10x faster than the sequential round allows a tenth of its time; the
    round's harness alone (its task group starting as many tasks, each returning at once), raw
    sqlite3's insert of as many rows in one FULL commit (its 1,000-row executemany round scaled
    to the round's rows: a lower bound, the commit's fixed cost counted in part) and the
    staging of as many events (encoding, the chain hash, records: what every event needs,
    scaled from its 1,000-event round) are spent before any command is decided, folded or
    answered."""
    batch = {c["case"]: c for c in cases if c["group"] == "append-batch"}
    sequential = batch.get("Ledger: 500 sequential commands")
    raw = batch.get("raw executemany x1,000, FULL")
    staging = batch.get(_STAGING_ALONE)
    if sequential is None or raw is None:
        return []
    out = []
    for harness, name in HARNESSES.items():
        concurrent = batch.get(concurrent_case(500, harness))
        alone = batch.get(harness_alone_case(500, harness))
        if concurrent is None or alone is None:
            continue
        commands = float(concurrent["per_round"])

        def scaled(case: dict[str, Any], commands: float = commands) -> float:
            return float(case["median"]) / float(case["per_round"]) * commands

        allowed = scaled(sequential) / 10
        parts = [
            (f"the {name} alone", scaled(alone)),
            (
                "raw executemany's insert of as many rows (FULL, scaled from its 1,000-row round)",
                scaled(raw),
            ),
        ]
        if staging is not None:
            parts.append(
                ("staging as many events (scaled from its 1,000-event round)", scaled(staging))
            )
        floor = sum(seconds for _, seconds in parts)
        verdict = (
            f"above what the target allows by {_seconds(floor - allowed)}"
            if floor > allowed
            else f"within what the target allows, {_seconds(allowed - floor)} left for the ledger"
        )
        spent = ", ".join(f"{part} {_seconds(seconds)}" for part, seconds in parts)
        out.append(
            f"\n{commands:,.0f} concurrent commands started by the {name}: 10x faster than "
            f"sequential allows {_seconds(allowed)} a round; {spent}: {_seconds(floor)} before "
            f"any command is decided, folded or answered, {verdict}; the round took "
            f"{_seconds(concurrent['median'])}"
        )
    return out


_STAGING_ALONE = "staging alone x1,000 (encode, chain hash, records; no database)"


def render(data: dict[str, Any]) -> str:
    """The Markdown report of one pytest-benchmark JSON document."""
    header = ["group", "case", "median", "rate", "vs", "time ratio", "target", "met"]
    out = [_table(header, rows(data))]
    out.append("\nTargets (issue 9):\n")
    out.append(
        _table(
            ["target", "measured (median, min)", "met", "events", "same work"], target_rows(data)
        )
    )
    notes = []
    for case in _cases(data):
        memory = {k: case["info"][k] for k in _MEMORY_KEYS if k in case["info"]}
        if memory:
            shown = ", ".join(f"{k} = {v}" for k, v in memory.items())
            notes.append(f"- {case['group']} / {case['case']}: {shown}")
    if notes:
        out.append("\nMemory and sizes (MB):\n" + "\n".join(notes))
    out.extend(_rebuild_breakdown(_cases(data)))
    out.extend(_concurrent_floor(_cases(data)))
    loads = [float(c["info"]["load_average"]) for c in _cases(data) if "load_average" in c["info"]]
    if loads:
        out.append(
            f"\nLoad average (1 min) while the cases ran: {min(loads):.1f} to {max(loads):.1f} "
            f"on {os.cpu_count()} CPUs (above the CPU count, every figure is stretched by waiting)"
        )
    scales = sorted({str(c["info"].get("scale", "?")) for c in _cases(data)})
    machine = data.get("machine_info", {})
    out.append(
        f"\nScale: {', '.join(scales)}; Python {machine.get('python_version', '?')} on "
        f"{machine.get('cpu', {}).get('brand_raw', machine.get('processor', '?'))}; "
        f"{data.get('datetime', '')}"
    )
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("json_file", type=Path, help="written by --benchmark-json=FILE")
    args = parser.parse_args(argv)
    try:
        data = json.loads(args.json_file.read_text())
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.json_file}: {exc}", file=sys.stderr)
        return 2
    print(render(data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
