"""JSON bodies decoded into wire models within the nesting limit of
``dpsd.domain.json_depth``: one rule for every protocol (the DPS service and device APIs over
HTTPS, MQTT and AMQP register bodies, the built-in hubs' API).

Only what a model keeps is measured: a field dpsd does not read is skipped unread, however
deep (up to the depth Python's recursion limit lets the decoder follow, beyond which the body
is refused too).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import msgspec

from dpsd.domain.json_depth import MAX_JSON_DEPTH, JsonTooDeep, json_children, nests_deeper_than

T = TypeVar("T")


def decode_json(body: bytes | bytearray, model: type[T]) -> T:
    """``body`` as ``model``: msgspec.DecodeError for what is not such JSON, JsonTooDeep for
    what nests deeper than MAX_JSON_DEPTH."""
    try:
        value = msgspec.json.decode(body, type=model)
    except RecursionError:
        raise JsonTooDeep() from None
    if _openings(body) > MAX_JSON_DEPTH and nests_deeper_than(value, MAX_JSON_DEPTH, _children):
        raise JsonTooDeep()
    return value


def _openings(body: bytes | bytearray) -> int:
    """An upper bound of the body's depth, counted in C: most bodies open fewer objects and
    arrays than the limit in all, and so are spared the walk of what they decoded to."""
    return body.count(b"{") + body.count(b"[")


def _children(value: Any) -> Iterable[Any] | None:
    if isinstance(value, msgspec.Struct):
        return msgspec.structs.astuple(value)
    return json_children(value)
