"""The bytes before the AMQP engine takes over: AMQP protocol headers and the five SASL
frames (mechanisms, init, challenge, response, outcome), pure.

Apart from the engine because SASL decides who the device is, before any AMQP frame: DPS
devices authenticate with PLAIN (their SAS token as the password) and the custom ``TPM``
mechanism. The frames need a small subset of the AMQP type system: null, booleans,
unsigned integers, binary, strings, symbols, lists and symbol arrays.

Limits: every frame dpsd sends must fit in 512 bytes (the AMQP minimum max-frame-size, and
what the C SDK's UAMQP accepts before OPEN); frames read may be larger (a C# TPM init can
be), up to what the reader is given.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

HEADER_SIZE = 8
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
MAX_SASL_FRAME_SENT = 512
SASL_FRAME_TYPE = 0x01
_FRAME_HEADER = struct.Struct(">IBBH")


class ProtocolId(enum.IntEnum):
    AMQP = 0
    TLS = 2
    SASL = 3


class SaslCode(enum.IntEnum):
    OK = 0
    AUTH = 1
    SYS = 2
    SYS_PERM = 3
    SYS_TEMP = 4


class SaslDecodeError(ValueError):
    """The bytes are not a SASL frame dpsd understands; the connection closes."""


@dataclass(frozen=True, slots=True)
class ProtocolHeader:
    protocol_id: int
    version: tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class SaslMechanisms:
    mechanisms: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SaslInit:
    mechanism: str
    initial_response: bytes | None = None
    hostname: str | None = None


@dataclass(frozen=True, slots=True)
class SaslChallenge:
    challenge: bytes


@dataclass(frozen=True, slots=True)
class SaslResponse:
    response: bytes


@dataclass(frozen=True, slots=True)
class SaslOutcome:
    code: SaslCode
    additional_data: bytes | None = None


SaslFrame = SaslMechanisms | SaslInit | SaslChallenge | SaslResponse | SaslOutcome

_DESCRIPTORS: dict[type[Any], tuple[int, str]] = {
    SaslMechanisms: (0x40, "amqp:sasl-mechanisms:list"),
    SaslInit: (0x41, "amqp:sasl-init:list"),
    SaslChallenge: (0x42, "amqp:sasl-challenge:list"),
    SaslResponse: (0x43, "amqp:sasl-response:list"),
    SaslOutcome: (0x44, "amqp:sasl-outcome:list"),
}
_BY_CODE = {code: kind for kind, (code, _) in _DESCRIPTORS.items()}
_BY_NAME = {name: kind for kind, (_, name) in _DESCRIPTORS.items()}


def parse_header(data: bytes) -> ProtocolHeader:
    """The 8-byte protocol header ``AMQP`` id major minor revision."""
    if len(data) != HEADER_SIZE or not data.startswith(b"AMQP"):
        raise SaslDecodeError("not an AMQP protocol header")
    return ProtocolHeader(data[4], (data[5], data[6], data[7]))


def could_be_header(data: bytes) -> bool:
    """Whether the first bytes seen so far may still begin a protocol header."""
    return b"AMQP".startswith(data[:4])


# --- frames ---------------------------------------------------------------------------------


def encode_frame(frame: SaslFrame, max_size: int = MAX_SASL_FRAME_SENT) -> bytes:
    code, _ = _DESCRIPTORS[type(frame)]
    body = b"\x00\x53" + bytes([code]) + _encode_list(_fields_of(frame))
    size = _FRAME_HEADER.size + len(body)
    if size > max_size:
        raise ValueError(f"a SASL frame of {size} bytes exceeds {max_size}")
    return _FRAME_HEADER.pack(size, 2, SASL_FRAME_TYPE, 0) + body


def read_frame(buffer: bytes | bytearray, max_size: int) -> tuple[SaslFrame | None, int]:
    """The first frame of ``buffer`` and the bytes it took; ``(None, 0)`` while incomplete,
    ``(None, n)`` for an empty (heartbeat) frame."""
    if len(buffer) < _FRAME_HEADER.size:
        return None, 0
    size, doff, kind, _ = _FRAME_HEADER.unpack_from(buffer)
    if size > max_size:
        raise SaslDecodeError(f"a SASL frame of {size} bytes exceeds {max_size}")
    if doff < 2 or size < doff * 4:
        raise SaslDecodeError("malformed frame header")
    if kind != SASL_FRAME_TYPE:
        raise SaslDecodeError(f"frame type {kind} during SASL")
    if len(buffer) < size:
        return None, 0
    body = bytes(buffer[doff * 4 : size])
    if not body:
        return None, size
    return decode_body(body), size


def decode_body(body: bytes) -> SaslFrame:
    reader = _Reader(body)
    if reader.byte() != 0x00:
        raise SaslDecodeError("a SASL frame body is a described list")
    descriptor = reader.value()
    kind = None
    if isinstance(descriptor, int) and not isinstance(descriptor, bool):
        kind = _BY_CODE.get(descriptor)
    elif isinstance(descriptor, str):
        kind = _BY_NAME.get(descriptor)
    if kind is None:
        raise SaslDecodeError(f"not a SASL performative: {descriptor!r}")
    fields = reader.value()
    if not isinstance(fields, list) or reader.remaining:
        raise SaslDecodeError("a SASL performative is one list")
    return _build(kind, fields)


def _fields_of(frame: SaslFrame) -> list[Any]:
    match frame:
        case SaslMechanisms(mechanisms=names):
            return [_SymbolArray(names)]
        case SaslInit(mechanism=name, initial_response=response, hostname=host):
            fields: list[Any] = [_Symbol(name), response, host]
        case SaslChallenge(challenge=data):
            return [data]
        case SaslResponse(response=data):
            return [data]
        case SaslOutcome(code=code, additional_data=data):
            fields = [_UByte(code), data]
    while fields and fields[-1] is None:
        fields.pop()
    return fields


def _build(kind: type[Any], fields: list[Any]) -> SaslFrame:
    fields = fields + [None] * (3 - len(fields))
    try:
        if kind is SaslMechanisms:
            names = fields[0] if isinstance(fields[0], list) else [fields[0]]
            return SaslMechanisms(tuple(_text(name, "mechanism") for name in names))
        if kind is SaslInit:
            return SaslInit(
                _text(fields[0], "mechanism"),
                _binary(fields[1], optional=True),
                None if fields[2] is None else _text(fields[2], "hostname"),
            )
        if kind is SaslChallenge:
            return SaslChallenge(_binary(fields[0]) or b"")
        if kind is SaslResponse:
            return SaslResponse(_binary(fields[0]) or b"")
        if not isinstance(fields[0], int) or isinstance(fields[0], bool):
            raise SaslDecodeError("the outcome code must be a ubyte")
        return SaslOutcome(SaslCode(fields[0]), _binary(fields[1], optional=True))
    except ValueError as error:
        raise SaslDecodeError(str(error)) from error


def _text(value: Any, name: str) -> str:
    """A symbol or a string (clients differ; both are read)."""
    if not isinstance(value, str):
        raise SaslDecodeError(f"the {name} must be a symbol or a string")
    return str(value)


def _binary(value: Any, *, optional: bool = False) -> bytes | None:
    if value is None and optional:
        return None
    if not isinstance(value, bytes):
        raise SaslDecodeError("expected binary")
    return value


# --- the type subset ------------------------------------------------------------------------


class _Symbol(str):
    """An AMQP symbol (ASCII), as opposed to a string."""


class _UByte(int):
    pass


@dataclass(frozen=True, slots=True)
class _SymbolArray:
    names: tuple[str, ...]


def _encode_value(value: Any) -> bytes:
    match value:
        case None:
            return b"\x40"
        case _UByte():
            return bytes([0x50, value])
        case _Symbol():
            return _variable(0xA3, 0xB3, value.encode("ascii"))
        case str():
            return _variable(0xA1, 0xB1, value.encode("utf-8"))
        case bytes():
            return _variable(0xA0, 0xB0, value)
        case _SymbolArray(names=names):
            return _symbol_array(names)
    raise TypeError(f"cannot encode {type(value).__name__} in a SASL frame")


def _variable(short: int, long: int, data: bytes) -> bytes:
    if len(data) < 256:
        return bytes([short, len(data)]) + data
    return bytes([long]) + struct.pack(">I", len(data)) + data


def _symbol_array(names: tuple[str, ...]) -> bytes:
    elements = b"".join(bytes([len(name)]) + name.encode("ascii") for name in names)
    return bytes([0xE0, 2 + len(elements), len(names), 0xA3]) + elements


def _encode_list(fields: list[Any]) -> bytes:
    if not fields:
        return b"\x45"
    items = b"".join(_encode_value(field) for field in fields)
    if len(items) + 1 < 256:
        return bytes([0xC0, len(items) + 1, len(fields)]) + items
    return b"\xd0" + struct.pack(">II", len(items) + 4, len(fields)) + items


_FIXED = {0x40: None, 0x41: True, 0x42: False, 0x43: 0, 0x44: 0}
_SIZES = {0x50: 1, 0x52: 1, 0x53: 1, 0x56: 1, 0x60: 2, 0x70: 4, 0x80: 8}
# Variable-width and compound constructors: (kind, width of the size and count fields).
_SHAPES = {
    0xA0: ("binary", 1),
    0xB0: ("binary", 4),
    0xA1: ("string", 1),
    0xB1: ("string", 4),
    0xA3: ("symbol", 1),
    0xB3: ("symbol", 4),
    0xC0: ("list", 1),
    0xD0: ("list", 4),
    0xE0: ("array", 1),
    0xF0: ("array", 4),
}


_MAX_DEPTH = 3  # a performative's list holding an array is as deep as SASL goes


class _Reader:
    """Decodes the type subset from bytes; anything else is a SaslDecodeError."""

    def __init__(self, data: bytes, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise SaslDecodeError("lists nested deeper than SASL frames go")
        self._data = data
        self._at = 0
        self._depth = depth

    @property
    def remaining(self) -> int:
        return len(self._data) - self._at

    def byte(self) -> int:
        return self.take(1)[0]

    def take(self, count: int) -> bytes:
        if count > self.remaining:
            raise SaslDecodeError("truncated SASL frame")
        chunk = self._data[self._at : self._at + count]
        self._at += count
        return chunk

    def number(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")

    def value(self) -> Any:
        return self.value_of(self.byte())

    def value_of(self, constructor: int) -> Any:
        if constructor in _FIXED:
            return _FIXED[constructor]
        if constructor == 0x45:
            return []
        if constructor in _SIZES:
            number = self.number(_SIZES[constructor])
            return bool(number) if constructor == 0x56 else number
        if constructor not in _SHAPES:
            raise SaslDecodeError(f"unexpected AMQP type 0x{constructor:02x} in a SASL frame")
        kind, width = _SHAPES[constructor]
        data = self.take(self.number(width))
        if kind == "binary":
            return data
        if kind in ("string", "symbol"):
            return _decode_text(data, symbol=kind == "symbol")
        return _Reader(data, self._depth + 1).items(width, array=kind == "array")

    def items(self, width: int, *, array: bool) -> list[Any]:
        count = self.number(width)
        if array:
            constructor = self.byte()
            items = [self.value_of(constructor) for _ in range(count)]
        else:
            items = [self.value() for _ in range(count)]
        if self.remaining:
            raise SaslDecodeError("a list or array is longer than its items")
        return items


def _decode_text(data: bytes, *, symbol: bool) -> str:
    try:
        text = data.decode("ascii" if symbol else "utf-8")
    except UnicodeDecodeError as error:
        raise SaslDecodeError("undecodable text") from error
    return _Symbol(text) if symbol else text
