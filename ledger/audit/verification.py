"""The `verify` command's full check: chain, stream versions, rules in order, positions.json."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec

from ledger.audit.checkpoints import Checkpoints, Mark
from ledger.audit.reading import PAGE_SIZE, Progress
from ledger.audit_rules import violations
from ledger.commands import Limits
from ledger.errors import IntegrityError, SnapshotError
from ledger.snapshot_file import read_file
from ledger.store.base import ChainVerifier, EventStore
from projections.book import Book
from projections.snapshot import decode_snapshot, encode_snapshot


class Problem(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    kind: str  # "chain", "rules" or "snapshot"
    what: str


class SnapshotCheck(msgspec.Struct, kw_only=True):
    path: str
    status: str  # "matches", "missing", "mismatch", "not checked", "unreadable"
    last_seq: int | None = None
    detail: str = ""


class VerifyReport(msgspec.Struct, kw_only=True):
    ok: bool
    events: int
    streams: int
    last_seq: int
    last_hash: str
    rules_checked: int
    rule_violations: int
    problems: list[Problem]
    snapshot: SnapshotCheck
    # where this run was recorded as the verified point ("" if not: a failed run, no sidecar)
    recorded_in: str = ""
    checkpoints_saved: list[int] = msgspec.field(default_factory=list)


_MAX_RULE_PROBLEMS = 20
_tree_decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Any, float_hook=Decimal)
# what a snapshot may differ in from a fresh encoding of the same book
_UNCOMPARED = ("last_saved", "content_sha256")


def _snapshot_tree(data: bytes) -> dict[str, Any]:
    """positions.json as plain JSON (numbers as exact Decimals), closed positions keyed by id;
    raises msgspec.DecodeError, SnapshotError."""
    tree = _tree_decoder.decode(data)
    if not isinstance(tree, dict):
        raise SnapshotError("positions.json is not a JSON object")
    for name in _UNCOMPARED:
        tree.pop(name, None)
    closed = tree.get("closed_positions")
    if isinstance(closed, list):
        tree["closed_positions"] = {
            str(p.get("position_id")) if isinstance(p, dict) else str(i): p
            for i, p in enumerate(closed)
        }
    return tree


def first_difference(found: object, expected: object, path: str = "") -> str | None:
    """Where two JSON trees differ first, as 'path: file X != log Y', or None."""
    if isinstance(found, dict) and isinstance(expected, dict):
        for key in expected:
            if key not in found:
                return f"{path}{key}: missing from the file"
            diff = first_difference(found[key], expected[key], f"{path}{key}.")
            if diff is not None:
                return diff
        for key in found:
            if key not in expected:
                return f"{path}{key}: in the file but not in the log"
        return None
    if isinstance(found, list) and isinstance(expected, list):
        if len(found) != len(expected):
            return f"{path.rstrip('.')}: file has {len(found)} items, log {len(expected)}"
        for i, (a, b) in enumerate(zip(found, expected, strict=True)):
            diff = first_difference(a, b, f"{path}{i}.")
            if diff is not None:
                return diff
        return None
    same = (
        found == expected
        and isinstance(found, bool) == isinstance(expected, bool)
        and (found is None) == (expected is None)
    )
    if same:
        return None
    return f"{path.rstrip('.')}: file {found!r} != log {expected!r}"


class _SnapshotUnderTest:
    """positions.json read leniently: where it claims to be, and the raw bytes to compare."""

    def __init__(self, path: Path, raw: bytes) -> None:
        self.path = path
        self.raw = raw
        self.seq: int | None = None
        self.hash = ""
        self.problem = ""
        try:
            tree = _snapshot_tree(raw)
        except (msgspec.DecodeError, SnapshotError) as exc:
            self.problem = f"positions.json is not a ledger snapshot: {exc}"
            return
        seq, digest = tree.get("last_seq"), tree.get("last_hash")
        if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(digest, str):
            self.problem = "positions.json has no last_seq / last_hash: not a ledger snapshot"
            return
        self.seq = seq
        self.hash = digest
        self.tree = tree

    def compare(self, book: Book) -> str | None:
        """What differs from the book folded to this snapshot's seq, or None."""
        if book.last_hash != self.hash:
            return f"its last_hash {self.hash[:12]}... is not the log's hash at seq {self.seq}"
        expected = _snapshot_tree(encode_snapshot(book, datetime(1970, 1, 1)))
        diff = first_difference(self.tree, expected)
        if diff is not None:
            return diff
        try:
            decode_snapshot(self.raw)  # the format's own checks: version, content checksum
        except SnapshotError as exc:
            return str(exc)
        return None


async def verify_log(
    store: EventStore,
    snapshot_path: Path,
    *,
    limits: Limits | None = None,
    progress: Progress | None = None,
    checkpoints: Checkpoints | None = None,
) -> VerifyReport:
    """Chain, seq, stream versions, decoding, the ledger's rules in order, positions.json.

    The chain part stops at the first bad row (what follows cannot be trusted); rule
    violations are all counted, the first few listed. positions.json is compared, field by
    field, with the fold at its own last_seq. With checkpoints, the fold writes the checkpoint
    at every K-th seq afresh (one kept there is replaced, figures and all: a checkpoint edited
    to keep its seq and hash does not outlive a verify), and when the chain is whole its head
    is recorded as the verified point the read commands check the chain from.
    """
    limits = limits or Limits()
    verifier = ChainVerifier()
    book = Book()
    problems: list[Problem] = []
    violations_count = 0
    checked = 0
    snap = SnapshotCheck(path=str(snapshot_path), status="missing")
    try:
        raw = await anyio.to_thread.run_sync(read_file, snapshot_path)
    except OSError as exc:  # an auditor may read the log and not positions.json, a cache
        raw = None
        snap.status = "unreadable"
        snap.detail = exc.strerror or str(exc)
    under_test = None if raw is None else _SnapshotUnderTest(snapshot_path, raw)
    if under_test is not None:
        snap.status = "not checked"
        snap.last_seq = under_test.seq
        if under_test.problem:
            snap.status = "mismatch"
            snap.detail = under_test.problem
            problems.append(Problem(seq=0, kind="snapshot", what=under_test.problem))
            under_test = None
    snap_seq = under_test.seq if under_test is not None else None

    def check_snapshot() -> None:
        assert under_test is not None
        why = under_test.compare(book)
        if why is None:
            snap.status = "matches"
            return
        snap.status = "mismatch"
        snap.detail = why
        what = f"positions.json at seq {under_test.seq}: {why}"
        problems.append(Problem(seq=under_test.seq or 0, kind="snapshot", what=what))

    saved: list[int] = []
    max_occurred_us = 0

    chain_ok = True
    if snap_seq == 0:
        check_snapshot()
    try:
        async for rows in store.iterate_rows(page_size=PAGE_SIZE):
            for row in rows:
                record = verifier.feed(row)
                max_occurred_us = max(max_occurred_us, row.occurred_us)
                why = violations(book, record, limits)
                checked += 1
                if why is not None:
                    violations_count += 1
                    if violations_count <= _MAX_RULE_PROBLEMS:
                        problems.append(Problem(seq=record.seq, kind="rules", what=why))
                book.apply(record)
                if record.seq == snap_seq:
                    check_snapshot()
                if (
                    checkpoints is not None
                    and checkpoints.due(record.seq)
                    and await anyio.to_thread.run_sync(checkpoints.save, book, max_occurred_us)
                ):
                    saved.append(record.seq)
            if progress is not None:
                progress(len(rows))
    except IntegrityError as exc:
        chain_ok = False
        problems.insert(0, Problem(seq=exc.seq, kind="chain", what=exc.why))
    report = verifier.report()
    if chain_ok and snap_seq is not None and snap_seq > report.last_seq:
        snap.status = "mismatch"
        snap.detail = (
            f"positions.json is at seq {snap_seq} but the log ends at seq {report.last_seq}"
        )
        problems.append(
            Problem(
                seq=report.last_seq + 1,
                kind="snapshot",
                what=f"{snap.detail}: events after seq {report.last_seq} are missing from the log",
            )
        )
    problems.sort(key=lambda p: (p.kind != "chain", p.seq))
    recorded_in = ""
    # the point recorded is the chain's: every row up to it is whole, in place and decodes.
    # Rule violations and a stale positions.json are reported, but leave the chain as it is.
    if chain_ok and report.last_seq and checkpoints is not None and checkpoints.path is not None:
        mark = Mark(report.last_seq, report.last_hash)
        if await anyio.to_thread.run_sync(checkpoints.record_verified, mark, datetime.now(UTC)):
            recorded_in = str(checkpoints.path)
    return VerifyReport(
        ok=not problems,
        events=report.events,
        streams=report.streams,
        last_seq=report.last_seq,
        last_hash=report.last_hash,
        rules_checked=checked,
        rule_violations=violations_count,
        problems=problems,
        snapshot=snap,
        recorded_in=recorded_in,
        checkpoints_saved=saved,
    )
