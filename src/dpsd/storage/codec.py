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


def timestamp_text(moment: datetime) -> str:
    """A timestamp as documents hold it, without the JSON quotes."""
    return _encoder.encode(moment)[1:-1].decode("ascii")


def parse_timestamp(text: str) -> datetime:
    """The inverse of timestamp_text."""
    return _timestamp_decoder.decode(f'"{text}"')
