"""The one place event bytes are made and read back, with upcasters for old schema versions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ledger.events import AnyEvent

SCHEMA_VERSION = 1

_encoder = msgspec.json.Encoder()
_decoder: msgspec.json.Decoder[AnyEvent] = msgspec.json.Decoder(AnyEvent)
_raw_decoder: msgspec.json.Decoder[dict[str, Any]] = msgspec.json.Decoder(dict[str, Any])

# (event type, stored schema version) -> function turning that version's dict into the next one.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]
UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def encode_event(event: AnyEvent) -> bytes:
    """The canonical JSON of an event (what is stored and hashed)."""
    return _encoder.encode(event)


# The current schema's decoder, for hot loops that check the version themselves:
# msgspec decodes the JSON straight into the event struct, Decimal fields included.
decode_current: Callable[[bytes], AnyEvent] = _decoder.decode


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


def event_type(event: AnyEvent) -> str:
    """The union tag of an event (its class name)."""
    return type(event).__name__
