"""The MQTT listener under hostile or broken traffic: each bad connection is closed on its
own, and the others are served throughout. Real TLS sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpsd.app import build_runtime
from dpsd.mqtt.codec import ConnAck, Connect, ConnectReturnCode, PacketReader, encode
from dpsd.mqtt.server import MqttLimits, MqttServer
from dpsd.settings import Settings

LIMITS = MqttLimits(connect_timeout=0.5, max_packet_size=4096, max_connections_per_address=3)


@dataclass
class Listener:
    port: int
    client_context: ssl.SSLContext

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.client_context, server_hostname="localhost"
        )


@pytest.fixture
async def listener(tmp_path: Path) -> AsyncIterator[Listener]:
    async with build_runtime(Settings(data_dir=tmp_path / "data")) as runtime:
        handler = MqttServer(runtime.devices, 1, runtime.now, LIMITS)
        server = await asyncio.start_server(
            handler.handle, "127.0.0.1", 0, ssl=runtime.client_trust.context
        )
        context = ssl.create_default_context(cafile=str(runtime.tls.ca_certificate))
        try:
            yield Listener(server.sockets[0].getsockname()[1], context)
        finally:
            server.close()
            handler.close_all()
            await server.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    """Whether the server ends the connection (within a bound) without answering more."""
    try:
        data = await asyncio.wait_for(reader.read(), timeout=5)
    except (ConnectionError, ssl.SSLError):
        return True
    return data == b"" or PacketReader().feed(data) != []


async def refused_connect(listener: Listener) -> ConnAck:
    """A CONNECT that names no enrollment: answered with CONNACK, proving the server serves."""
    reader, writer = await listener.open()
    connect = Connect(
        "dev-1", 60, True, "0ne00000000/registrations/dev-1/api-version=2019-03-31", b"x"
    )
    writer.write(encode(connect))
    await writer.drain()
    (answer,) = PacketReader().feed(await asyncio.wait_for(reader.read(64), timeout=5))
    writer.close()
    assert isinstance(answer, ConnAck)
    return answer


async def test_a_silent_client_is_dropped_after_the_connect_timeout(listener: Listener) -> None:
    reader, writer = await listener.open()
    assert await closed_by_server(reader)
    writer.close()
    assert (await refused_connect(listener)).return_code == ConnectReturnCode.NOT_AUTHORIZED


async def test_garbage_closes_only_its_own_connection(listener: Listener) -> None:
    bystander_reader, bystander = await listener.open()
    reader, writer = await listener.open()
    writer.write(b"\xff\x00garbage that is not MQTT at all")
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()
    connect = Connect(
        "dev-2", 60, True, "0ne00000000/registrations/dev-2/api-version=2019-03-31", b"x"
    )
    bystander.write(encode(connect))
    await bystander.drain()
    (answer,) = PacketReader().feed(await asyncio.wait_for(bystander_reader.read(64), timeout=5))
    assert answer == ConnAck(False, ConnectReturnCode.NOT_AUTHORIZED)
    bystander.close()


async def test_an_oversized_packet_is_refused(listener: Listener) -> None:
    reader, writer = await listener.open()
    writer.write(bytes([0x10, 0x80, 0x80, 0x40]))  # a CONNECT announcing 1 MB
    await writer.drain()
    assert await closed_by_server(reader)
    writer.close()


async def test_connections_per_address_are_limited(listener: Listener) -> None:
    held = [await listener.open() for _ in range(LIMITS.max_connections_per_address)]
    reader, writer = await listener.open()
    assert await closed_by_server(reader)
    writer.close()
    for _, open_writer in held:
        open_writer.close()
