"""Device WebSockets (dpsd.devices.websocket) without sockets: whatever the split of the
frames into reads, every byte of every message reaches the device protocol once and in
order, and its answers come back as binary messages; whatever garbage follows the upgrade,
nothing escapes, the connection is closed and its place given back; whatever a forwarded
header says, the device's address is the peer's or one it names, and only a trusted
proxy's is taken."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from websockets.datastructures import Headers
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import Protocol, Side, State

from dpsd.devices.listener import Admission, ConnectionLimits
from dpsd.devices.websocket import DeviceWebSocket, DeviceWebSockets, client_address
from tests.unit.devices.test_stream_device import (
    EchoConnection,
    FakeTransport,
    listener,
    settled,
)

UPGRADE = (
    b"GET /$iothub/websocket HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
)


def upgraded(
    admission: Admission, connection: EchoConnection
) -> tuple[DeviceWebSocket, FakeTransport]:
    websockets = DeviceWebSockets([listener(connection, admission)])
    websocket = websockets(
        config=SimpleNamespace(proxy_headers=True, forwarded_allow_ips="127.0.0.1"),
        server_state=SimpleNamespace(connections=set()),
    )
    transport = FakeTransport()
    websocket.connection_made(transport)
    websocket.data_received(UPGRADE)
    head, _, _ = bytes(transport.written).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    transport.written.clear()
    return websocket, transport


def client_frames(messages: list[bytes], fragment: int = 0, pings: bytes = b"") -> bytes:
    """What a client sends for ``messages``, each a binary message (masked); with
    ``fragment``, a message longer than that is sent in fragments of that size; with
    ``pings``, a ping carrying it goes before every frame (inside fragmented messages too,
    as RFC 6455 allows control frames there)."""
    client = Protocol(Side.CLIENT, state=State.OPEN)
    for message in messages:
        parts = [message]
        if fragment:
            parts = [message[at : at + fragment] for at in range(0, len(message), fragment)]
        for index, part in enumerate(parts, start=1):
            if pings:
                client.send_ping(pings)
            if index == 1:
                client.send_binary(part, fin=len(parts) == 1)
            else:
                client.send_continuation(part, fin=index == len(parts))
    return b"".join(client.data_to_send())


def server_frames(written: bytes, opcode: Opcode = Opcode.BINARY) -> list[bytes]:
    """The payloads of the ``opcode`` frames in what the server wrote (as a client reads
    them): by default its binary messages."""
    client = Protocol(Side.CLIENT, state=State.OPEN)
    client.receive_data(written)
    return [
        bytes(event.data)
        for event in client.events_received()
        if isinstance(event, Frame) and event.opcode is opcode
    ]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[start:end] for start, end in itertools.pairwise(points) if end > start]


async def framed(messages: list[bytes], cuts: list[int], fragment: int, pings: bytes) -> None:
    connection = EchoConnection()
    websocket, transport = upgraded(Admission(), connection)
    for chunk in split(client_frames(messages, fragment, pings), cuts):
        websocket.data_received(chunk)
        await asyncio.sleep(0)
    await settled()
    assert b"".join(connection.received) == b"".join(messages)
    answers = server_frames(bytes(transport.written))
    assert b"".join(answers) == b"".join(b"<" + part + b">" for part in connection.received)
    if pings:
        pongs = server_frames(bytes(transport.written), Opcode.PONG)
        data_frames = sum(-(-len(message) // (fragment or len(message))) for message in messages)
        assert pongs == [pings] * data_frames  # a ping before each
    assert transport.how is None  # still open
    assert not websocket.reading_frame  # every frame whole: no parser kept between them


@settings(max_examples=100, deadline=None)
@given(
    messages=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
    fragment=st.integers(min_value=0, max_value=64),
    pings=st.sampled_from([b"", b"?", b"p" * 125]),
)
def test_messages_split_anywhere_reach_the_device_in_order(
    messages: list[bytes], cuts: list[int], fragment: int, pings: bytes
) -> None:
    asyncio.run(framed(messages, cuts, fragment, pings))


async def test_frames_of_every_length_encoding_leave_no_parser_behind() -> None:
    connection = EchoConnection()
    websocket, transport = upgraded(Admission(), connection)
    messages = [b"s" * 125, b"m" * 126, b"l" * 70_000]
    data = client_frames(messages)
    websocket.data_received(data[:-1])
    assert websocket.reading_frame
    websocket.data_received(data[-1:])
    await settled()
    assert not websocket.reading_frame
    assert b"".join(connection.received) == b"".join(messages)
    ping = Protocol(Side.CLIENT, state=State.OPEN)
    ping.send_ping(b"are you there")
    websocket.data_received(b"".join(ping.data_to_send()))
    assert not websocket.reading_frame
    assert server_frames(bytes(transport.written), Opcode.PONG) == [b"are you there"]


async def test_a_frame_with_a_longer_length_encoding_than_needed_loses_nothing() -> None:
    connection = EchoConnection()
    websocket, _ = upgraded(Admission(), connection)
    mask = b"\x01\x02\x03\x04"
    payload = b"hello"
    masked = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
    # 126: a 16-bit length follows, for a payload that the 7-bit one could have said.
    frame = bytes([0x82, 0x80 | 126]) + len(payload).to_bytes(2, "big") + mask + masked
    websocket.data_received(frame + client_frames([b"after"]))
    await settled()
    assert b"".join(connection.received) == b"helloafter"
    assert websocket.reading_frame  # two bytes more than counted: the parser is kept


async def garbled(garbage: bytes, after: list[bytes]) -> None:
    admission = Admission(ConnectionLimits(max_connections=1))
    connection = EchoConnection()
    websocket, transport = upgraded(admission, connection)
    websocket.data_received(client_frames(after) + garbage)
    await settled()
    websocket.eof_received()
    websocket.connection_lost(None)
    await settled()
    assert transport.how is not None
    assert admission.admit("10.0.0.9")  # released: one may connect again


@settings(max_examples=100, deadline=None)
@given(
    garbage=st.binary(min_size=1, max_size=64),
    after=st.lists(st.binary(min_size=1, max_size=20), max_size=3),
)
def test_garbage_after_the_upgrade_closes_the_connection_and_nothing_escapes(
    garbage: bytes, after: list[bytes]
) -> None:
    asyncio.run(garbled(garbage, after))


def upgrade_request(forwarded: list[str]) -> Request:
    headers = Headers([("Host", "localhost"), *(("X-Forwarded-For", value) for value in forwarded)])
    return Request("/$iothub/websocket", headers)


async def no_app(scope: object, receive: object, send: object) -> None:
    return None


PROXIES = ProxyHeadersMiddleware(no_app, "127.0.0.1,::1")
HEADER_VALUES = st.from_regex(
    r"[!-~\x80-\xff]([ -~\x80-\xff]{0,38}[!-~\x80-\xff])?", fullmatch=True
)
"""What an HTTP parser lets through as a header value: printable, no edge spaces."""


@settings(max_examples=300, deadline=None)
@given(
    forwarded=st.lists(HEADER_VALUES, max_size=3),
    peer=st.sampled_from(["127.0.0.1", "::1", "10.0.0.7"]),
)
def test_any_forwarded_header_names_an_address_and_raises_nothing(
    forwarded: list[str], peer: str
) -> None:
    address = client_address(PROXIES, (peer, 4242), upgrade_request(forwarded))
    if peer == "10.0.0.7":
        assert address == peer  # an untrusted peer's claim is not taken
    else:
        assert address == peer or address in ",".join(forwarded)
