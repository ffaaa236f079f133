"""Print a pytest-benchmark JSON file as a Markdown table, each case beside its baselines.

    scripts/bench --benchmark-json=bench.json          # BENCH_SCALE=full for the 1M-event logs
    python -m benchmarks.report bench.json

Scales (BENCH_SCALE): smoke runs each benchmark once on tiny data (scripts/test, with
--benchmark-disable, a few seconds); default (scripts/bench) folds a 100k-event log and takes
about a minute; full folds and starts up a 1M-event log: rebuild + startup alone take ~5 min
on 2 vCPUs (the 1M rebuild is ~10-20 s a round), the whole suite ~6 min.

Columns: the group, the case, its median time per round, its rate (events, commands or
start-ups per second), the case it is compared with, the time ratio (this case's median over
that one's: below 1 is faster) and, where the issue sets one, the target and whether it is met.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

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
            ratio = case["median"] / other["median"]
            limit = compare.get("max_ratio")
            met = "" if limit is None else ("yes" if ratio <= limit else "**no**")
            shown = f"{ratio:.3f}x" if ratio < 0.1 else f"{ratio:.2f}x"
            if ratio < 1:
                shown += f" ({1 / ratio:.1f}x faster)"
            yield [*cells, compare["to"], shown, compare.get("target", ""), met]


def _table(header: Sequence[str], body: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines.extend("| " + " | ".join(cells) + " |" for cells in body)
    return "\n".join(lines)


def render(data: dict[str, Any]) -> str:
    """The Markdown report of one pytest-benchmark JSON document."""
    header = ["group", "case", "median", "rate", "vs", "time ratio", "target", "met"]
    out = [_table(header, rows(data))]
    notes = []
    for case in _cases(data):
        memory = {k: case["info"][k] for k in _MEMORY_KEYS if k in case["info"]}
        if memory:
            shown = ", ".join(f"{k} = {v}" for k, v in memory.items())
            notes.append(f"- {case['group']} / {case['case']}: {shown}")
    if notes:
        out.append("\nMemory and sizes (MB):\n" + "\n".join(notes))
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
