"""Domain records to and from the JSON documents the tables hold."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()


def encode(record: Any) -> str:
    return _encoder.encode(record).decode("utf-8")


def decoder(record_type: type[T]) -> Callable[[str], T]:
    decode: Callable[[str], T] = msgspec.json.Decoder(record_type).decode
    return decode
