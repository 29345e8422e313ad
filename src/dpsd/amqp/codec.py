"""The bytes before the AMQP engine takes over: AMQP protocol headers and the five SASL
frames (mechanisms, init, challenge, response, outcome), pure.

Apart from the engine because SASL decides who the device is, before any AMQP frame: DPS
devices authenticate with PLAIN (their SAS token as the password) and the custom ``TPM``
mechanism. Their values are read and written by ``dpsd.amqp.types``.

Limits: every frame dpsd sends must fit in 512 bytes (the AMQP minimum max-frame-size, and
what the C SDK's UAMQP accepts before OPEN); frames read may be larger (a C# TPM init can
be), up to what the reader is given.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

from dpsd.amqp import types

HEADER_SIZE = 8
AMQP_HEADER = b"AMQP\x00\x01\x00\x00"
SASL_HEADER = b"AMQP\x03\x01\x00\x00"
MAX_SASL_FRAME_SENT = 512
SASL_FRAME_TYPE = 0x01
FRAME_HEADER = struct.Struct(">IBBH")  # size, data offset, type, channel: SASL and AMQP


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
    body = types.described(code, types.list_of(*_fields_of(frame)))
    size = FRAME_HEADER.size + len(body)
    if size > max_size:
        raise ValueError(f"a SASL frame of {size} bytes exceeds {max_size}")
    return FRAME_HEADER.pack(size, 2, SASL_FRAME_TYPE, 0) + body


def read_frame(buffer: bytes | bytearray, max_size: int) -> tuple[SaslFrame | None, int]:
    """The first frame of ``buffer`` and the bytes it took; ``(None, 0)`` while incomplete,
    ``(None, n)`` for an empty (heartbeat) frame."""
    if len(buffer) < FRAME_HEADER.size:
        return None, 0
    size, doff, kind, _ = FRAME_HEADER.unpack_from(buffer)
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
    if not body or body[0] != 0x00:
        raise SaslDecodeError("a SASL frame body is a described list")
    try:
        descriptor, at = types.decode(body, 1)
        fields, end = types.decode(body, at)
    except types.DecodeError as error:
        raise SaslDecodeError(str(error)) from error
    kind = None
    if isinstance(descriptor, int) and not isinstance(descriptor, bool):
        kind = _BY_CODE.get(descriptor)
    elif isinstance(descriptor, str):
        kind = _BY_NAME.get(descriptor)
    if kind is None:
        raise SaslDecodeError(f"not a SASL performative: {descriptor!r}")
    if not isinstance(fields, list) or end != len(body):
        raise SaslDecodeError("a SASL performative is one list")
    return _build(kind, fields)


def _fields_of(frame: SaslFrame) -> list[bytes]:
    match frame:
        case SaslMechanisms(mechanisms=names):
            return [types.symbol_array(names)]
        case SaslInit(mechanism=name, initial_response=response, hostname=host):
            return [
                types.symbol(name),
                types.NULL if response is None else types.binary(response),
                types.NULL if host is None else types.string(host),
            ]
        case SaslChallenge(challenge=data):
            return [types.binary(data)]
        case SaslResponse(response=data):
            return [types.binary(data)]
        case SaslOutcome(code=code, additional_data=data):
            return [types.ubyte(code), types.NULL if data is None else types.binary(data)]


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
