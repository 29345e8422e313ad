"""A bare MQTT device for tests, on dpsd's own codec over TLS: connect, register, poll, and
see exactly what the server answers (every wait bounded)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    Publish,
    Subscribe,
    encode,
)

API = "api-version=2019-03-31"
WAIT = 10.0


class BareMqttDevice:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._packets = PacketReader()
        self._pending: list[Packet] = []
        self._rid = 0
        self._subscribed = False

    @classmethod
    async def connect(
        cls,
        port: int,
        context: ssl.SSLContext,
        scope: str,
        registration_id: str,
        password: str | None,
        *,
        client_id: str | None = None,
        username: str | None = None,
    ) -> tuple[BareMqttDevice, ConnAck]:
        """Connect to 127.0.0.1:``port`` as the device; the device and the server's CONNACK."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="localhost"
        )
        device = cls(reader, writer)
        device._send(
            Connect(
                client_id or registration_id,
                60,
                True,
                username or f"{scope}/registrations/{registration_id}/{API}",
                password.encode() if password is not None else None,
            )
        )
        answer = await device.next_packet()
        assert isinstance(answer, ConnAck), answer
        return device, answer

    async def register(self, body: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """Subscribe (once), register: the response topic and body."""
        self._subscribe()
        return await self._request("PUT/iotdps-register/", "", json.dumps(body).encode())

    async def poll(self, operation_id: str) -> tuple[str, dict[str, Any]]:
        """Subscribe (once: a device polling an operation it started on another
        connection), poll: the response topic and body."""
        self._subscribe()
        query = f"&operationId={operation_id}"
        return await self._request("GET/iotdps-get-operationstatus/", query, b" ")

    async def _request(self, path: str, query: str, payload: bytes) -> tuple[str, dict[str, Any]]:
        self._rid += 1
        self._send(Publish(f"$dps/registrations/{path}?$rid={self._rid}{query}", payload))
        while True:
            packet = await self.next_packet()
            if isinstance(packet, Publish):
                body: dict[str, Any] = json.loads(packet.payload)
                return packet.topic, body

    async def next_packet(self) -> Packet:
        while not self._pending:
            data = await asyncio.wait_for(self._reader.read(65536), WAIT)
            if not data:
                raise ConnectionError("the server closed the connection")
            self._pending.extend(self._packets.feed(data))
        return self._pending.pop(0)

    async def close(self) -> None:
        """Disconnect as a device does, and wait until the server has closed (after a
        refused CONNECT the server closes first: the DISCONNECT may find the connection gone)."""
        with contextlib.suppress(ConnectionError):
            self._send(Disconnect())
            await self._writer.drain()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await asyncio.wait_for(self._reader.read(), WAIT)
        self._writer.close()

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self._send(Subscribe(1, (("$dps/registrations/res/#", 1),)))

    def _send(self, packet: Packet) -> None:
        self._writer.write(encode(packet))
