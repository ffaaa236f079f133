"""The equity chart: realized equity over time, drawdown shaded, closes marked, as a PNG.

matplotlib is an optional extra (`pip install 'position-ledger[plot]'`); `MatplotlibMissing`
says so when it is not installed. The Agg backend draws without a display.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from ledger.audit import EquityCurve
from ledger.errors import LedgerError
from ledger.values import to_micros

INSTALL_HINT = "pip install 'position-ledger[plot]'"


class MatplotlibMissing(LedgerError):
    """The plot extra is not installed."""

    def __init__(self) -> None:
        super().__init__(f"matplotlib is not installed; install the plot extra: {INSTALL_HINT}")


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
        times = [_days(p.at) for p in curve.points]
        equity = [float(p.equity) for p in curve.points]
        peak = [float(p.peak) for p in curve.points]
        if times:
            # start the line at zero just before the first realized cash flow
            times = [times[0], *times]
            equity = [0.0, *equity]
            peak = [0.0, *peak]
            axes.step(times, equity, where="post", color="#1f77b4", linewidth=1.6, label="equity")
            axes.fill_between(
                times,
                equity,
                peak,
                step="post",
                where=[e < p for e, p in zip(equity, peak, strict=True)],
                color="#d62728",
                alpha=0.25,
                label="drawdown",
            )
        wins = [c for c in curve.closes if c.pnl > 0]
        losses = [c for c in curve.closes if c.pnl <= 0]
        if wins:
            axes.scatter(
                [_days(c.at) for c in wins],
                [float(c.equity) for c in wins],
                marker="^",
                color="#2ca02c",
                zorder=3,
                label=f"winning close ({len(wins)})",
            )
        if losses:
            axes.scatter(
                [_days(c.at) for c in losses],
                [float(c.equity) for c in losses],
                marker="v",
                color="#d62728",
                zorder=3,
                label=f"losing close ({len(losses)})",
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
