"""The positions.json format: the seed's keys, plus where in the log it was taken.

Dashboards written for the seed keep reading `open_positions`, `closed_positions`,
`session_stats` and `last_saved` (numbers are JSON numbers, read back as exact Decimals);
`last_seq`, `last_hash`, `format_version` and `accumulators` let start-up resume the fold.
"""

from __future__ import annotations

import hashlib
from collections import ChainMap
from collections.abc import Mapping, MutableMapping
from datetime import datetime
from decimal import Decimal

import msgspec

from ledger.errors import SnapshotError
from ledger.events import RulesConfigured
from projections._lazy_closed import LazyClosed
from projections.book import Book
from projections.positions import Position
from projections.stats import Accumulators, SessionSummary

FORMAT_VERSION = 1
# The version of the folds (positions, stats, book) a snapshot was computed with. Raise it
# whenever their results change for the same events: older snapshots are then rebuilt from
# the log instead of carrying the old arithmetic forward.
PROJECTION_VERSION = 5  # 4: sums and balances per account; 5: a close keeps its own PnL


class SnapshotFile(msgspec.Struct, kw_only=True):
    open_positions: dict[str, Position]
    # written as the JSON of a list of positions (Raw: spliced from the last snapshot's)
    closed_positions: list[Position] | msgspec.Raw
    session_stats: SessionSummary
    last_saved: datetime
    format_version: int
    projection_version: int
    last_seq: int
    last_hash: str
    balance: Decimal | None = None
    available_balance: Decimal | None = None
    accumulators: Accumulators = msgspec.field(default_factory=Accumulators)
    imported_files: dict[str, str] = msgspec.field(default_factory=dict)
    rules: RulesConfigured | None = None
    account_accumulators: dict[str, Accumulators] = msgspec.field(default_factory=dict)
    account_balances: dict[str, tuple[Decimal, Decimal]] = msgspec.field(default_factory=dict)
    # sha256 of the file's own bytes with this field (the last key) zeroed: a hand-edited
    # figure is caught even where last_seq and last_hash were left alone.
    content_sha256: str = "0" * 64


class _ClosedId(msgspec.Struct):
    position_id: str


class _Resume(msgspec.Struct, kw_only=True):
    """What start-up reads of a positions.json: everything the book holds but the closed
    positions' bodies (only their ids; see projections._lazy_closed). The seed's
    `session_stats` and `last_saved` are for dashboards: the book keeps its own sums."""

    open_positions: dict[str, Position]
    closed_positions: list[_ClosedId]
    format_version: int
    projection_version: int
    last_seq: int
    last_hash: str
    balance: Decimal | None = None
    available_balance: Decimal | None = None
    accumulators: Accumulators = msgspec.field(default_factory=Accumulators)
    imported_files: dict[str, str] = msgspec.field(default_factory=dict)
    rules: RulesConfigured | None = None
    account_accumulators: dict[str, Accumulators] = msgspec.field(default_factory=dict)
    account_balances: dict[str, tuple[Decimal, Decimal]] = msgspec.field(default_factory=dict)


class _Closed(msgspec.Struct):
    closed_positions: list[Position]


class _ClosedJson(msgspec.Struct):
    closed_positions: msgspec.Raw


_encoder = msgspec.json.Encoder(decimal_format="number")
_resume_decoder = msgspec.json.Decoder(_Resume)
_closed_decoder = msgspec.json.Decoder(_Closed)
_closed_json_decoder = msgspec.json.Decoder(_ClosedJson)


def _closed_positions(data: bytes) -> list[Position]:
    """The closed positions of a positions.json already read once (see _decode): its checksum
    matched, so the bytes are the ones this ledger's encoder wrote."""
    try:
        return _closed_decoder.decode(data).closed_positions
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"positions.json closed_positions do not decode: {exc}") from None


def encode_snapshot(book: Book, saved_at: datetime) -> bytes:
    """positions.json bytes for the book as it stands."""
    document = SnapshotFile(
        open_positions=book.open,
        closed_positions=_closed_json(book.closed),
        session_stats=book.summary(),
        last_saved=saved_at,
        format_version=FORMAT_VERSION,
        projection_version=PROJECTION_VERSION,
        last_seq=book.last_seq,
        last_hash=book.last_hash,
        balance=book.balance,
        available_balance=book.available,
        accumulators=book.acc,
        imported_files=dict(book.imported_files),
        rules=book.rules,
        account_accumulators=book.accounts,
        account_balances=book.balances,
    )
    unsigned = msgspec.json.format(_encoder.encode(document), indent=2)
    return _sign(unsigned, hashlib.sha256(unsigned).hexdigest())


def _closed_json(closed: MutableMapping[str, Position]) -> list[Position] | msgspec.Raw:
    """The closed positions to write. While the book still holds the last snapshot's closed
    history undecoded (a LazyClosed, perhaps under a layer of closes since: see
    Book.successor), its JSON is copied from that file and the closes since appended to it:
    the same bytes once formatted, without decoding 30 MB to encode them again."""
    over: Mapping[str, Position] = {}
    base = closed
    if isinstance(closed, ChainMap) and len(closed.maps) == 2:
        over, base = closed.maps
    if isinstance(base, LazyClosed):
        parts = base.undecoded(over)
        if parts is not None:
            data, after = parts
            try:
                earlier = bytes(_closed_json_decoder.decode(data).closed_positions).strip()
            except (msgspec.DecodeError, msgspec.ValidationError):
                return list(closed.values())  # decoding them says what is wrong
            if not after:
                return msgspec.Raw(earlier)
            later = _encoder.encode(after)
            if earlier[1:-1].strip():  # "[...]" and "[...]" -> "[..., ...]"
                return msgspec.Raw(earlier[:-1] + b"," + later[1:])
            return msgspec.Raw(later)
    return list(closed.values())


_UNSIGNED = "0" * 64
_FIELD = b'"content_sha256": "'


def _sign(data: bytes, digest: str) -> bytes:
    """The file with its checksum field (the last key, written as zeros) set to digest."""
    at = data.rfind(_FIELD) + len(_FIELD)
    view = memoryview(data)  # one copy of the file, not three
    return b"".join((view[:at], digest.encode("ascii"), view[at + 64 :]))


def checksum_matches(data: bytes) -> bool:
    """Whether data's content_sha256 is the sha256 of data (see open_snapshot). hashlib lets
    go of the GIL while it hashes: another thread can decode meanwhile."""
    return _checksum_ok(data)


def _checksum_ok(data: bytes) -> bool:
    """sha256 of the file as written, its checksum field zeroed: a hand edit anywhere shows."""
    at = data.rfind(_FIELD)
    if at < 0:
        return False
    start = at + len(_FIELD)
    claimed = data[start : start + 64]
    # hashed in place, around the field: copying 30 MB to zero 64 bytes cost 3x the hash
    view = memoryview(data)
    digest = hashlib.sha256(view[:start])
    digest.update(_UNSIGNED.encode("ascii"))
    digest.update(view[start + 64 :])
    return digest.hexdigest().encode("ascii") == claimed


class _Position(msgspec.Struct):
    """Where in a log a snapshot was taken: all start-up needs of an outdated one."""

    format_version: int
    last_seq: int
    last_hash: str


_position_decoder = msgspec.json.Decoder(_Position)


def written_by_ledger(data: bytes) -> tuple[int, str] | None:
    """(last_seq, last_hash) when data is a positions.json this ledger wrote, unedited (its
    markers are there and its content_sha256 matches), whatever its format or projection
    version; None for any other file (the seed's own, a hand-edited one, garbage)."""
    if not _checksum_ok(data):
        return None
    try:
        marks = _position_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return marks.last_seq, marks.last_hash


def open_snapshot(
    data: bytes, *, checked: bool = False
) -> tuple[tuple[int, str], Book | None] | None:
    """What start-up needs of a positions.json, checking its checksum once: None when this
    ledger did not write it (see written_by_ledger); else its (last_seq, last_hash) and its
    book, None when written in another format or projection version. checked=True: the
    caller checks checksum_matches(data) itself (beside this, in another thread) and uses
    nothing returned here unless it matches."""
    if not checked and not _checksum_ok(data):
        return None
    try:
        book = _decode(data)
    except SnapshotError:
        try:
            marks = _position_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None
        return (marks.last_seq, marks.last_hash), None
    return (book.last_seq, book.last_hash), book


def decode_snapshot(data: bytes) -> Book:
    """The book a positions.json holds; raises SnapshotError if it is not one of ours."""
    if not _checksum_ok(data):
        raise SnapshotError("positions.json content does not match its content_sha256")
    return _decode(data)


def _decode(data: bytes) -> Book:
    """decode_snapshot once the checksum is known to match."""
    try:
        document = _resume_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise SnapshotError(f"positions.json is not a ledger snapshot: {exc}") from None
    if document.format_version != FORMAT_VERSION:
        raise SnapshotError(f"unsupported snapshot format_version {document.format_version}")
    if document.projection_version != PROJECTION_VERSION:
        raise SnapshotError(
            f"computed by projection version {document.projection_version}, "
            f"this ledger folds with {PROJECTION_VERSION}"
        )
    book = Book()
    book.open = dict(document.open_positions)
    # decoded on first use: most start-ups never read closed history
    ids = [closed.position_id for closed in document.closed_positions]
    book.closed = LazyClosed(data, ids, _closed_positions)
    book.balance = document.balance
    book.available = document.available_balance
    book.acc = document.accumulators
    book.accounts = dict(document.account_accumulators)
    _share_symbol_figures(book)
    book.balances = dict(document.account_balances)
    book.imported_files = dict(document.imported_files)
    book.rules = document.rules
    book.last_seq = document.last_seq
    book.last_hash = document.last_hash
    return book


def _share_symbol_figures(book: Book) -> None:
    """A book of one account holds its figures once: an account whose sums are exactly the
    fleet's takes the fleet's sums themselves, as the fold makes them (`Book._new_account`:
    each flow and close counted once); else, when only the per-symbol figures are equal, one
    dict for both (flagged shared on both, see `Accumulators.record_close_beside`) lets each
    close copy it once instead of twice."""
    if len(book.accounts) != 1:
        return
    ((name, only),) = book.accounts.items()
    fleet = book.acc
    if only is fleet:
        return
    if msgspec.json.encode(only) == msgspec.json.encode(fleet):
        book.accounts[name] = fleet
    elif only.per_symbol == fleet.per_symbol:
        only.share_symbols(fleet)
