"""MQTT 3.1.1 packets to and from bytes, with no I/O.

``PacketReader.feed(data)`` takes whatever arrived on a connection and returns the complete
packets it holds, keeping partial ones for the next call; anything that breaks the
specification raises ``MalformedPacket`` and the connection should be closed.
``encode(packet)`` gives the bytes of a packet.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

MAX_REMAINING_LENGTH = 268_435_455
MQTT_311 = 4


class MalformedPacket(Exception):
    """Bytes that are not MQTT 3.1.1."""


class PacketTooLarge(MalformedPacket):
    """A packet larger than the connection allows."""


class PacketType(enum.IntEnum):
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class ConnectReturnCode(enum.IntEnum):
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


SUBACK_FAILURE = 0x80


@dataclass(frozen=True, slots=True)
class Will:
    topic: str
    message: bytes
    qos: int
    retain: bool


@dataclass(frozen=True, slots=True)
class Connect:
    client_id: str
    keep_alive: int
    clean_session: bool
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = MQTT_311


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    return_code: ConnectReturnCode


@dataclass(frozen=True, slots=True)
class Publish:
    topic: str
    payload: bytes
    qos: int = 0
    packet_id: int | None = None
    retain: bool = False
    dup: bool = False


@dataclass(frozen=True, slots=True)
class PubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    pass


@dataclass(frozen=True, slots=True)
class PingResp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    pass


@dataclass(frozen=True, slots=True)
class Unsupported:
    """A well-formed packet DPS does not use (QoS 2 handshakes): refused by the connection."""

    packet_type: PacketType


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
    | Unsupported
)

# --- reading --------------------------------------------------------------------------


class _Cursor:
    """Reads the fields of one packet, ``data[offset:stop]``, without copying the rest."""

    __slots__ = ("data", "offset", "stop")

    def __init__(self, data: bytes, offset: int, stop: int) -> None:
        self.data = data
        self.offset = offset
        self.stop = stop

    def remaining(self) -> int:
        return self.stop - self.offset

    def take(self, count: int) -> bytes:
        start = self.offset
        end = start + count
        if end > self.stop:
            raise MalformedPacket("a packet is shorter than its fields say")
        self.offset = end
        return self.data[start:end]

    def byte(self) -> int:
        offset = self.offset
        if offset >= self.stop:
            raise MalformedPacket("a packet is shorter than its fields say")
        self.offset = offset + 1
        return self.data[offset]

    def uint16(self) -> int:
        offset = self.offset
        if offset + 2 > self.stop:
            raise MalformedPacket("a packet is shorter than its fields say")
        self.offset = offset + 2
        data = self.data
        return data[offset] << 8 | data[offset + 1]

    def binary(self) -> bytes:
        return self.take(self.uint16())

    def text(self) -> str:
        raw = self.take(self.uint16())
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise MalformedPacket("a string is not UTF-8") from error
        if "\x00" in value:
            raise MalformedPacket("a string holds U+0000")
        return value

    def packet_id(self) -> int:
        value = self.uint16()
        if value == 0:
            raise MalformedPacket("packet identifier 0")
        return value

    def end(self) -> None:
        if self.offset != self.stop:
            raise MalformedPacket("a packet is longer than its fields")


_FIXED_FLAGS = {
    PacketType.PUBREL: 0b0010,
    PacketType.SUBSCRIBE: 0b0010,
    PacketType.UNSUBSCRIBE: 0b0010,
}


def _decode_connect(cursor: _Cursor) -> Connect:
    protocol_name = cursor.text()
    protocol_level = cursor.byte()
    flags = cursor.byte()
    if flags & 0x01:
        raise MalformedPacket("the CONNECT reserved flag is set")
    keep_alive = cursor.uint16()
    client_id = cursor.text()
    will = None
    will_qos = (flags >> 3) & 0x03
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will = Will(cursor.text(), cursor.binary(), will_qos, bool(flags & 0x20))
    elif will_qos or flags & 0x20:
        raise MalformedPacket("will QoS or retain without a will")
    username = cursor.text() if flags & 0x80 else None
    if flags & 0x40 and not flags & 0x80:
        raise MalformedPacket("a password without a user name")
    password = cursor.binary() if flags & 0x40 else None
    cursor.end()
    return Connect(
        client_id=client_id,
        keep_alive=keep_alive,
        clean_session=bool(flags & 0x02),
        username=username,
        password=password,
        will=will,
        protocol_name=protocol_name,
        protocol_level=protocol_level,
    )


def _decode_publish(flags: int, cursor: _Cursor) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if qos == 0 and dup:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")
    topic = cursor.text()
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("a PUBLISH topic is empty or holds a wildcard")
    packet_id = cursor.packet_id() if qos else None
    payload = cursor.take(cursor.remaining())
    return Publish(topic, payload, qos, packet_id, bool(flags & 0x01), dup)


def _decode_subscribe(cursor: _Cursor) -> Subscribe:
    packet_id = cursor.packet_id()
    subscriptions = []
    while cursor.remaining():
        topic_filter = cursor.text()
        options = cursor.byte()
        if options & 0xFC or (options & 0x03) == 3:
            raise MalformedPacket("a SUBSCRIBE option byte is invalid")
        subscriptions.append((topic_filter, options & 0x03))
    if not subscriptions:
        raise MalformedPacket("a SUBSCRIBE without topic filters")
    return Subscribe(packet_id, tuple(subscriptions))


def _decode_unsubscribe(cursor: _Cursor) -> Unsubscribe:
    packet_id = cursor.packet_id()
    filters = []
    while cursor.remaining():
        filters.append(cursor.text())
    if not filters:
        raise MalformedPacket("an UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, tuple(filters))


def _decode_connack(cursor: _Cursor) -> ConnAck:
    acknowledge, code = cursor.byte(), cursor.byte()
    cursor.end()
    if acknowledge & 0xFE or code > 5:
        raise MalformedPacket("a CONNACK is invalid")
    return ConnAck(bool(acknowledge & 1), ConnectReturnCode(code))


def _decode_packet_id_only(cursor: _Cursor) -> int:
    packet_id = cursor.packet_id()
    cursor.end()
    return packet_id


def _decode_suback(cursor: _Cursor) -> SubAck:
    packet_id = cursor.packet_id()
    return SubAck(packet_id, tuple(cursor.take(cursor.remaining())))


def _empty(packet: Packet) -> Callable[[_Cursor], Packet]:
    def decode(cursor: _Cursor) -> Packet:
        cursor.end()
        return packet

    return decode


_DECODERS: dict[PacketType, Callable[[_Cursor], Packet]] = {
    PacketType.CONNECT: _decode_connect,
    PacketType.CONNACK: _decode_connack,
    PacketType.PUBACK: lambda cursor: PubAck(_decode_packet_id_only(cursor)),
    PacketType.SUBSCRIBE: _decode_subscribe,
    PacketType.SUBACK: _decode_suback,
    PacketType.UNSUBSCRIBE: _decode_unsubscribe,
    PacketType.UNSUBACK: lambda cursor: UnsubAck(_decode_packet_id_only(cursor)),
    PacketType.PINGREQ: _empty(PingReq()),
    PacketType.PINGRESP: _empty(PingResp()),
    PacketType.DISCONNECT: _empty(Disconnect()),
}


_PACKET_TYPES = {member.value: member for member in PacketType}


def decode_packet(first_byte: int, body: bytes, start: int = 0, stop: int | None = None) -> Packet:
    """One packet from its first byte and its remaining bytes (``body[start:stop]``)."""
    packet_type = _PACKET_TYPES.get(first_byte >> 4)
    if packet_type is None:
        raise MalformedPacket(f"packet type {first_byte >> 4} does not exist")
    flags = first_byte & 0x0F
    cursor = _Cursor(body, start, len(body) if stop is None else stop)
    if packet_type is PacketType.PUBLISH:
        return _decode_publish(flags, cursor)
    if flags != _FIXED_FLAGS.get(packet_type, 0):
        raise MalformedPacket(f"{packet_type.name} with flags {flags:04b}")
    decoder = _DECODERS.get(packet_type)
    if decoder is None:
        return Unsupported(packet_type)
    return decoder(cursor)


@dataclass(slots=True)
class PacketReader:
    """Turns a byte stream into packets; ``max_packet_size`` bounds every packet.

    Between calls it keeps only the start of a packet still coming: nothing, for a device
    whose packets each come whole. A packet that trickles in is gathered in one buffer and
    read once it is all there, so its bytes are copied a bounded number of times however
    small the pieces."""

    max_packet_size: int = 128 * 1024
    _partial: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Packet]:
        if self._partial:
            self._partial += data
            if not self._first_complete():
                return []
            data = bytes(self._partial)
            self._partial.clear()
        elif type(data) is not bytes:
            data = bytes(data)
        packets: list[Packet] = []
        start, size = 0, len(data)
        while start < size:
            bounds = self._bounds(data, start)
            if bounds is None or size - start < bounds[1]:
                self._partial += data[start:]
                break
            header_length, total = bounds
            packets.append(decode_packet(data[start], data, start + header_length, start + total))
            start += total
        return packets

    def _first_complete(self) -> bool:
        """The gathered bytes hold a whole packet (one too large raises)."""
        bounds = self._bounds(self._partial, 0)
        return bounds is not None and len(self._partial) >= bounds[1]

    def _bounds(self, data: bytes | bytearray, start: int) -> tuple[int, int] | None:
        """(length of the fixed header, size of the whole packet) of the packet at
        ``start``; None until its header is all here. Too large a packet raises as soon
        as its header says so."""
        header = _header(data, start)
        if header is None:
            return None
        total = header[0] + header[1]
        if total > self.max_packet_size:
            raise PacketTooLarge(f"a packet of {total} bytes; the limit is {self.max_packet_size}")
        return header[0], total


def _header(data: bytes | bytearray, start: int) -> tuple[int, int] | None:
    """(length of the fixed header, remaining length) of the packet at ``start``, or None
    until both are here."""
    multiplier, value = 1, 0
    for index in range(1, 5):
        if start + index >= len(data):
            return None
        byte = data[start + index]
        value += (byte & 0x7F) * multiplier
        if not byte & 0x80:
            return index + 1, value
        multiplier *= 128
    raise MalformedPacket("the remaining length takes more than four bytes")


# --- writing --------------------------------------------------------------------------


def _remaining_length(length: int) -> bytes:
    if length < 128:
        return _ONE_BYTE[length]
    if length > MAX_REMAINING_LENGTH:
        raise ValueError("a packet too large for MQTT")
    out = bytearray()
    while True:
        byte, length = length % 128, length // 128
        out.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(out)


_ONE_BYTE = [bytes([value]) for value in range(128)]


def _text(value: str) -> bytes:
    return _binary(value.encode("utf-8"))


def _binary(value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise ValueError("an MQTT string or binary field longer than 65535 bytes")
    return struct.pack("!H", len(value)) + value


def _frame(packet_type: PacketType, flags: int, body: bytes) -> bytes:
    return bytes([packet_type << 4 | flags]) + _remaining_length(len(body)) + body


def _encode_connect(packet: Connect) -> bytes:
    flags = 0x02 if packet.clean_session else 0
    body = bytearray(_text(packet.protocol_name))
    tail = bytearray(_text(packet.client_id))
    if packet.will is not None:
        flags |= 0x04 | packet.will.qos << 3 | (0x20 if packet.will.retain else 0)
        tail += _text(packet.will.topic) + _binary(packet.will.message)
    if packet.username is not None:
        flags |= 0x80
        tail += _text(packet.username)
    if packet.password is not None:
        flags |= 0x40
        tail += _binary(packet.password)
    body += bytes([packet.protocol_level, flags]) + struct.pack("!H", packet.keep_alive) + tail
    return _frame(PacketType.CONNECT, 0, bytes(body))


def _encode_publish(packet: Publish) -> bytes:
    flags = packet.qos << 1 | (0x08 if packet.dup else 0) | (0x01 if packet.retain else 0)
    body = _text(packet.topic)
    if packet.qos:
        body += struct.pack("!H", packet.packet_id or 0)
    return _frame(PacketType.PUBLISH, flags, body + packet.payload)


def _encode_subscribe(packet: Subscribe) -> bytes:
    body = struct.pack("!H", packet.packet_id)
    body += b"".join(_text(name) + bytes([qos]) for name, qos in packet.subscriptions)
    return _frame(PacketType.SUBSCRIBE, 0b0010, body)


def _encode_unsubscribe(packet: Unsubscribe) -> bytes:
    body = struct.pack("!H", packet.packet_id) + b"".join(_text(f) for f in packet.topic_filters)
    return _frame(PacketType.UNSUBSCRIBE, 0b0010, body)


def _packet_id_frame(packet_type: PacketType) -> Callable[[Any], bytes]:
    return lambda packet: _frame(packet_type, 0, struct.pack("!H", packet.packet_id))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    Connect: _encode_connect,
    ConnAck: lambda p: _frame(
        PacketType.CONNACK, 0, bytes([int(p.session_present), p.return_code])
    ),
    Publish: _encode_publish,
    PubAck: _packet_id_frame(PacketType.PUBACK),
    Subscribe: _encode_subscribe,
    SubAck: lambda p: _frame(
        PacketType.SUBACK, 0, struct.pack("!H", p.packet_id) + bytes(p.return_codes)
    ),
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _packet_id_frame(PacketType.UNSUBACK),
    PingReq: lambda _p: _frame(PacketType.PINGREQ, 0, b""),
    PingResp: lambda _p: _frame(PacketType.PINGRESP, 0, b""),
    Disconnect: lambda _p: _frame(PacketType.DISCONNECT, 0, b""),
}


def encode(packet: Packet) -> bytes:
    encoder = _ENCODERS.get(type(packet))
    if encoder is None:
        raise ValueError(f"{type(packet).__name__} is not written by dpsd")
    return encoder(packet)
