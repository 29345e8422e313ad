"""AMQP 1.0's type system (part 1 of the specification), pure: every encoding read, and
written for the types dpsd's frames carry.

Reading gives Python values: ``None``, ``bool``, ``int`` (every integer width, timestamps
in milliseconds), ``float``, ``bytes`` (binary, and decimals and chars left as their
bytes), ``str`` (strings), ``Symbol`` (symbols), ``uuid.UUID``, ``list`` (lists and
arrays), ``dict`` (maps) and ``Described``. Writing is by small functions, one per AMQP
type, each returning the encoded bytes, so a frame's fields are spelled in the types the
specification names for them.

Hostile input is bounded: values nest at most ``MAX_DEPTH`` deep, a compound never claims
more items than it has bytes (zero-width elements: at most ``MAX_EMPTY_ITEMS``), and any
truncation, unknown constructor or unhashable map key is a ``DecodeError``.
"""

from __future__ import annotations

import struct
import uuid
from dataclasses import dataclass

MAX_DEPTH = 32
MAX_EMPTY_ITEMS = 1024


class DecodeError(ValueError):
    """The bytes are not AMQP values."""


class Symbol(str):
    """An AMQP symbol (ASCII), as opposed to a string."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Described:
    descriptor: object
    value: object


# --- reading --------------------------------------------------------------------------------

_CONSTANTS: dict[int, object] = {0x40: None, 0x41: True, 0x42: False, 0x43: 0, 0x44: 0}
_FIXED: dict[int, struct.Struct] = {
    0x50: struct.Struct(">B"),
    0x51: struct.Struct(">b"),
    0x52: struct.Struct(">B"),
    0x53: struct.Struct(">B"),
    0x54: struct.Struct(">b"),
    0x55: struct.Struct(">b"),
    0x60: struct.Struct(">H"),
    0x61: struct.Struct(">h"),
    0x70: struct.Struct(">I"),
    0x71: struct.Struct(">i"),
    0x72: struct.Struct(">f"),
    0x80: struct.Struct(">Q"),
    0x81: struct.Struct(">q"),
    0x82: struct.Struct(">d"),
    0x83: struct.Struct(">q"),  # timestamp: milliseconds since the epoch
}
_RAW_WIDTHS = {0x73: 4, 0x74: 4, 0x84: 8, 0x94: 16}  # char and decimals, kept as bytes
_VARIABLE = {0xA0: 1, 0xA1: 1, 0xA3: 1, 0xB0: 4, 0xB1: 4, 0xB3: 4}
_COMPOUND = {0xC0: 1, 0xC1: 1, 0xE0: 1, 0xD0: 4, 0xD1: 4, 0xF0: 4}
_ZERO_WIDTH = frozenset((0x40, 0x41, 0x42, 0x43, 0x44, 0x45))
_SIZE = {1: struct.Struct(">B"), 4: struct.Struct(">I")}
_SIZE_AND_COUNT = {1: struct.Struct(">BB"), 4: struct.Struct(">II")}


def decode(data: bytes, at: int = 0) -> tuple[object, int]:
    """The value at ``at`` and where it ends."""
    try:
        return _value(data, at, 0)
    except (IndexError, struct.error) as error:
        raise DecodeError("truncated AMQP value") from error


def decode_list_spans(data: bytes, at: int) -> tuple[list[object], list[int], int]:
    """A list at ``at``: its items, where each item starts (and, last, where the list's
    items end), and where the list ends. A frame's performative is read so, keeping the
    bytes of fields that are echoed back unchanged."""
    try:
        constructor = data[at]
        if constructor == 0x45:
            return [], [at + 1], at + 1
        width = _COMPOUND.get(constructor)
        if width is None or constructor not in (0xC0, 0xD0):
            raise DecodeError(f"expected a list, found constructor 0x{constructor:02x}")
        size, count = _SIZE_AND_COUNT[width].unpack_from(data, at + 1)
        start = at + 1 + width
        end = start + size
        _check_bounds(data, end, count, size - width)
        items: list[object] = []
        starts: list[int] = []
        position = start + width
        for _ in range(count):
            starts.append(position)
            item, position = _value(data, position, 1)
            items.append(item)
        if position != end:
            raise DecodeError("a list's items do not fill it")
        starts.append(position)
        return items, starts, end
    except (IndexError, struct.error) as error:
        raise DecodeError("truncated AMQP list") from error


def _value(data: bytes, at: int, depth: int) -> tuple[object, int]:
    return _body(data[at], data, at + 1, depth)


def _body(constructor: int, data: bytes, at: int, depth: int) -> tuple[object, int]:
    """The value of ``constructor`` whose encoding starts at ``at``."""
    if constructor in _CONSTANTS:
        return _CONSTANTS[constructor], at
    fixed = _FIXED.get(constructor)
    if fixed is not None:
        (number,) = fixed.unpack_from(data, at)
        return number, at + fixed.size
    width = _VARIABLE.get(constructor)
    if width is not None:
        return _variable(data, at, constructor, width)
    if constructor == 0x00:
        return _described(data, at, depth)
    if constructor == 0x45:
        return [], at
    width = _COMPOUND.get(constructor)
    if width is not None:
        return _compound(data, at, constructor, width, depth)
    if constructor == 0x56:
        return data[at] != 0, at + 1
    if constructor == 0x98:
        return uuid.UUID(bytes=_take(data, at, 16)), at + 16
    raw = _RAW_WIDTHS.get(constructor)
    if raw is not None:
        return _take(data, at, raw), at + raw
    raise DecodeError(f"unknown AMQP constructor 0x{constructor:02x}")


def _take(data: bytes, at: int, count: int) -> bytes:
    if at + count > len(data):
        raise DecodeError("truncated AMQP value")
    return data[at : at + count]


def _variable(data: bytes, at: int, constructor: int, width: int) -> tuple[object, int]:
    (size,) = _SIZE[width].unpack_from(data, at)
    at += width
    raw = _take(data, at, size)
    at += size
    if constructor in (0xA0, 0xB0):
        return raw, at
    try:
        if constructor in (0xA3, 0xB3):
            return Symbol(raw.decode("ascii")), at
        return raw.decode("utf-8"), at
    except UnicodeDecodeError as error:
        raise DecodeError("undecodable AMQP text") from error


def _described(data: bytes, at: int, depth: int) -> tuple[object, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError("AMQP values nested too deep")
    descriptor, at = _value(data, at, depth + 1)
    value, at = _value(data, at, depth + 1)
    return Described(descriptor, value), at


def _compound(data: bytes, at: int, constructor: int, width: int, depth: int) -> tuple[object, int]:
    if depth >= MAX_DEPTH:
        raise DecodeError("AMQP values nested too deep")
    size, count = _SIZE_AND_COUNT[width].unpack_from(data, at)
    start = at + width
    end = start + size
    position = start + width
    if constructor in (0xE0, 0xF0):
        items = _array(data, position, end, count, depth)
        return items, end
    _check_bounds(data, end, count, size - width)
    items = []
    for _ in range(count):
        item, position = _value(data, position, depth + 1)
        items.append(item)
    if position != end:
        raise DecodeError("a compound's items do not fill it")
    if constructor in (0xC0, 0xD0):
        return items, end
    if count % 2:
        raise DecodeError("a map with an odd number of items")
    try:
        return dict(zip(items[::2], items[1::2], strict=True)), end
    except TypeError as error:
        raise DecodeError("a map key that is not a simple value") from error


def _array(data: bytes, at: int, end: int, count: int, depth: int) -> list[object]:
    if end > len(data):
        raise DecodeError("truncated AMQP array")
    constructor = data[at]
    descriptor = None
    described = constructor == 0x00
    if described:
        descriptor, at = _value(data, at + 1, depth + 1)
        constructor = data[at]
    at += 1
    if count > (MAX_EMPTY_ITEMS if constructor in _ZERO_WIDTH else end - at):
        raise DecodeError("an array claims more items than it has bytes")
    items: list[object] = []
    for _ in range(count):
        item, at = _body(constructor, data, at, depth + 1)
        items.append(Described(descriptor, item) if described else item)
    if at != end:
        raise DecodeError("an array's elements do not fill it")
    return items


def _check_bounds(data: bytes, end: int, count: int, room: int) -> None:
    if end > len(data) or room < 0:
        raise DecodeError("truncated AMQP compound")
    if count > room and count > MAX_EMPTY_ITEMS:
        raise DecodeError("a compound claims more items than it has bytes")


# --- writing --------------------------------------------------------------------------------

NULL = b"\x40"
TRUE = b"\x41"
FALSE = b"\x42"
_UINT = struct.Struct(">BI")
_ULONG = struct.Struct(">BQ")
_USHORT = struct.Struct(">BH")


def boolean(value: bool) -> bytes:
    return TRUE if value else FALSE


def ubyte(value: int) -> bytes:
    return bytes((0x50, value))


def ushort(value: int) -> bytes:
    return _USHORT.pack(0x60, value)


def uint(value: int) -> bytes:
    if value == 0:
        return b"\x43"
    if value < 256:
        return bytes((0x52, value))
    return _UINT.pack(0x70, value)


def ulong(value: int) -> bytes:
    if value == 0:
        return b"\x44"
    if value < 256:
        return bytes((0x53, value))
    return _ULONG.pack(0x80, value)


def binary(value: bytes) -> bytes:
    return _sized(0xA0, 0xB0, value)


def string(value: str) -> bytes:
    return _sized(0xA1, 0xB1, value.encode("utf-8"))


def symbol(value: str) -> bytes:
    return _sized(0xA3, 0xB3, value.encode("ascii"))


def described(code: int, value: bytes) -> bytes:
    """A value described by a numeric descriptor (as every performative is)."""
    return b"\x00" + ulong(code) + value


def list_of(*items: bytes) -> bytes:
    """A list of encoded items, trailing nulls left out (they are the default)."""
    count = len(items)
    while count and items[count - 1] == NULL:
        count -= 1
    if not count:
        return b"\x45"
    return _compound_of(0xC0, 0xD0, count, b"".join(items[:count]))


def symbol_array(names: tuple[str, ...]) -> bytes:
    """An array of symbols (each under 256 bytes, as mechanism and capability names are)."""
    elements = b"".join(bytes((len(name),)) + name.encode("ascii") for name in names)
    return _compound_of(0xE0, 0xF0, len(names), b"\xa3" + elements)


def map_of(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return _compound_of(0xC1, 0xD1, 2 * len(pairs), b"".join(k + v for k, v in pairs))


def _sized(short: int, long: int, raw: bytes) -> bytes:
    if len(raw) < 256:
        return bytes((short, len(raw))) + raw
    return struct.pack(">BI", long, len(raw)) + raw


def _compound_of(short: int, long: int, count: int, raw: bytes) -> bytes:
    if len(raw) + 1 < 256 and count < 256:
        return bytes((short, len(raw) + 1, count)) + raw
    return struct.pack(">BII", long, len(raw) + 4, count) + raw
