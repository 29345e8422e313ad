"""Device protocols over WebSockets (dpsd.devices.websocket), on a real uvicorn listener at
127.0.0.1:0 with a real WebSocket client: the upgrade (subprotocol, refusals), frames both
ways, pings, the device's close, protocol errors, limits, shutdown and the logs."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.frames import Close
from websockets.typing import Subprotocol

from dpsd.devices.listener import Admission, ConnectionLimits, DeviceListener
from dpsd.devices.websocket import MESSAGE_LIMIT, DeviceWebSockets
from dpsd.telemetry.metrics import Metrics
from tests.device_servers import WebSocketListener, serving_websockets
from tests.log_capture import captured_logs, events
from tests.unit.devices.test_stream_device import EchoConnection, listener

PATH = "/$iothub/websocket"


def amqp(
    connection: EchoConnection,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    handshake_timeout: float = 5.0,
) -> DeviceListener:
    device_listener = listener(connection, admission, handshake_timeout, metrics=metrics)
    device_listener.subprotocol = device_listener.protocol = "amqpwsb10"
    return device_listener


def connections(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("dpsd_device_connections", {"protocol": "amqpwsb10"})


def serving(
    *listeners: DeviceListener, **config: Any
) -> AbstractAsyncContextManager[WebSocketListener]:
    return serving_websockets(DeviceWebSockets(listeners), **config)


async def closed_with(websocket: ClientConnection) -> Close | None:
    """Wait until the server closes the WebSocket; the close frame it sent."""
    try:
        while True:
            await asyncio.wait_for(websocket.recv(), 5)
    except ConnectionClosed as closed:
        return closed.rcvd


async def test_bytes_flow_both_ways_as_binary_messages() -> None:
    gate = asyncio.Event()
    served_device = serving(amqp(EchoConnection(gate, idle=0.01)))
    async with served_device as served, served.connect("AMQPWSB10") as websocket:
        assert websocket.subprotocol == "AMQPWSB10"  # the client's own spelling
        await websocket.send(b"hello")
        await websocket.send("ping")  # text is taken as its UTF-8 bytes
        gate.set()  # bytes that came during an answer are answered next, in one
        assert await websocket.recv() == b"<hello>"
        assert await websocket.recv() == b"<ping>"
        assert await websocket.recv() == b"bye"
        close = await closed_with(websocket)
    assert close is not None
    assert close.code == 1000


async def test_the_device_s_pings_are_answered() -> None:
    async with serving(amqp(EchoConnection())) as served, served.connect() as websocket:
        await websocket.send(b"hello")
        assert await websocket.recv() == b"<hello>"
        await asyncio.wait_for(await websocket.ping(b"are you there"), 5)


async def test_the_subprotocol_is_chosen_whatever_its_case_and_place() -> None:
    async with serving(listener(EchoConnection()), amqp(EchoConnection())) as served:
        for offered, chosen in ((["chat", "MQTT"], "MQTT"), (["amqpwsb10"], "amqpwsb10")):
            subprotocols = [Subprotocol(name) for name in offered]
            async with connect(served.url, subprotocols=subprotocols) as websocket:
                assert websocket.subprotocol == chosen


async def test_an_upgrade_without_a_device_subprotocol_is_refused_with_403() -> None:
    async with serving(amqp(EchoConnection())) as served:
        with captured_logs() as stream:
            for offered in ([Subprotocol("chat"), Subprotocol("superchat")], None):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(served.url, subprotocols=offered):
                        pass
                assert refused.value.response.status_code == 403
    with_offer, without = events(stream, "connect_refused")
    assert (with_offer["subprotocols"], with_offer["client"]) == ("chat,superchat", "127.0.0.1")
    assert "subprotocols" not in without


async def test_an_upgrade_over_the_connection_limits_is_refused_with_503() -> None:
    metrics = Metrics()
    admission = Admission(ConnectionLimits(max_connections_per_address=1))
    async with serving(amqp(EchoConnection(), admission, metrics)) as served:
        async with served.connect() as first:
            await first.send(b"hello")
            assert await first.recv() == b"<hello>"
            with captured_logs() as stream, pytest.raises(InvalidStatus) as refused:
                async with served.connect():
                    pass
            assert refused.value.response.status_code == 503
            (line,) = events(stream, "connect_refused")
            assert (line["protocol"], line["transport"]) == ("amqpwsb10", "websocket")
            assert connections(metrics) == 1
        async with served.connect() as again:  # the first one's place is free again
            await again.send(b"hello")
            assert await again.recv() == b"<hello>"


async def test_a_handshake_not_finished_in_time_ends_the_connection() -> None:
    async with serving(amqp(EchoConnection(), handshake_timeout=0.05)) as served:
        with captured_logs() as stream:
            async with served.connect() as websocket:
                close = await closed_with(websocket)
    assert close is not None
    assert close.code == 1000
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "no handshake within 0.05 s"
    assert (line["transport"], line["client"]) == ("websocket", "127.0.0.1")


async def test_the_device_s_close_ends_its_connection_and_is_logged() -> None:
    metrics = Metrics()
    async with serving(amqp(EchoConnection(), metrics=metrics)) as served:
        with captured_logs() as stream:
            async with served.connect() as websocket:
                await websocket.send(b"hello")
                assert await websocket.recv() == b"<hello>"
    (line,) = events(stream, "disconnected")
    assert (line["reason"], line["registration_id"]) == (
        "the device closed the connection",
        "dev-1",
    )
    assert connections(metrics) == 0


async def addresses_logged(served: WebSocketListener, sources: list[str]) -> list[str]:
    """Connect from each source with ``X-Forwarded-For: 203.0.113.9, 127.0.0.1``: the
    client address each connection's end is logged with."""
    with captured_logs() as stream:
        for source in sources:
            async with served.connect(
                additional_headers={"X-Forwarded-For": "203.0.113.9, 127.0.0.1"},
                local_addr=(source, 0),
            ) as websocket:
                await websocket.send(b"hello")
                assert await websocket.recv() == b"<hello>"
    return [line["client"] for line in events(stream, "disconnected")]


async def test_a_trusted_proxy_names_the_device_s_address_as_for_http() -> None:
    """As uvicorn decides for HTTP requests: from 127.0.0.1 (a proxy on the host, trusted
    by default) X-Forwarded-For names the device; from any other peer it is the device's
    own claim, and not taken."""
    async with serving(amqp(EchoConnection())) as served:
        assert await addresses_logged(served, ["127.0.0.1", "127.0.0.90"]) == [
            "203.0.113.9",
            "127.0.0.90",
        ]


async def test_uvicorn_s_proxy_settings_decide_whom_to_trust() -> None:
    async with serving(amqp(EchoConnection()), forwarded_allow_ips="*") as served:
        assert await addresses_logged(served, ["127.0.0.90"]) == ["203.0.113.9"]
    async with serving(amqp(EchoConnection()), proxy_headers=False) as served:
        assert await addresses_logged(served, ["127.0.0.1"]) == ["127.0.0.1"]


async def test_shutdown_tells_each_device_the_server_is_going_away() -> None:
    async with serving(amqp(EchoConnection())) as served, served.connect() as websocket:
        await websocket.send(b"hello")
        assert await websocket.recv() == b"<hello>"
        served.server.should_exit = True
        close = await closed_with(websocket)
    assert close is not None
    assert close.code == 1001


# --- frames that break the protocol, on a raw socket ---------------------------------------


class RawPeer:
    """A WebSocket client written by hand, to send what no library would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def upgraded(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {PATH} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: AMQPWSB10\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    def send(self, payload: bytes, *, masked: bool = True) -> None:
        """One binary frame of fewer than 126 bytes."""
        head = struct.pack("!BB", 0x82, (0x80 if masked else 0) | len(payload))
        if masked:
            mask = os.urandom(4)
            payload = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
            head += mask
        self.writer.write(head + payload)

    async def close_code(self) -> int:
        """The code of the close frame the server sends; then the connection ends."""
        first, second = await asyncio.wait_for(self.reader.readexactly(2), 5)
        assert first == 0x88, f"a close frame, not {first:#x}"
        body = await self.reader.readexactly(second & 0x7F)
        code: int = struct.unpack("!H", body[:2])[0]
        assert await asyncio.wait_for(self.reader.read(), 5) == b""
        self.writer.close()
        return code


async def test_an_unmasked_frame_is_a_protocol_error_and_ends_the_connection() -> None:
    metrics = Metrics()
    async with serving(amqp(EchoConnection(), metrics=metrics)) as served:
        with captured_logs() as stream:
            peer = await RawPeer.upgraded(served.port)
            peer.send(b"hello", masked=False)
            assert await peer.close_code() == 1002
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the connection broke (ProtocolError)"
    assert connections(metrics) == 0


async def test_a_message_over_the_limit_ends_the_connection() -> None:
    async with serving(amqp(EchoConnection())) as served:
        peer = await RawPeer.upgraded(served.port)
        # the head alone says the size: the message is refused before its bytes are read
        peer.writer.write(struct.pack("!BBQ", 0x82, 0x80 | 127, MESSAGE_LIMIT + 1) + bytes(4))
        assert await peer.close_code() == 1009
