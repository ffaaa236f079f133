"""The one place event bytes are made and read back, with upcasters for old schema versions."""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

import msgspec

from ledger.errors import InvalidValue
from ledger.events import DEFAULT_ACCOUNT, AnyEvent, PositionMarked
from ledger.values import Source

# 2: PositionOpened and BalanceObserved carry the account
SCHEMA_VERSION = 2

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_raw_decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])

# (event type, stored schema version) -> function turning that version's dict into the next one.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _into_default_account(raw: dict[str, Any]) -> dict[str, Any]:
    """Version 1 knew one account: its positions and balances are the default account's."""
    return {**raw, "account": raw.get("account", DEFAULT_ACCOUNT)}


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("PositionOpened", 1): _into_default_account,
    ("BalanceObserved", 1): _into_default_account,
}


def encode_event(event: AnyEvent) -> bytes:
    """The canonical JSON of an event (what is stored and hashed)."""
    return _encoder.encode(event)


# encode_event's bytes written into a bytearray (truncated to them): `encode_body`, inlined by
# staging's loop. A row's body is staged as a bytearray because Python's sqlite3 binds a
# bytearray as a BLOB at once, while for bytes it first looks for an adapter, and that lookup
# formats (and drops) an AttributeError for every row: about 0.6 ms of CPU in a 1,000-row
# executemany (6.2 against 6.9 ms measured), for the same bytes stored.
encode_into = _encoder.encode_into
BODY_BUFFER = 256  # a body's first allocation: most bodies fit (about 200 bytes on average)


def encode_body(event: AnyEvent) -> bytearray:
    """encode_event(event) in a bytearray: a staged row's body (see BODY_BUFFER)."""
    body = bytearray(BODY_BUFFER)
    encode_into(event, body)
    return body


# The current schema's decoder, for hot loops that check the version themselves:
# msgspec decodes the JSON straight into the event struct, Decimal fields included.
decode_current: Callable[[bytes], AnyEvent] = _decoder.decode


class MarkText(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="PositionMarked", gc=False
):
    """A stored PositionMarked read with its numbers still text: what a rebuild decodes a mark
    into, since most marks are superseded by the next mark of their position and never folded.

    Making its four Decimals is most of what decoding a mark costs (about two thirds): a fold
    (Book.apply_facts) parses only the numbers of the marks it folds, the last of each run
    (`number_from_text`), and reads of the others only what a run keeps (the margin, Bybit's
    openTime, the source). Fields, types and defaults mirror PositionMarked's, and
    `mark_from_text` gives the event the exact decoder reads (tests hold both); a number that
    is neither a JSON string nor an int (a float, say) fails this decode and the page is
    decoded exactly instead.
    """

    position_id: str
    mark_price: str | int
    unrealized_pnl: str | int | None = None
    contracts: str | int | None = None
    initial_margin: str | int | None = None
    source: Source = Source.BOT
    exchange_opened_ms: int | None = None


# An event as a rebuild's fold takes it: a mark may still be text.
FoldEvent = AnyEvent | MarkText
# (seq, occurred_us, event): a Fact whose mark may still be text.
FoldFact = tuple[int, int, FoldEvent]
# (seq, occurred_us, schema_version, body): a stored event not decoded yet, as a rebuild reads
# it (Book.apply_facts decodes only what it folds).
FactRow = tuple[int, int, int, bytes]
# A page a fold takes: facts already decoded, or rows it decodes itself (one kind a page).
FoldPage = Sequence[FoldFact] | Sequence[FactRow]

# How the encoder writes every mark (tag first, then the fields in PositionMarked's order, none
# omitted): the body up to its position id's text, and the endings of a mark that reports no
# Bybit openTime, and of one that reports nothing a run of marks keeps (a bot's mark: no
# margin, no openTime, not the exchange's). A fold groups marks by the text after MARK_HEAD
# without decoding them (tests/test_fold_rows.py holds these to the encoder).
MARK_HEAD = b'{"type":"PositionMarked","position_id":"'
NO_OPENED_TAIL = b',"exchange_opened_ms":null}'
BOT_MARK_TAIL = b',"initial_margin":null,"source":"bot","exchange_opened_ms":null}'

# the union with MarkText in PositionMarked's place (a tag may name one type only)
_FOLD_TYPES: Any = functools.reduce(
    operator.or_, [t for t in get_args(AnyEvent) if t is not PositionMarked], MarkText
)
_fold_decoder: msgspec.json.Decoder[FoldEvent] = msgspec.json.Decoder(_FOLD_TYPES)

# The current schema's decoder for a fold: marks come as MarkText, every other event exact.
decode_for_fold: Callable[[bytes], FoldEvent] = _fold_decoder.decode


def number_from_text(value: str | int) -> Decimal:
    """A mark's number as the exact decoder makes it: Decimal(text), exact whatever the
    context; raises msgspec.ValidationError, as that decoder does, on text that is no number."""
    try:
        return Decimal(value)
    except InvalidOperation:  # what msgspec says of the same text
        raise msgspec.ValidationError("Invalid decimal string") from None


def mark_from_text(text: MarkText) -> PositionMarked:
    """The PositionMarked the exact decoder reads from the same body; raises
    msgspec.ValidationError on a number that is not a decimal (as the decoder would)."""
    pnl, contracts, margin = text.unrealized_pnl, text.contracts, text.initial_margin
    return PositionMarked(
        position_id=text.position_id,
        mark_price=number_from_text(text.mark_price),
        unrealized_pnl=None if pnl is None else number_from_text(pnl),
        contracts=None if contracts is None else number_from_text(contracts),
        initial_margin=None if margin is None else number_from_text(margin),
        source=text.source,
        exchange_opened_ms=text.exchange_opened_ms,
    )


# Decimal exponents an event may carry (commands are held to 1e-12..1e15; derived figures such
# as PnL may go further): inside them no fold can overflow or underflow LEDGER_CONTEXT.
_SAFE_LOW, _SAFE_HIGH = -100, 30
# an int in a Decimal field (it reads back as the same number) is held to the same range:
# its magnitude below 1e31, so that its adjusted exponent is at most _SAFE_HIGH
_SAFE_INT = 10 ** (_SAFE_HIGH + 1)
_NUMBER_FIELDS: dict[
    type[object], tuple[tuple[str, ...], Callable[[object], tuple[object, ...]]]
] = {}


def ensure_decodable(event: AnyEvent) -> bytes:
    """The event's body, once it is shown to decode back to the same event; raises InvalidValue.

    The structural guarantee that nothing appended can brick the log: a field of the wrong
    type (None or an int where a str belongs, a bool for a number, an int too big for the
    decoder), a non-finite number, an object the encoder cannot write, all fail here, before
    anything is staged. The check is the decoder itself, so it cannot drift from it.
    """
    try:
        body = _encoder.encode(event)
    except (TypeError, ValueError, OverflowError) as exc:
        raise InvalidValue(event_type(event), event, f"cannot be encoded: {exc}") from None
    try:
        back = _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError) as exc:
        raise InvalidValue(event_type(event), event, f"would not decode: {exc}") from None
    # equal, not byte-identical: an int where a Decimal belongs reads back as the same number
    try:
        same = type(back) is type(event) and back == event
    except ArithmeticError:  # a signalling NaN signals when compared (an untyped error)
        same = False
    if not same:
        raise InvalidValue(event_type(event), event, "does not read back as written")
    cls = type(event)
    numbers = _NUMBER_FIELDS.get(cls)
    if numbers is None:  # the Decimal-typed fields, once per event type
        numbers = _NUMBER_FIELDS[cls] = _number_fields(cls)
    names, values_of = numbers
    # the usual values, each read in one call: a plain Decimal, finite, zero or within the
    # range, None or an int; anything else (a subclass, a float, out of range) is decided and
    # named by the loop below
    for value in values_of(event):
        if type(value) is Decimal:
            if value.is_finite() and (not value or _SAFE_LOW <= value.adjusted() <= _SAFE_HIGH):
                continue
        elif value is None or (type(value) is int and -_SAFE_INT < value < _SAFE_INT):
            continue
        _check_numbers(event, names)  # every field, from the first
        break
    return body


def _number_fields(
    cls: type[object],
) -> tuple[tuple[str, ...], Callable[[object], tuple[object, ...]]]:
    """An event type's Decimal-typed fields, and a function reading all of them at once."""
    names = tuple(
        f.name
        for f in msgspec.structs.fields(cls)  # type: ignore[arg-type]
        if "Decimal" in str(f.type)
    )
    if not names:
        return names, lambda event: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return names, lambda event: (one(event),)
    return names, operator.attrgetter(*names)


def _check_numbers(event: AnyEvent, names: tuple[str, ...]) -> None:
    """Raise InvalidValue naming the first number field that is no finite Decimal within the
    range a fold takes, an int outside it, or a float."""
    for name in names:
        value = getattr(event, name)
        if isinstance(value, Decimal):
            if not value.is_finite():
                raise InvalidValue(name, value, "must be finite")
            if value and not _SAFE_LOW <= value.adjusted() <= _SAFE_HIGH:
                # far outside anything real: folding it could overflow or underflow the context
                raise InvalidValue(name, value, "outside the range the ledger can fold")
        elif isinstance(value, float):  # money is never a float in the log
            raise InvalidValue(name, value, "a float: convert it once, at the edge")
        elif isinstance(value, int) and not -_SAFE_INT < value < _SAFE_INT:
            raise InvalidValue(name, value, "outside the range the ledger can fold")


def decode_event(body: bytes, schema_version: int = SCHEMA_VERSION) -> AnyEvent:
    """Read a stored event, upcasting older versions; raises msgspec.ValidationError/DecodeError."""
    if schema_version == SCHEMA_VERSION:
        return _decoder.decode(body)
    raw = _raw_decoder.decode(body)
    version = schema_version
    while version < SCHEMA_VERSION:
        upcast = UPCASTERS.get((str(raw.get("type")), version))
        if upcast is not None:
            raw = upcast(raw)
        version += 1
    upcasted: AnyEvent = msgspec.convert(raw, AnyEvent)
    return upcasted


def decode_for_fold_at(body: bytes, schema_version: int) -> FoldEvent:
    """decode_for_fold for a body stored under any schema version: a mark of an older version
    that no upcaster changes is read as MarkText too (it is one whatever its version), the
    rest through decode_event's upcasters; raises msgspec.ValidationError/DecodeError."""
    if schema_version < SCHEMA_VERSION and not any(
        ("PositionMarked", version) in UPCASTERS
        for version in range(schema_version, SCHEMA_VERSION)
    ):
        try:
            event = _fold_decoder.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError):
            pass  # decode_event says what is wrong, or upcasts what this cannot read
        else:
            if type(event) is MarkText:
                return event
    return decode_event(body, schema_version)


# The schema versions whose marks read as the current schema's (no upcaster changes a mark
# from them on): a fold may group such a mark by its body's text.
MARKS_AS_IS: frozenset[int] = frozenset(
    version
    for version in range(1, SCHEMA_VERSION + 1)
    if not any(("PositionMarked", v) in UPCASTERS for v in range(version, SCHEMA_VERSION))
)


def decode_for_fold_exactly(body: bytes, schema_version: int) -> FoldEvent:
    """decode_for_fold_at, or where it cannot read the body (a float for a number, say) the
    exact decoder's event; raises msgspec.ValidationError/DecodeError as decode_event does."""
    try:
        return (
            _fold_decoder.decode(body)
            if schema_version == SCHEMA_VERSION
            else decode_for_fold_at(body, schema_version)
        )
    except (msgspec.ValidationError, msgspec.DecodeError):
        return decode_event(body, schema_version)


def event_type(event: AnyEvent) -> str:
    """The union tag of an event (its class name)."""
    return type(event).__name__
