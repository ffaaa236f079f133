"""How long one exchange sync takes against the emulator, through unmodified ccxt.

Questions: one steady sync (every mark moved) with 1 / 10 / 100 open positions, and the
worst-case first sync after a 10-day outage with 5,000 closed-PnL rows (plus funding) to walk,
each with ccxt's rate limiter on (as against the real Bybit) and off. Requests are counted at the
emulator; the rate limiter's share is the difference between the two columns.

    python -m benchmarks.bench_sync            # prints the README table
The pytest functions run the same code once on tiny data (scripts/test's smoke pass).
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import anyio

from ledger.exchange.ccxt_client import ExchangeGateway
from ledger.exchange.emulator import INSTRUMENTS, BybitEmulator, Instrument
from ledger.exchange.emulator.client import make_ccxt_client
from ledger.exchange.sync import ExchangeSync
from ledger.service import Ledger
from ledger.settings import Settings
from ledger.values import from_millis

START_MS = 1_767_225_600_000


@dataclass(frozen=True)
class Figure:
    case: str
    rate_limit: bool
    seconds: float
    requests: int
    events: int


def _instruments(n: int) -> tuple[Instrument, ...]:
    template = next(i for i in INSTRUMENTS if i.base == "SOL")
    extra = [
        dataclasses.replace(template, symbol=f"X{k:03d}USDT", base=f"X{k:03d}")
        for k in range(max(0, n - len(INSTRUMENTS)))
    ]
    return (*INSTRUMENTS, *extra)


class _Clock:
    def __init__(self) -> None:
        self.ms = START_MS

    def __call__(self) -> int:
        return self.ms


async def steady_sync(positions: int, rate_limit: bool) -> Figure:
    """One sync after every open position's mark moved (the sync's everyday work)."""
    clock = _Clock()
    instruments = _instruments(positions)
    with tempfile.TemporaryDirectory() as folder:
        async with BybitEmulator(clock=clock, instruments=instruments) as ex:
            client = make_ccxt_client(ex)
            client.enableRateLimit = rate_limit
            gateway = ExchangeGateway(client, timeout=60.0, clock_ms=clock)
            settings = Settings()
            try:
                async with Ledger(Path(folder) / "l.db", settings=settings) as ledger:
                    sync = ExchangeSync(settings, clock=lambda: from_millis(clock.ms))
                    chosen = instruments[:positions]
                    for inst in chosen:
                        ex.open_position(inst.symbol, "buy", inst.min_qty * 10, inst.default_mark)
                    await sync.sync(ledger, gateway)  # adoption, untimed
                    clock.ms += 60_000
                    for inst in chosen:
                        ex.set_mark_price(inst.symbol, inst.default_mark * Decimal("1.01"))
                    before = len(ex.requests)
                    started = time.perf_counter()
                    outcome = await sync.sync(ledger, gateway)
                    seconds = time.perf_counter() - started
                    requests = len(ex.requests) - before
            finally:
                await gateway.close()
    return Figure(
        f"steady sync, {positions} open", rate_limit, seconds, requests, len(outcome.appended)
    )


async def outage_sync(rows: int, rate_limit: bool) -> Figure:
    """The first sync after 10 days without one: `rows` reduces by hand and 30 fundings."""
    clock = _Clock()
    with tempfile.TemporaryDirectory() as folder:
        async with BybitEmulator(clock=clock) as ex:
            client = make_ccxt_client(ex)
            client.enableRateLimit = rate_limit
            gateway = ExchangeGateway(client, timeout=60.0, clock_ms=clock)
            settings = Settings()
            try:
                async with Ledger(Path(folder) / "l.db", settings=settings) as ledger:
                    sync = ExchangeSync(settings, clock=lambda: from_millis(clock.ms))
                    step = Decimal("0.001")
                    ex.open_position("BTCUSDT", "buy", step * (rows + 10), "60000")
                    await sync.sync(ledger, gateway)
                    span = 10 * 24 * 3600 * 1000
                    for k in range(rows):
                        clock.ms += span // (rows + 30)
                        ex.reduce_position("BTCUSDT", "buy", step, 60000 + k % 100)
                        if k % max(1, rows // 30) == 0:
                            ex.pay_funding("BTCUSDT", "buy", "-0.01")
                    clock.ms += 60_000
                    before = len(ex.requests)
                    started = time.perf_counter()
                    outcome = await sync.sync(ledger, gateway)
                    seconds = time.perf_counter() - started
                    requests = len(ex.requests) - before
            finally:
                await gateway.close()
    return Figure(
        f"after a 10-day outage, {rows:,} rows",
        rate_limit,
        seconds,
        requests,
        len(outcome.appended),
    )


def test_steady_sync_smoke() -> None:
    figure = anyio.run(steady_sync, 1, False)
    assert figure.requests >= 4 and figure.events >= 1


def test_outage_sync_smoke() -> None:
    figure = anyio.run(outage_sync, 20, False)
    assert figure.events >= 20  # every reduce booked


def main() -> None:
    figures: list[Figure] = []
    for limited in (False, True):
        for n in (1, 10, 100):
            figures.append(anyio.run(steady_sync, n, limited))
        figures.append(anyio.run(outage_sync, 5000, limited))
    print("| sync | rate limiter | seconds | requests | events appended |")
    print("|---|---|---|---|---|")
    for f in figures:
        print(
            f"| {f.case} | {'on' if f.rate_limit else 'off'} | {f.seconds:.3f} | "
            f"{f.requests} | {f.events:,} |"
        )
    print(f"(python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
