"""One device's MQTT connection as a state machine: bytes in, events and bytes out, no I/O.

DPS is not a broker: a device connects (CONNECT), subscribes to its responses, publishes
register and poll requests, and gets each answer on ``$dps/registrations/res/...``. Anything
else closes the connection: a first packet other than CONNECT, a second CONNECT, a publish
outside the DPS request topics, QoS 2, malformed bytes. A subscription to anything but the
response topics is refused in the SUBACK.

MQTT 3.1.1 lets a client send packets right after CONNECT without waiting for the CONNACK
(paho subscribes at once): they wait, in order, until the application accepts the CONNECT,
and are dropped if it refuses it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from dpsd.mqtt.codec import (
    MQTT_311,
    SUBACK_FAILURE,
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    encode,
)
from dpsd.mqtt.topics import (
    DeviceRequest,
    InvalidTopic,
    is_response_filter,
    parse_request,
    response_topic,
)


class State(enum.Enum):
    AWAITING_CONNECT = "awaiting connect"
    AWAITING_ACCEPTANCE = "awaiting acceptance"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ConnectRequested:
    """The application decides: ``accept()`` or ``refuse(code)``."""

    connect: Connect


@dataclass(frozen=True, slots=True)
class RequestReceived:
    request: DeviceRequest
    payload: bytes


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = ConnectRequested | RequestReceived | Closed


@dataclass(slots=True)
class MqttConnection:
    max_packet_size: int = 128 * 1024
    state: State = State.AWAITING_CONNECT
    keep_alive: int = 0
    _reader: PacketReader = field(init=False)
    _outbound: bytearray = field(default_factory=bytearray)
    _waiting: list[Packet] = field(default_factory=list)
    """Packets read but not handled yet: those after a CONNECT not answered yet (a list:
    a few at most, and an empty deque would keep a 600-byte block per idle device)."""

    def __post_init__(self) -> None:
        self._reader = PacketReader(self.max_packet_size)

    def receive_data(self, data: bytes) -> list[Event]:
        if self.state == State.CLOSED:
            return []
        try:
            self._waiting.extend(self._reader.feed(data))
        except MalformedPacket as error:
            return [self._close(f"malformed packet: {error}")]
        return self._handle_waiting()

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def data_to_send(self) -> bytes:
        data = bytes(self._outbound)
        self._outbound.clear()
        return data

    def accept(self) -> list[Event]:
        """Accept the CONNECT; the events of the packets that came after it."""
        if self.state != State.AWAITING_ACCEPTANCE:
            return []
        self._send(ConnAck(False, ConnectReturnCode.ACCEPTED))
        self.state = State.CONNECTED
        return self._handle_waiting()

    def refuse(self, code: ConnectReturnCode) -> Closed:
        self._send(ConnAck(False, code))
        return self._close(f"CONNECT refused: {code.name}")

    def respond(self, rid: str, status: int, body: bytes, retry_after: int | None = None) -> None:
        """Answer a request on the response topic (QoS 0, as the answer can be asked again)."""
        if self.state == State.CONNECTED:
            self._send(Publish(response_topic(status, rid, retry_after), body))

    def close(self, reason: str) -> Closed:
        return self._close(reason)

    def _handle_waiting(self) -> list[Event]:
        """Handle the packets waiting, in order, until the CONNECT awaits its answer."""
        events: list[Event] = []
        while self._waiting and self.state in (State.AWAITING_CONNECT, State.CONNECTED):
            event = self._handle(self._waiting.pop(0))
            if event is not None:
                events.append(event)
        return events

    def _handle(self, packet: Packet) -> Event | None:
        if self.state == State.AWAITING_CONNECT:
            if not isinstance(packet, Connect):
                return self._close(f"the first packet must be CONNECT, not {type(packet).__name__}")
            return self._on_connect(packet)
        match packet:
            case Publish():
                return self._on_publish(packet)
            case Subscribe():
                codes = tuple(
                    min(qos, 1) if is_response_filter(name) else SUBACK_FAILURE
                    for name, qos in packet.subscriptions
                )
                self._send(SubAck(packet.packet_id, codes))
            case Unsubscribe():
                self._send(UnsubAck(packet.packet_id))
            case PingReq():
                self._send(PingResp())
            case PubAck():
                pass  # the device acknowledges an answer
            case Disconnect():
                return self._close("the device disconnected")
            case _:
                return self._close(f"{type(packet).__name__} is not part of the DPS protocol")
        return None

    def _on_connect(self, packet: Connect) -> Event:
        self.keep_alive = packet.keep_alive
        if packet.protocol_name != "MQTT" or packet.protocol_level != MQTT_311:
            return self.refuse(ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)
        if not packet.client_id:
            return self.refuse(ConnectReturnCode.IDENTIFIER_REJECTED)
        self.state = State.AWAITING_ACCEPTANCE
        return ConnectRequested(packet)

    def _on_publish(self, packet: Publish) -> Event:
        try:
            request = parse_request(packet.topic)
        except InvalidTopic as error:
            return self._close(f"publish refused: {error}")
        if packet.qos == 1 and packet.packet_id is not None:
            self._send(PubAck(packet.packet_id))
        return RequestReceived(request, packet.payload)

    def _send(self, packet: Packet) -> None:
        self._outbound += encode(packet)

    def _close(self, reason: str) -> Closed:
        self.state = State.CLOSED
        self._waiting.clear()
        return Closed(reason)
