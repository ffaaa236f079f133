"""The equity chart: realized equity over time, drawdown shaded, closes marked, as a PNG.

matplotlib is an optional extra (`pip install 'position-ledger[plot]'`); `MatplotlibMissing`
says so when it is not installed. The Agg backend draws without a display.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ledger.audit.equity import EquityCurve, EquityPoint
from ledger.errors import LedgerError
from ledger.values import to_micros

INSTALL_HINT = "pip install 'position-ledger[plot]'"


class MatplotlibMissing(LedgerError):
    """The plot extra is not installed."""

    def __init__(self) -> None:
        super().__init__(f"matplotlib is not installed; install the plot extra: {INSTALL_HINT}")


MAX_POINTS = 4000
MAX_MARKERS = 1500
T = TypeVar("T")


def thin(points: Sequence[EquityPoint], limit: int = MAX_POINTS) -> list[EquityPoint]:
    """At most about `limit` points with the same shape: each bucket keeps its first and last
    point, its lowest and highest equity and its deepest drawdown, so no trough disappears."""
    if len(points) <= limit:
        return list(points)
    size = math.ceil(len(points) / (limit / 5))
    kept: list[EquityPoint] = []
    for start in range(0, len(points), size):
        bucket = points[start : start + size]
        marks = {
            0,
            len(bucket) - 1,
            min(range(len(bucket)), key=lambda i: bucket[i].equity),
            max(range(len(bucket)), key=lambda i: bucket[i].equity),
            max(range(len(bucket)), key=lambda i: bucket[i].peak - bucket[i].equity),
        }
        kept.extend(bucket[i] for i in sorted(marks))
    return kept


def _every_nth(items: Sequence[T], limit: int = MAX_MARKERS) -> Sequence[T]:
    if len(items) <= limit:
        return items
    return items[:: math.ceil(len(items) / limit)]


def _label(what: str, total: int, shown: int) -> str:
    return f"{what} ({total})" if shown == total else f"{what} ({total}, {shown} marked)"


def _days(moment: datetime) -> float:
    """matplotlib's date number (days since its 1970 epoch) of an aware UTC datetime."""
    return to_micros(moment) / 86_400_000_000


def require_matplotlib() -> None:
    """Raises MatplotlibMissing unless matplotlib can be imported."""
    try:
        import matplotlib
    except ImportError:
        raise MatplotlibMissing() from None
    matplotlib.use("Agg")


def render_equity(
    curve: EquityCurve,
    path: Path,
    *,
    title: str = "Realized equity",
    width_px: int = 1200,
    height_px: int = 600,
) -> Path:
    """Draw the curve to a PNG at path; raises MatplotlibMissing, OSError."""
    require_matplotlib()
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dpi = 100
    figure, axes = plt.subplots(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    try:
        shown = thin(curve.points)
        times = [_days(p.at) for p in shown]
        equity = [float(p.equity) for p in shown]
        peak = [float(p.peak) for p in shown]
        if times:
            # from zero before the first realized cash flow, flat after the last to the end
            times = [times[0], *times]
            equity = [0.0, *equity]
            peak = [0.0, *peak]
            if curve.end is not None and _days(curve.end) > times[-1]:
                times.append(_days(curve.end))
                equity.append(equity[-1])
                peak.append(peak[-1])
            axes.step(times, equity, where="post", color="#1f77b4", linewidth=1.6, label="equity")
            axes.fill_between(
                times, equity, peak, step="post", color="#d62728", alpha=0.25, label="drawdown"
            )
        all_wins = [c for c in curve.closes if c.pnl > 0]
        all_losses = [c for c in curve.closes if c.pnl <= 0]
        wins, losses = _every_nth(all_wins), _every_nth(all_losses)
        if wins:
            axes.scatter(
                [_days(c.at) for c in wins],
                [float(c.equity) for c in wins],
                marker="^",
                color="#2ca02c",
                zorder=3,
                label=_label("winning close", len(all_wins), len(wins)),
            )
        if losses:
            axes.scatter(
                [_days(c.at) for c in losses],
                [float(c.equity) for c in losses],
                marker="v",
                color="#d62728",
                zorder=3,
                label=_label("losing close", len(all_losses), len(losses)),
            )
        if not times:
            axes.text(0.5, 0.5, "no realized PnL yet", ha="center", va="center")
        axes.axhline(0, color="#888888", linewidth=0.8)
        axes.set_title(title)
        axes.set_xlabel("time (UTC)")
        axes.set_ylabel("realized PnL (USD)")
        axes.grid(True, alpha=0.3)
        if times or curve.closes:
            axes.legend(loc="best")
            axes.xaxis_date(tz="UTC")
            locator = mdates.AutoDateLocator()  # type: ignore[no-untyped-call]
            axes.xaxis.set_major_locator(locator)
            formatter = mdates.ConciseDateFormatter(locator)  # type: ignore[no-untyped-call]
            axes.xaxis.set_major_formatter(formatter)
        figure.tight_layout()
        figure.savefig(path, format="png", dpi=dpi)
    finally:
        plt.close(figure)
    return path
