"""Migrate a seed-format positions.json into events, so a bot keeps its history in the ledger.

The seed's semantics, as its bot wrote the file:
- `position_size` is USD notional at the entry price of what is *left*; each partial exit's
  `size` is USD notional at entry of what left. So the opening qty is
  (position_size + sum of exit sizes) / entry_price.
- A partial exit carries its own `realized_pnl`. A closed position's final PnL is the
  `unrealized_pnl` the seed kept at close; the ledger's realized PnL of the position is the sum
  of both (the seed's session stats counted only the last unrealized PnL).
- Timestamps are naive ISO strings (taken as UTC), numbers are JSON floats (read exactly as
  written, not through binary floats).

`plan_import` is pure: it parses, checks every position against the ledger's rules on its own,
and returns the events in time order with a report. `import_seed` appends them through
`Ledger.transact` in one transaction into a new or empty log, refusing a file imported before.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import msgspec

from ledger.audit_rules import violations
from ledger.commands import DEFAULT_LIMITS, Limits
from ledger.envelope import GENESIS_HASH, Recorded
from ledger.errors import ImportRejected, InvalidValue
from ledger.events import (
    ACCOUNT_STREAM,
    AnyEvent,
    BalanceObserved,
    HistoryImported,
    PartialExitRecorded,
    PositionClosed,
    PositionMarked,
    PositionOpened,
    RulesConfigured,
    stream_of,
)
from ledger.rules import rules_record
from ledger.service import Ledger, Plan
from ledger.values import (
    ZERO,
    Side,
    Source,
    exact,
    non_negative,
    optional_decimal,
    parse_time,
    positive,
    to_decimal,
)
from projections.book import Book
from projections.pnl import price_pnl
from projections.stats import SessionSummary

_DUST = Decimal("1e-18")
_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Any, float_hook=Decimal)


class Unreadable(msgspec.Struct, frozen=True, kw_only=True):
    """A record of the file that was not imported, and why."""

    where: str
    position_id: str | None
    reason: str


class Figure(msgspec.Struct, frozen=True, kw_only=True):
    """One session figure three ways: the file's session_stats, the seed's rule applied to the
    file's own records, and the ledger after the import."""

    name: str
    file: Decimal | None
    records: Decimal
    ledger: Decimal
    consistent: bool | None
    note: str = ""


class ImportReport(msgspec.Struct, kw_only=True):
    file_name: str
    file_sha256: str
    dry_run: bool = False
    open_positions: int
    closed_positions: int
    partial_exits: int
    events: int
    first_seq: int = 0
    last_seq: int = 0
    unreadable: list[Unreadable] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)
    figures: list[Figure] = msgspec.field(default_factory=list)
    self_consistent: bool = True


class ImportPlan(msgspec.Struct, kw_only=True):
    plans: list[Plan]
    report: ImportReport
    summary: SessionSummary
    # the limits the file was read under: recorded in the log with it when not the defaults
    limits: Limits = DEFAULT_LIMITS


class _Bad(Exception):
    """A record that cannot be interpreted; its message is the reason."""


def _why(exc: Exception) -> str:
    """The reason in the file's own terms (a number as written, not as a Decimal repr)."""
    if isinstance(exc, InvalidValue):
        value = exc.value if isinstance(exc.value, str) else str(exc.value)
        return f"invalid {exc.field}={value}: {exc.why}"
    return str(exc)


class _Timed(msgspec.Struct, frozen=True):
    at: datetime
    order: int
    step: int
    event: AnyEvent


class _SeedFigures(msgspec.Struct, kw_only=True):
    """The seed's get_session_summary computed from the file's own position records."""

    closed: int = 0
    wins: int = 0
    losses: int = 0
    realized: Decimal = ZERO
    unrealized: Decimal = ZERO
    active: int = 0


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@exact
def plan_import(
    data: bytes,
    file_name: str,
    *,
    limits: Limits | None = None,
) -> ImportPlan:
    """Parse a seed positions.json into time-ordered events; raises ImportRejected when the
    file as a whole is not one (not JSON, not an object, a position-ledger snapshot).
    Records it cannot interpret are listed in the report, not raised."""
    limits = limits or Limits()
    sha = file_sha256(data)
    try:
        document = _decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ImportRejected(f"{file_name} is not JSON: {exc}") from None
    except RecursionError:  # msgspec's own depth limit, not a crash: the file is no seed file
        raise ImportRejected(f"{file_name} is nested too deeply to be a seed file") from None
    if not isinstance(document, dict):
        raise ImportRejected(f"{file_name} is not a seed positions.json (not a JSON object)")
    if "format_version" in document and "last_seq" in document:
        raise ImportRejected(
            f"{file_name} is a position-ledger snapshot, not a seed file: restore the "
            "database it was written from instead"
        )
    if "open_positions" not in document and "closed_positions" not in document:
        raise ImportRejected(
            f"{file_name} is not a seed positions.json (no open_positions / closed_positions)"
        )
    saved_at = _optional_time(document.get("last_saved"))
    report = ImportReport(
        file_name=file_name,
        file_sha256=sha,
        open_positions=0,
        closed_positions=0,
        partial_exits=0,
        events=0,
    )
    seed = _SeedFigures()
    timed: list[_Timed] = []
    seen: set[str] = set()
    records = _records(document, report)
    for order, (where, raw, closed) in enumerate(records):
        pid = raw.get("position_id") if isinstance(raw, dict) else None
        pid_text = pid if isinstance(pid, str) else None
        try:
            if not isinstance(raw, dict):
                raise _Bad("not a JSON object")
            _seed_rule(seed, raw, closed)
            if pid_text in seen:
                raise _Bad("position_id appears twice in the file")
            events = _position_events(raw, closed, saved_at, limits, report.notes, where)
        except (_Bad, InvalidValue) as exc:
            report.unreadable.append(
                Unreadable(where=where, position_id=pid_text, reason=_why(exc))
            )
            continue
        if pid_text is not None:
            seen.add(pid_text)
        for step, (at, event) in enumerate(events):
            timed.append(_Timed(at, order, step, event))
            if isinstance(event, PartialExitRecorded):
                report.partial_exits += 1
        if closed:
            report.closed_positions += 1
        else:
            report.open_positions += 1
    timed.sort(key=lambda t: (t.at, t.order, t.step))
    planned: list[tuple[AnyEvent, datetime | None]] = [(t.event, t.at) for t in timed]
    stats = document.get("session_stats")
    stats = stats if isinstance(stats, dict) else {}
    balance = _balance_event(stats)
    if balance is not None:
        latest = [moment for moment in (saved_at, timed[-1].at if timed else None) if moment]
        planned.append((balance, max(latest) if latest else None))
    planned.append(
        (
            HistoryImported(
                file_sha256=sha,
                file_name=file_name,
                open_positions=report.open_positions,
                closed_positions=report.closed_positions,
            ),
            None,
        )
    )
    plans = [
        Plan(event, key=f"import:{sha}:{n}", occurred_at=at)
        for n, (event, at) in enumerate(planned)
    ]
    summary = _check_all(plans)
    report.events = len(plans)
    report.figures = _figures(stats, seed, summary, len(report.unreadable))
    report.self_consistent = all(f.consistent is not False for f in report.figures)
    return ImportPlan(plans=plans, report=report, summary=summary, limits=limits)


def refusal(book: Book, sha: str) -> str | None:
    """Why this log cannot take the file with this sha256, or None when it can."""
    if sha in book.imported_files:
        return (
            f"{book.imported_files[sha]} (sha256 {sha[:12]}...) was already imported into this log"
        )
    if book.last_seq != 0:
        return f"the log already holds {book.last_seq} events: import into a new or empty log"
    return None


async def import_seed(ledger: Ledger, plan: ImportPlan) -> ImportReport:
    """Append a planned import to an open Ledger's new or empty log, in one transaction.

    Raises ImportRejected when this file was imported before or the log is not empty (checked
    inside the write transaction, so two concurrent imports cannot both land).
    """
    report = plan.report

    def refuse_or_plan(book: Book) -> list[Plan]:
        why = refusal(book, report.file_sha256)
        if why is not None:
            raise ImportRejected(why)
        return [Plan(event) for event in rules_record(book, plan.limits)] + plan.plans

    records = await ledger.transact(refuse_or_plan)
    records = [r for r in records if not isinstance(r.event, RulesConfigured)]
    report.first_seq = records[0].seq
    report.last_seq = records[-1].seq
    return report


# -- parsing ---------------------------------------------------------------------------------


def _records(document: Mapping[str, Any], report: ImportReport) -> list[tuple[str, Any, bool]]:
    records: list[tuple[str, Any, bool]] = []
    open_part = document.get("open_positions", {})
    if isinstance(open_part, dict):
        for key, raw in open_part.items():
            if isinstance(raw, dict) and "position_id" not in raw:
                raw = {**raw, "position_id": key}
            records.append((f"open_positions[{key!r}]", raw, False))
    elif isinstance(open_part, list):
        records.extend((f"open_positions[{i}]", raw, False) for i, raw in enumerate(open_part))
    else:
        report.unreadable.append(
            Unreadable(where="open_positions", position_id=None, reason="not an object or list")
        )
    closed_part = document.get("closed_positions", [])
    if isinstance(closed_part, list):
        records.extend((f"closed_positions[{i}]", raw, True) for i, raw in enumerate(closed_part))
    elif isinstance(closed_part, dict):
        records.extend((f"closed_positions[{k!r}]", raw, True) for k, raw in closed_part.items())
    else:
        report.unreadable.append(
            Unreadable(where="closed_positions", position_id=None, reason="not a list")
        )
    return records


def _required(raw: Mapping[str, Any], name: str) -> Any:
    value = raw.get(name)
    if value is None:
        raise _Bad(f"missing {name}")
    return value


def _time(raw: Mapping[str, Any], name: str) -> datetime:
    value = _required(raw, name)
    if not isinstance(value, str):
        raise _Bad(f"{name} is not an ISO timestamp: {value!r}")
    return parse_time(value)


def _optional_time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_time(value)
    except InvalidValue:
        return None


def _leverage(raw: Mapping[str, Any], limits: Limits) -> int:
    value = _required(raw, "leverage")
    number = to_decimal("leverage", value)
    if number != number.to_integral_value():
        raise _Bad(f"leverage {value!r} is not a whole number")
    leverage = int(number)
    if not limits.min_leverage <= leverage <= limits.max_leverage:
        raise _Bad(f"leverage {leverage} outside [{limits.min_leverage}, {limits.max_leverage}]")
    return leverage


def _optional_field(
    raw: Mapping[str, Any], name: str, notes: list[str], where: str
) -> Decimal | None:
    try:
        return optional_decimal(name, raw.get(name))
    except InvalidValue as exc:
        notes.append(f"{where}: {name} dropped ({exc.why})")
        return None


def _text(raw: Mapping[str, Any], name: str) -> str:
    value = raw.get(name)
    return "" if value is None else str(value)


def _position_events(
    raw: Mapping[str, Any],
    closed: bool,
    saved_at: datetime | None,
    limits: Limits,
    notes: list[str],
    where: str,
) -> list[tuple[datetime, AnyEvent]]:
    """One position's events in its own time order, checked against the rules on their own."""
    needed = ["position_id", "symbol", "side", "entry_price", "position_size", "leverage"]
    needed += ["open_time", "close_time", "current_price"] if closed else ["open_time"]
    missing = [name for name in needed if raw.get(name) is None]
    if missing:
        raise _Bad(f"missing {', '.join(missing)}")
    pid = _required(raw, "position_id")
    if not isinstance(pid, str) or not pid.strip():
        raise _Bad(f"position_id {pid!r} is not a non-empty string")
    if pid == ACCOUNT_STREAM:
        raise _Bad(f"position_id {pid!r} is reserved for the account's own events")
    symbol = _required(raw, "symbol")
    if not isinstance(symbol, str) or not symbol.strip():
        raise _Bad(f"symbol {symbol!r} is not a non-empty string")
    side = Side.parse(_required(raw, "side"))
    entry = positive("entry_price", _required(raw, "entry_price"))
    left_notional = non_negative("position_size", _required(raw, "position_size"))
    leverage = _leverage(raw, limits)
    opened_at = _time(raw, "open_time")
    exits_raw = raw.get("partial_exits") or []
    if not isinstance(exits_raw, list):
        raise _Bad("partial_exits is not a list")

    exits: list[tuple[datetime, Decimal, Decimal, Decimal, str]] = []
    for i, item in enumerate(exits_raw):
        if not isinstance(item, dict):
            raise _Bad(f"partial_exits[{i}] is not an object")
        try:
            at = _time(item, "timestamp")
            size = positive("size", _required(item, "size"))
            price = positive("price", _required(item, "price"))
            qty = size / entry
            pnl_raw = item.get("realized_pnl")
            if pnl_raw is None:
                pnl = price_pnl(side, qty, entry, price)
                notes.append(
                    f"{where} ({pid}): partial_exits[{i}] has no realized_pnl; computed {pnl}"
                )
            else:
                pnl = to_decimal("realized_pnl", pnl_raw)
        except (_Bad, InvalidValue) as exc:
            raise _Bad(f"partial_exits[{i}]: {_why(exc)}") from None
        exits.append((at, qty, price, pnl, _text(item, "reason")))

    initial_notional = left_notional + sum((e[1] * entry for e in exits), ZERO)
    if initial_notional <= 0:
        raise _Bad("position_size is 0 and there are no partial exits: nothing was ever held")
    initial_qty = left_notional / entry + sum((e[1] for e in exits), ZERO)
    margin = _optional_field(raw, "real_initial_margin", notes, where)
    if margin is not None and margin <= 0:
        margin = None
    margin_at_open = margin if closed or not exits else None
    events: list[tuple[datetime, AnyEvent]] = [
        (
            opened_at,
            PositionOpened(
                position_id=pid,
                symbol=symbol,
                side=side,
                qty=initial_qty,
                entry_price=entry,
                leverage=leverage,
                source=Source.IMPORT,
                real_initial_margin=margin_at_open,
                confidence=_optional_field(raw, "confidence", notes, where),
                open_reason=_text(raw, "open_reason"),
                atr=_optional_field(raw, "atr", notes, where),
                adx=_optional_field(raw, "adx", notes, where),
                volatility=_optional_field(raw, "volatility", notes, where),
            ),
        )
    ]
    last = opened_at
    for i, (at, qty, price, pnl, reason) in enumerate(exits):
        if at < last:
            notes.append(
                f"{where} ({pid}): partial_exits[{i}] timestamp {at:%Y-%m-%dT%H:%M:%S} is "
                "before the event it follows; recorded at that event's time"
            )
            at = last
        last = at
        events.append(
            (
                at,
                PartialExitRecorded(
                    position_id=pid,
                    qty=qty,
                    price=price,
                    realized_pnl=pnl,
                    reason=reason,
                    source=Source.IMPORT,
                ),
            )
        )
    current = optional_decimal("current_price", raw.get("current_price"))
    if closed:
        events.append(_close_event(raw, pid, side, entry, current, last, notes, where))
    elif left_notional == 0:
        price = exits[-1][2]
        notes.append(f"{where} ({pid}): open with position_size 0; closed after its last exit")
        events.append(
            (
                last,
                PositionClosed(
                    position_id=pid,
                    qty=ZERO,
                    price=price,
                    realized_pnl=ZERO,
                    reason="fully exited (import)",
                    source=Source.IMPORT,
                ),
            )
        )
    elif current is not None and current > 0:
        unrealized = optional_decimal("unrealized_pnl", raw.get("unrealized_pnl"))
        marked_at = max(saved_at or last, last)
        events.append(
            (
                marked_at,
                PositionMarked(
                    position_id=pid,
                    mark_price=current,
                    unrealized_pnl=unrealized,
                    initial_margin=None if margin_at_open is not None else margin,
                    source=Source.IMPORT,
                ),
            )
        )
    return _check_position(events)


def _close_event(
    raw: Mapping[str, Any],
    pid: str,
    side: Side,
    entry: Decimal,
    current: Decimal | None,
    last: datetime,
    notes: list[str],
    where: str,
) -> tuple[datetime, AnyEvent]:
    if current is None or current <= 0:
        raise _Bad("closed without a current_price (the exit price)")
    closed_at = _time(raw, "close_time")
    if closed_at < last:
        notes.append(
            f"{where} ({pid}): close_time is before the event it follows; "
            "recorded at that event's time"
        )
        closed_at = last
    left_qty = to_decimal("position_size", raw.get("position_size")) / entry
    pnl_raw = raw.get("unrealized_pnl")
    estimated = pnl_raw is None
    if estimated:
        pnl = price_pnl(side, left_qty, entry, current)
        notes.append(f"{where} ({pid}): closed without unrealized_pnl; computed {pnl}")
    else:
        pnl = to_decimal("unrealized_pnl", pnl_raw)
    return (
        closed_at,
        PositionClosed(
            position_id=pid,
            qty=left_qty,  # set to exactly what the fold leaves in _check_position
            price=current,
            realized_pnl=pnl,
            reason=_text(raw, "close_reason"),
            source=Source.IMPORT,
            pnl_estimated=estimated,
        ),
    )


def _record(seq: int, at: datetime, event: AnyEvent) -> Recorded:
    return Recorded(
        seq=seq,
        stream=stream_of(event),
        version=0,
        event_id="",
        occurred_at=at,
        recorded_at=at,
        schema_version=0,
        event=event,
        hash=GENESIS_HASH,
    )


def _check_position(events: list[tuple[datetime, AnyEvent]]) -> list[tuple[datetime, AnyEvent]]:
    """Fold one position's events alone and hold each to the rules; a close takes exactly the
    qty the fold leaves (no dust from notional-to-qty division)."""
    book = Book()
    checked: list[tuple[datetime, AnyEvent]] = []
    for n, (at, event) in enumerate(events, start=1):
        pid = getattr(event, "position_id", "")
        held = book.open.get(pid)
        if held is not None and isinstance(event, PartialExitRecorded) and event.qty > held.qty:
            if event.qty - held.qty > held.qty * _DUST:
                raise _Bad(f"partial exit of qty {event.qty} exceeds the {held.qty} left")
            event = msgspec.structs.replace(event, qty=held.qty)
        if held is not None and isinstance(event, PositionClosed):
            event = msgspec.structs.replace(event, qty=max(held.qty, ZERO))
        record = _record(n, at, event)
        why = violations(book, record, Limits(min_leverage=1, max_leverage=10**9))
        if why is not None:
            raise _Bad(why)
        book.apply(record)
        checked.append((at, event))
    return checked


def _check_all(plans: Sequence[Plan]) -> SessionSummary:
    """Fold the whole import in its final order, as the log will; a rule broken here is a bug."""
    book = Book()
    when = datetime(1970, 1, 1, tzinfo=UTC)
    for n, plan in enumerate(plans, start=1):
        record = _record(n, plan.occurred_at or when, plan.event)
        why = violations(book, record, Limits(min_leverage=1, max_leverage=10**9))
        if why is not None:
            raise ImportRejected(f"the planned import breaks a rule at event {n}: {why}")
        book.apply(record)
    return book.summary()


def _balance_event(stats: Mapping[str, Any]) -> BalanceObserved | None:
    try:
        total = optional_decimal("balance", stats.get("balance"))
        available = optional_decimal("available_balance", stats.get("available_balance"))
    except InvalidValue:
        return None
    if total is None or total <= 0:
        return None
    if available is None or available < 0:
        available = total
    return BalanceObserved(total=total, available=available, source=Source.IMPORT)


# -- the session figures -----------------------------------------------------------------------


def _seed_rule(seed: _SeedFigures, raw: Mapping[str, Any], closed: bool) -> None:
    """What the seed's get_session_summary made of this record (its last unrealized PnL)."""
    try:
        pnl = to_decimal("unrealized_pnl", raw.get("unrealized_pnl", 0))
    except InvalidValue:
        pnl = ZERO
    if closed:
        seed.closed += 1
        seed.realized += pnl
        if pnl > 0:
            seed.wins += 1
        else:
            seed.losses += 1
    else:
        seed.active += 1
        seed.unrealized += pnl


_TOLERANCE = {"money": Decimal("0.01"), "rate": Decimal("0.001"), "count": ZERO}


def _file_value(stats: Mapping[str, Any], *names: str) -> Decimal | None:
    for name in names:
        if name in stats:
            try:
                return to_decimal(name, stats[name])
            except InvalidValue:
                return None
    return None


def _figures(
    stats: Mapping[str, Any], seed: _SeedFigures, summary: SessionSummary, skipped: int
) -> list[Figure]:
    rate = Decimal(seed.wins) / seed.closed if seed.closed else ZERO
    rows: list[tuple[str, tuple[str, ...], Decimal, Decimal, str]] = [
        (
            "closed_trades",
            ("closed_trades", "total_trades"),
            Decimal(seed.closed),
            Decimal(summary.closed_trades),
            "count",
        ),
        ("wins", ("wins",), Decimal(seed.wins), Decimal(summary.wins), "count"),
        ("losses", ("losses",), Decimal(seed.losses), Decimal(summary.losses), "count"),
        ("win_rate", ("win_rate",), rate, summary.win_rate, "rate"),
        (
            "total_realized_pnl",
            ("total_realized_pnl",),
            seed.realized,
            summary.total_realized_pnl,
            "money",
        ),
        ("unrealized_pnl", ("unrealized_pnl",), seed.unrealized, summary.unrealized_pnl, "money"),
        (
            "total_pnl",
            ("total_pnl",),
            seed.realized + seed.unrealized,
            summary.total_pnl,
            "money",
        ),
        (
            "active_positions",
            ("active_positions",),
            Decimal(seed.active),
            Decimal(summary.active_positions),
            "count",
        ),
    ]
    figures: list[Figure] = []
    for name, keys, from_records, ledger_value, kind in rows:
        in_file = _file_value(stats, *keys)
        tolerance = _TOLERANCE[kind]
        consistent = None if in_file is None else abs(in_file - from_records) <= tolerance
        notes: list[str] = []
        if consistent is False:
            notes.append(
                f"file not self-consistent: session_stats says {in_file}, "
                f"its own records give {from_records}"
            )
        if abs(ledger_value - from_records) > tolerance:
            notes.append(_why_ledger_differs(name, skipped))
        figures.append(
            Figure(
                name=name,
                file=in_file,
                records=from_records,
                ledger=ledger_value,
                consistent=consistent,
                note="; ".join(notes),
            )
        )
    return figures


def _why_ledger_differs(name: str, skipped: int) -> str:
    reasons: list[str] = []
    if skipped:
        reasons.append(f"{skipped} record(s) of the file were not imported")
    if name in {"wins", "losses", "win_rate"}:
        reasons.append("the ledger counts a win on the whole realized PnL, partial exits included")
    elif name in {"total_realized_pnl", "total_pnl"}:
        reasons.append(
            "the ledger includes partial exits' PnL (the seed kept only the last unrealized)"
        )
    return "; ".join(reasons) or "the ledger differs from the seed's rule"
