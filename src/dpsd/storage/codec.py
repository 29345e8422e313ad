"""Domain records to and from the JSON documents the tables hold."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_timestamp_decoder = msgspec.json.Decoder(datetime)


def encode(record: Any) -> str:
    return _encoder.encode(record).decode("utf-8")


def decoder(record_type: type[T]) -> Callable[[str], T]:
    decode: Callable[[str], T] = msgspec.json.Decoder(record_type).decode
    return decode


def shared_decoder(record_type: type[T], capacity: int = 128) -> Callable[[str], T]:
    """A decoder that hands out one record for one document: for the records many requests
    read again and again unchanged (enrollment groups, linked hubs, CA certificates). Every
    device of a group attests against the same documents, and each connected device keeps
    its attestation: one shared record instead of a copy per device (about a kilobyte
    each), and no decoding on a hit. Records are immutable. At ``capacity`` documents the
    cache starts again empty."""
    decode = decoder(record_type)
    known: dict[str, T] = {}

    def shared(document: str) -> T:
        record = known.get(document)
        if record is None:
            if len(known) >= capacity:
                known.clear()
            record = known[document] = decode(document)
        return record

    return shared


def timestamp_text(moment: datetime) -> str:
    """A timestamp as documents hold it, without the JSON quotes."""
    return _encoder.encode(moment)[1:-1].decode("ascii")


def parse_timestamp(text: str) -> datetime:
    """The inverse of timestamp_text."""
    return _timestamp_decoder.decode(f'"{text}"')
