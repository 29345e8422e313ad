"""The MQTT 3.1.1 codec: round trips, byte-at-a-time streams, and hostile bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    PacketTooLarge,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Unsupported,
    Will,
    encode,
)

FAST = settings(max_examples=150, deadline=None, derandomize=True)
texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)
topics = texts.filter(lambda t: t and "+" not in t and "#" not in t)
packet_ids = st.integers(min_value=1, max_value=0xFFFF)


@st.composite
def publishes(draw: st.DrawFn) -> Publish:
    qos = draw(st.integers(0, 1))
    return Publish(
        topic=draw(topics),
        payload=draw(st.binary(max_size=300)),
        qos=qos,
        packet_id=draw(packet_ids) if qos else None,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
    )


@st.composite
def connects(draw: st.DrawFn) -> Connect:
    username = draw(st.none() | texts)
    will = draw(
        st.none()
        | st.builds(Will, topics, st.binary(max_size=20), st.integers(0, 2), st.booleans())
    )
    return Connect(
        client_id=draw(texts),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        clean_session=draw(st.booleans()),
        username=username,
        password=draw(st.none() | st.binary(max_size=300)) if username is not None else None,
        will=will,
    )


packets: st.SearchStrategy[Packet] = st.one_of(
    connects(),
    publishes(),
    st.builds(ConnAck, st.booleans(), st.sampled_from(ConnectReturnCode)),
    st.builds(PubAck, packet_ids),
    st.builds(
        Subscribe,
        packet_ids,
        st.lists(st.tuples(texts, st.integers(0, 2)), min_size=1, max_size=4).map(tuple),
    ),
    st.builds(
        SubAck, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), max_size=4).map(tuple)
    ),
    st.builds(Unsubscribe, packet_ids, st.lists(texts, min_size=1, max_size=4).map(tuple)),
    st.builds(UnsubAck, packet_ids),
    st.just(PingReq()),
    st.just(PingResp()),
    st.just(Disconnect()),
)


@FAST
@given(packet=packets)
def test_every_packet_round_trips(packet: Packet) -> None:
    assert PacketReader().feed(encode(packet)) == [packet]


@FAST
@given(
    sequence=st.lists(packets, min_size=1, max_size=5),
    cuts=st.lists(st.integers(0, 2000), max_size=6),
)
def test_a_stream_cut_anywhere_gives_the_same_packets(
    sequence: list[Packet], cuts: list[int]
) -> None:
    stream = b"".join(encode(packet) for packet in sequence)
    reader = PacketReader()
    received: list[Packet] = []
    start = 0
    for cut in sorted({min(cut, len(stream)) for cut in cuts} | {len(stream)}):
        received += reader.feed(stream[start:cut])
        start = cut
    assert received == sequence


@FAST
@given(data=st.binary(max_size=400))
def test_hostile_bytes_raise_only_malformed_packet(data: bytes) -> None:
    reader = PacketReader(max_packet_size=256)
    try:
        for index in range(0, len(data), 7):
            reader.feed(data[index : index + 7])
    except MalformedPacket:
        pass


@FAST
@given(packet=packets, flip=st.integers(0, 10_000), value=st.integers(0, 255))
def test_mutated_packets_raise_only_malformed_packet(packet: Packet, flip: int, value: int) -> None:
    data = bytearray(encode(packet))
    data[flip % len(data)] = value
    with contextlib.suppress(MalformedPacket):
        PacketReader().feed(bytes(data))


def test_the_packets_a_dps_device_sends() -> None:
    connect = Connect(
        client_id="dev-1",
        keep_alive=60,
        clean_session=False,
        username="0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=x",
        password=b"SharedAccessSignature sr=...",
    )
    register = Publish(
        "$dps/registrations/PUT/iotdps-register/?$rid=1", b'{"registrationId":"dev-1"}', 1, 7
    )
    assert PacketReader().feed(encode(connect) + encode(register)) == [connect, register]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (bytes([0x00, 0x00]), "packet type 0"),
        (bytes([0xF0, 0x00]), "packet type 15"),
        (bytes([0x82, 0x02, 0x00, 0x01]), "without topic filters"),
        (bytes([0x80, 0x00]), "flags"),
        (bytes([0x36, 0x00]), "QoS 3"),
        (bytes([0x38, 0x03, 0x00, 0x01, 0x61]), "DUP"),
        (bytes([0x30, 0x04, 0x00, 0x02, 0x61, 0x2B]), "wildcard"),
        (bytes([0x40, 0x02, 0x00, 0x00]), "identifier 0"),
        (bytes([0xC0, 0x01, 0x00]), "longer"),
        (bytes([0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01]), "four bytes"),
        (bytes([0x30, 0x03, 0x00, 0x01, 0xFF]), "UTF-8"),
    ],
)
def test_malformed_packets_are_named(data: bytes, reason: str) -> None:
    with pytest.raises(MalformedPacket, match=reason):
        PacketReader().feed(data)


def test_packets_over_the_limit_are_refused_before_they_arrive() -> None:
    header = bytes([0x30, 0x80, 0x80, 0x04])  # a PUBLISH announcing 65536 bytes
    with pytest.raises(PacketTooLarge):
        PacketReader(max_packet_size=1024).feed(header)


def test_qos2_handshakes_are_reported_as_unsupported() -> None:
    assert PacketReader().feed(bytes([0x50, 0x02, 0x00, 0x01])) == [Unsupported(PacketType.PUBREC)]
    with pytest.raises(ValueError, match="not written"):
        encode(Unsupported(PacketType.PUBREC))
