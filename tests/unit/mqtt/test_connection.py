"""The per-connection state machine, driven with bytes only."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    encode,
)
from dpsd.mqtt.connection import (
    Closed,
    ConnectRequested,
    MqttConnection,
    RequestReceived,
    State,
)
from dpsd.mqtt.topics import OperationStatusRequest, RegisterRequest

CONNECT = Connect(
    "dev-1", 60, False, "0ne00000001/registrations/dev-1/api-version=2019-03-31", b"sas"
)
REGISTER = Publish(
    "$dps/registrations/PUT/iotdps-register/?$rid=1", b'{"registrationId":"dev-1"}', 1, 5
)


def sent(connection: MqttConnection) -> list[object]:
    return list(PacketReader().feed(connection.data_to_send()))


def connected() -> MqttConnection:
    connection = MqttConnection()
    assert connection.receive_data(encode(CONNECT)) == [ConnectRequested(CONNECT)]
    connection.accept()
    assert sent(connection) == [ConnAck(False, ConnectReturnCode.ACCEPTED)]
    return connection


def test_a_device_connects_subscribes_registers_and_polls() -> None:
    connection = connected()
    subscribe = Subscribe(2, (("$dps/registrations/res/#", 1), ("devices/#", 0)))
    assert connection.receive_data(encode(subscribe)) == []
    assert sent(connection) == [SubAck(2, (1, 0x80))]
    events = connection.receive_data(encode(REGISTER))
    assert events == [RequestReceived(RegisterRequest("1"), REGISTER.payload)]
    assert sent(connection) == [PubAck(5)]
    connection.respond("1", 202, b'{"status":"assigning"}', retry_after=3)
    assert sent(connection) == [
        Publish("$dps/registrations/res/202/?$rid=1&retry-after=3", b'{"status":"assigning"}')
    ]
    poll = Publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=op", b" ")
    assert connection.receive_data(encode(poll) + encode(PingReq())) == [
        RequestReceived(OperationStatusRequest("2", "op"), b" ")
    ]
    assert sent(connection) == [PingResp()]
    assert connection.receive_data(encode(Disconnect())) == [Closed("the device disconnected")]
    assert connection.closed


def test_refusals() -> None:
    first = MqttConnection()
    assert isinstance(first.receive_data(encode(PingReq()))[0], Closed)
    old = MqttConnection()
    (event,) = old.receive_data(
        encode(Connect("dev", 60, True, protocol_name="MQIsdp", protocol_level=3))
    )
    assert isinstance(event, Closed)
    assert sent(old) == [ConnAck(False, ConnectReturnCode.UNACCEPTABLE_PROTOCOL_VERSION)]
    unnamed = MqttConnection()
    unnamed.receive_data(encode(Connect("", 60, True)))
    assert sent(unnamed) == [ConnAck(False, ConnectReturnCode.IDENTIFIER_REJECTED)]
    unauthorised = MqttConnection()
    unauthorised.receive_data(encode(CONNECT))
    unauthorised.refuse(ConnectReturnCode.NOT_AUTHORIZED)
    assert sent(unauthorised) == [ConnAck(False, ConnectReturnCode.NOT_AUTHORIZED)]
    assert unauthorised.state == State.CLOSED


def test_a_broker_style_publish_closes_the_connection() -> None:
    connection = connected()
    (event,) = connection.receive_data(encode(Publish("devices/dev-1/messages/events/", b"x")))
    assert isinstance(event, Closed)
    assert "not a DPS registration topic" in event.reason
    assert connection.receive_data(encode(REGISTER)) == []


def test_a_second_connect_closes_the_connection() -> None:
    connection = connected()
    (event,) = connection.receive_data(encode(CONNECT))
    assert isinstance(event, Closed)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(garbage=st.binary(max_size=300))
def test_garbage_after_connect_never_raises(garbage: bytes) -> None:
    connection = connected()
    events = connection.receive_data(garbage)
    assert all(isinstance(event, RequestReceived | Closed) for event in events)
    connection.data_to_send()


SUBSCRIBE = Subscribe(2, (("$dps/registrations/res/#", 1),))


def test_packets_pipelined_after_connect_wait_for_its_answer() -> None:
    """MQTT 3.1.1 lets a client send packets right after CONNECT, without waiting for the
    CONNACK: they are held until the CONNECT is accepted, then handled in order."""
    connection = MqttConnection()
    pipelined = encode(CONNECT) + encode(SUBSCRIBE) + encode(REGISTER) + encode(PingReq())
    assert connection.receive_data(pipelined) == [ConnectRequested(CONNECT)]
    assert sent(connection) == []
    assert connection.accept() == [RequestReceived(RegisterRequest("1"), REGISTER.payload)]
    assert sent(connection) == [
        ConnAck(False, ConnectReturnCode.ACCEPTED),
        SubAck(2, (1,)),
        PubAck(5),
        PingResp(),
    ]


def test_packets_pipelined_after_a_refused_connect_are_dropped() -> None:
    connection = MqttConnection()
    connection.receive_data(encode(CONNECT) + encode(SUBSCRIBE) + encode(REGISTER))
    connection.refuse(ConnectReturnCode.NOT_AUTHORIZED)
    assert sent(connection) == [ConnAck(False, ConnectReturnCode.NOT_AUTHORIZED)]
    assert connection.receive_data(encode(PingReq())) == []
    assert sent(connection) == []


DEVICE_STREAM = b"".join(
    encode(packet)
    for packet in (
        CONNECT,
        SUBSCRIBE,
        REGISTER,
        Publish("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=2&operationId=op", b""),
        PingReq(),
        Disconnect(),
    )
)


def run(chunks: list[bytes]) -> tuple[list[object], bytes]:
    """Feed ``chunks`` as a shell would, accepting the CONNECT: every event and every byte
    the connection answers, in order."""
    connection = MqttConnection()
    events: list[object] = []
    answered = b""
    for chunk in chunks:
        for event in connection.receive_data(chunk):
            events.append(event)
            if isinstance(event, ConnectRequested):
                events += connection.accept()
        answered += connection.data_to_send()
    return events, answered


@settings(max_examples=300, deadline=None, derandomize=True)
@given(cuts=st.lists(st.integers(0, len(DEVICE_STREAM)), max_size=12))
def test_any_split_of_a_stream_gives_the_same_result(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(DEVICE_STREAM)]
    chunks = [DEVICE_STREAM[start:end] for start, end in itertools.pairwise(bounds)]
    assert run(chunks) == run([DEVICE_STREAM])
    events, _ = run([DEVICE_STREAM])
    assert [type(event) for event in events] == [
        ConnectRequested,
        RequestReceived,
        RequestReceived,
        Closed,
    ]
