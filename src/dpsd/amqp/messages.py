"""DPS request and response messages to and from AMQP's encoding.

A request's identity is its correlation-id (any AMQP type: Node and C# send strings, C none),
its application-properties (``iotdps-operation-type``, ``iotdps-operation-id``) and its
body (a Data section of JSON, or an AMQP value, which polls carry and dpsd ignores). An
answer is one Data section of JSON with the request's correlation-id, unchanged in type, and
string application-properties (the C SDK does not read an AMQP long).

Two readers. The quick one reads the shapes the SDKs send without making Python objects of
what DPS ignores (a general reader, as proton's ``Message`` was, cost about as much as the
rest of a request's AMQP handling: some 40 µs a message against a few): sections with
numeric descriptors, a correlation-id that is a string, binary, uuid or ulong, application
property values that are null, booleans, integers, strings or symbols, and one Data or
AMQP-value body; the header, annotations and footer are passed over by their sizes.
Anything else goes to the general reader (``dpsd.amqp.types``): any section by code or
name, several Data sections as one body, and a correlation-id of any other type kept as
its encoded bytes (``EncodedValue``) and echoed so. Bytes that are not an AMQP message are
MalformedMessage (an empty payload is an empty request).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from dpsd.amqp import types

CONTENT_TYPE = "application/json"


class MalformedMessage(ValueError):
    """The bytes of a transfer are not an AMQP message."""


@dataclass(frozen=True, slots=True)
class EncodedValue:
    """A value kept as the bytes it came in, to be written back unchanged."""

    encoded: bytes


@dataclass(frozen=True, slots=True)
class RequestMessage:
    correlation_id: object = None
    application_properties: Mapping[str, object] = field(default_factory=dict)
    body: bytes | str | None = None


@dataclass(frozen=True, slots=True)
class ResponseMessage:
    body: bytes
    correlation_id: object = None
    application_properties: Mapping[str, str] = field(default_factory=dict)


def decode_request(payload: bytes) -> RequestMessage:
    try:
        return _read_request(payload)
    except (_Unexpected, ValueError, IndexError, struct.error):  # truncated or not UTF-8
        return _read_generally(payload)


# --- the general reader ---------------------------------------------------------------------

_SECTION_NAMES = {
    "amqp:header:list": 0x70,
    "amqp:delivery-annotations:map": 0x71,
    "amqp:message-annotations:map": 0x72,
    "amqp:properties:list": 0x73,
    "amqp:application-properties:map": 0x74,
    "amqp:data:binary": 0x75,
    "amqp:amqp-sequence:list": 0x76,
    "amqp:amqp-value:*": 0x77,
    "amqp:footer:map": 0x78,
}


def _read_generally(payload: bytes) -> RequestMessage:
    correlation_id: object = None
    properties: dict[str, object] = {}
    data: list[bytes] = []
    value_body: bytes | str | None = None
    at = 0
    try:
        while at < len(payload):
            code, value_at = _general_section(payload, at)
            value, at = types.decode(payload, value_at)
            if code == _PROPERTIES and isinstance(value, list):
                correlation_id = _general_correlation_id(payload, value_at)
            elif code == _APPLICATION_PROPERTIES and isinstance(value, dict):
                properties = {str(key): item for key, item in value.items() if isinstance(key, str)}
            elif code == _DATA and isinstance(value, bytes):
                data.append(value)
            elif code == _AMQP_VALUE and isinstance(value, bytes | str):
                value_body = value
            elif not 0x70 <= code <= 0x78:
                raise MalformedMessage(f"not a section of a message: 0x{code:02x}")
    except types.DecodeError as error:
        raise MalformedMessage(f"not an AMQP message: {error}") from error
    body = b"".join(data) if data else value_body
    return RequestMessage(correlation_id, properties, body)


def _general_section(payload: bytes, at: int) -> tuple[int, int]:
    """A section's descriptor, numeric or symbolic, and where its value starts."""
    if payload[at] != 0x00:
        raise MalformedMessage("a message section is not a described value")
    descriptor, value_at = types.decode(payload, at + 1)
    code = _SECTION_NAMES.get(descriptor, -1) if isinstance(descriptor, str) else descriptor
    if not isinstance(code, int) or isinstance(code, bool):
        raise MalformedMessage(f"not a section of a message: {descriptor!r}")
    return code, value_at


def _general_correlation_id(payload: bytes, at: int) -> object:
    fields, starts, _ = types.decode_list_spans(payload, at)
    if len(fields) <= _CORRELATION_ID:
        return None
    start, end = starts[_CORRELATION_ID], starts[_CORRELATION_ID + 1]
    if payload[start] in _CORRELATION_TYPES:
        return fields[_CORRELATION_ID]
    return EncodedValue(payload[start:end])


# --- reading --------------------------------------------------------------------------------


class _Unexpected(Exception):
    """Not a shape the quick reader reads: the general one reads the message instead."""


_PROPERTIES = 0x73
_APPLICATION_PROPERTIES = 0x74
_DATA = 0x75
_AMQP_VALUE = 0x77
# The sections passed over, with the constructors their values may have: the header and an
# amqp-sequence body are lists; delivery and message annotations and the footer are maps.
_SKIPPED_SECTIONS = {
    0x70: frozenset((0x45, 0xC0, 0xD0)),
    0x71: frozenset((0xC1, 0xD1)),
    0x72: frozenset((0xC1, 0xD1)),
    0x76: frozenset((0x45, 0xC0, 0xD0)),
    0x78: frozenset((0xC1, 0xD1)),
}
_CORRELATION_ID = 5  # the field of the properties list
_MAX_DEPTH = 16  # described values nest no deeper in a DPS message

_FIXED_WIDTHS = {
    **dict.fromkeys(range(0x40, 0x46), 0),
    **dict.fromkeys(range(0x50, 0x57), 1),
    0x60: 2,
    0x61: 2,
    **dict.fromkeys(range(0x70, 0x75), 4),
    **dict.fromkeys(range(0x80, 0x85), 8),
    0x94: 16,
    0x98: 16,
}
_ONE_BYTE_SIZE = frozenset((0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0))
_FOUR_BYTE_SIZE = frozenset((0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0))
_CONSTANTS: dict[int, object] = {0x40: None, 0x41: True, 0x42: False, 0x43: 0, 0x44: 0}
_INTEGERS = {  # the struct layout of each integer type
    0x50: "B",
    0x51: "b",
    0x52: "B",
    0x53: "B",
    0x54: "b",
    0x55: "b",
    0x60: ">H",
    0x61: ">h",
    0x70: ">I",
    0x71: ">i",
    0x80: ">Q",
    0x81: ">q",
}
# null, and the message-id types: ulong, uuid, binary, string.
_CORRELATION_TYPES = frozenset((0x40, 0x44, 0x53, 0x80, 0x98, 0xA0, 0xB0, 0xA1, 0xB1))
_TEXT = {0xA1: 1, 0xB1: 4, 0xA3: 1, 0xB3: 4}  # strings (UTF-8) and symbols (ASCII)
_SYMBOLS = frozenset((0xA3, 0xB3))
_BINARY = {0xA0: 1, 0xB0: 4}


class _Reader:
    """AMQP values in ``data``, read from a position on; out of bounds is _Unexpected."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def end_of(self, at: int, depth: int = 0) -> int:
        """Where the value at ``at`` ends (an IndexError past the end of the data)."""
        data = self.data
        constructor = data[at]
        width = _FIXED_WIDTHS.get(constructor)
        if width is not None:
            end = at + 1 + width
        elif constructor in _ONE_BYTE_SIZE:
            end = at + 2 + data[at + 1]
        elif constructor in _FOUR_BYTE_SIZE:
            end = at + 5 + self.size(at + 1, 4)
        elif constructor == 0x00 and depth < _MAX_DEPTH:  # a described value
            return self.end_of(self.end_of(at + 1, depth + 1), depth + 1)
        else:
            raise _Unexpected
        if end > len(data):
            raise _Unexpected
        return end

    def size(self, at: int, width: int) -> int:
        """An unsigned number of ``width`` bytes (1, 4 or 8; struct.error past the end)."""
        if width == 1:
            return self.data[at]
        return int(_UNSIGNED[width].unpack_from(self.data, at)[0])

    def scalar(self, at: int) -> object:
        """A null, boolean, integer, string, symbol, binary or uuid value."""
        data = self.data
        constructor = data[at]
        if constructor in _CONSTANTS:
            return _CONSTANTS[constructor]
        if constructor == 0x56:
            return data[at + 1] != 0
        if constructor in _INTEGERS:
            return int(struct.unpack_from(_INTEGERS[constructor], data, at + 1)[0])
        if constructor in _TEXT:
            encoding = "ascii" if constructor in _SYMBOLS else "utf-8"
            return self.variable(at, _TEXT[constructor]).decode(encoding)
        if constructor in _BINARY:
            return self.variable(at, _BINARY[constructor])
        if constructor == 0x98:
            return uuid.UUID(bytes=data[at + 1 : at + 17])
        raise _Unexpected

    def variable(self, at: int, width: int) -> bytes:
        start = at + 1 + width
        return self.data[start : start + self.size(at + 1, width)]

    def items(self, at: int, list_or_map: tuple[int, int, int]) -> list[int]:
        """Where each item of the list or map at ``at`` starts (list0 has none)."""
        empty, short, long = list_or_map
        data = self.data
        constructor = data[at]
        if constructor == empty:
            return []
        if constructor == short:
            count, start = data[at + 2], at + 3
        elif constructor == long:
            count, start = self.size(at + 5, 4), at + 9
        else:
            raise _Unexpected
        end = self.end_of(at)
        positions = []
        for _ in range(count):
            positions.append(start)
            start = self.end_of(start)
        if start != end:
            raise _Unexpected
        return positions


_UNSIGNED = {4: struct.Struct(">I"), 8: struct.Struct(">Q")}
_LIST = (0x45, 0xC0, 0xD0)
_MAP = (-1, 0xC1, 0xD1)


def _read_request(payload: bytes) -> RequestMessage:
    reader = _Reader(payload)
    correlation_id: object = None
    properties: dict[str, object] = {}
    body: bytes | str | None = None
    bodies = 0
    at = 0
    while at < len(payload):
        code, value_at = _section(reader, at)
        at = reader.end_of(value_at)
        if code == _PROPERTIES:
            correlation_id = _correlation_id(reader, value_at)
        elif code == _APPLICATION_PROPERTIES:
            properties = _application_properties(reader, value_at)
        elif code in (_DATA, _AMQP_VALUE):
            bodies += 1
            body = _body_value(reader, value_at, code)
        elif payload[value_at] not in _SKIPPED_SECTIONS.get(code, ()):
            raise _Unexpected
    if not payload or bodies > 1:
        raise _Unexpected  # the general reader reads an empty message or two bodies
    return RequestMessage(correlation_id, properties, body)


def _section(reader: _Reader, at: int) -> tuple[int, int]:
    """A section's descriptor code and where its value starts."""
    data = reader.data
    if data[at] != 0x00 or at + 2 >= len(data):
        raise _Unexpected
    if data[at + 1] == 0x53:
        return data[at + 2], at + 3
    if data[at + 1] == 0x80 and at + 10 <= len(data):
        code = reader.size(at + 2, 8)
        if code > 0xFF:
            raise _Unexpected
        return code, at + 10
    raise _Unexpected


def _correlation_id(reader: _Reader, at: int) -> object:
    fields = reader.items(at, _LIST)
    if len(fields) <= _CORRELATION_ID:
        return None
    field_at = fields[_CORRELATION_ID]
    if reader.data[field_at] not in _CORRELATION_TYPES:
        raise _Unexpected  # not a message-id type: the general reader keeps its bytes
    return reader.scalar(field_at)


def _application_properties(reader: _Reader, at: int) -> dict[str, object]:
    items = reader.items(at, _MAP)
    properties: dict[str, object] = {}
    for key_at, value_at in zip(items[::2], items[1::2], strict=True):
        if reader.data[key_at] not in _TEXT:
            raise _Unexpected
        value = reader.scalar(value_at)
        properties[str(reader.scalar(key_at))] = value
    return properties


def _body_value(reader: _Reader, at: int, code: int) -> bytes | str | None:
    constructor = reader.data[at]
    if code == _DATA:
        if constructor not in _BINARY:
            raise _Unexpected
        return reader.variable(at, _BINARY[constructor])
    if constructor in _TEXT or constructor in _BINARY:
        value = reader.scalar(at)
        assert isinstance(value, bytes | str)
        return value
    return None  # an AMQP value of another type: no body dpsd reads


# --- writing --------------------------------------------------------------------------------


_CONTENT_TYPE_FIELD = b"\xa3" + bytes([len(CONTENT_TYPE)]) + CONTENT_TYPE.encode("ascii")


def encode_response(response: ResponseMessage) -> bytes:
    fields = b"\x40" * _CORRELATION_ID + _correlation_field(response.correlation_id)
    sections = [b"\x00\x53\x73" + _compound(0xC0, 0xD0, 7, fields + _CONTENT_TYPE_FIELD)]
    properties = response.application_properties  # written even when empty
    pairs = b"".join(_text(key) + _text(value) for key, value in properties.items())
    sections.append(b"\x00\x53\x74" + _compound(0xC1, 0xD1, 2 * len(properties), pairs))
    sections.append(b"\x00\x53\x75" + _variable(0xA0, 0xB0, response.body))
    return b"".join(sections)


def _correlation_field(value: object) -> bytes:
    """The correlation-id with the type it came in."""
    if isinstance(value, EncodedValue):
        return value.encoded
    if value is None:
        return b"\x40"
    if type(value) is str:
        return _variable(0xA1, 0xB1, value.encode("utf-8"))
    if type(value) is bytes:
        return _variable(0xA0, 0xB0, value)
    if type(value) is uuid.UUID:
        return b"\x98" + value.bytes
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64:
        return b"\x80" + value.to_bytes(8, "big")  # a ulong, as it was read
    raise TypeError(f"a correlation-id of type {type(value).__name__} is not read from AMQP")


def _text(value: object) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"an application property of type {type(value).__name__}")
    return _variable(0xA1, 0xB1, value.encode("utf-8"))


def _variable(short: int, long: int, data: bytes) -> bytes:
    if len(data) < 256:
        return bytes((short, len(data))) + data
    return bytes((long,)) + len(data).to_bytes(4, "big") + data


def _compound(short: int, long: int, count: int, items: bytes) -> bytes:
    """A list or map of ``count`` encoded items."""
    if len(items) < 255 and count < 256:
        return bytes((short, len(items) + 1, count)) + items
    return bytes((long,)) + struct.pack(">II", len(items) + 4, count) + items
