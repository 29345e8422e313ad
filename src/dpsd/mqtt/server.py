"""The MQTT listener: TLS connections in, bytes to the sans-I/O connection, answers out.

Nothing but I/O, timeouts and limits happens here; the protocol lives in
``dpsd.mqtt.connection`` and the meaning of requests in ``dpsd.mqtt.handlers``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime

from starlette.types import Receive, Scope, Send

from dpsd.mqtt.connection import Closed, ConnectRequested, MqttConnection, RequestReceived, State
from dpsd.mqtt.handlers import DeviceSession
from dpsd.service.device_registration import DeviceRegistrationService

logger = logging.getLogger("dpsd.mqtt")
READ_SIZE = 64 * 1024


@dataclass(frozen=True, slots=True)
class MqttLimits:
    connect_timeout: float = 10.0
    max_packet_size: int = 128 * 1024
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000


@dataclass(slots=True)
class MqttServer:
    service: DeviceRegistrationService
    retry_after: int
    now: Callable[[], datetime]
    limits: MqttLimits = field(default_factory=MqttLimits)
    _open: Counter[str] = field(default_factory=Counter)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    def close_all(self) -> None:
        """At shutdown: close every device connection."""
        for writer in list(self._writers):
            writer.close()

    def _admit(self, address: str) -> bool:
        if sum(self._open.values()) >= self.limits.max_connections:
            return False
        if self._open[address] >= self.limits.max_connections_per_address:
            return False
        self._open[address] += 1
        return True

    def _release(self, address: str) -> None:
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """An MQTT connection over TLS."""
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._admit(address):
            writer.close()
            return
        self._writers.add(writer)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            await self._run(lambda: reader.read(READ_SIZE), send, _client_chain(writer))
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the device went away or timed out: nothing to answer
        finally:
            self._writers.discard(writer)
            self._release(address)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """MQTT over WebSockets (ASGI), on any path of the HTTPS port: Python, Node and C use
        ``/$iothub/websocket``, C# the root. The subprotocol is ``mqtt`` (C writes ``MQTT``)."""
        address = str((scope.get("client") or ("?",))[0])
        if (await receive())["type"] != "websocket.connect":
            return
        offered = [name for name in scope.get("subprotocols", []) if name.lower() == "mqtt"]
        if not offered or not self._admit(address):
            await send({"type": "websocket.close", "code": 1002 if not offered else 1013})
            return
        await send({"type": "websocket.accept", "subprotocol": offered[0]})

        async def read() -> bytes:
            message = await receive()
            if message["type"] != "websocket.receive":
                return b""
            return message.get("bytes") or (message.get("text") or "").encode()

        async def write(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        tls = scope.get("extensions", {}).get("tls") or {}
        try:
            await self._run(read, write, tuple(tls.get("client_cert_chain") or ()))
            await send({"type": "websocket.close", "code": 1000})
        except (OSError, TimeoutError, RuntimeError):
            pass  # the device went away, timed out, or the socket closed under us
        finally:
            self._release(address)

    async def _run(
        self,
        read: Callable[[], Awaitable[bytes]],
        write: Callable[[bytes], Awaitable[None]],
        client_chain: tuple[str, ...],
    ) -> None:
        connection = MqttConnection(self.limits.max_packet_size)
        session = DeviceSession(self.service, self.retry_after, client_chain, self.now)
        while not connection.closed:
            data = await asyncio.wait_for(read(), self._timeout(connection))
            if not data:
                return
            for event in connection.receive_data(data):
                match event:
                    case ConnectRequested(connect=connect):
                        code = await session.connect(connect)
                        if code is None:
                            connection.accept()
                        else:
                            connection.refuse(code)
                    case RequestReceived(request=request, payload=payload):
                        answer = await session.request(request, payload)
                        connection.respond(
                            request.rid, answer.status, answer.body, answer.retry_after
                        )
                    case Closed(reason=reason):
                        logger.debug("MQTT connection closed: %s", reason)
            outgoing = connection.data_to_send()
            if outgoing:
                await write(outgoing)

    def _timeout(self, connection: MqttConnection) -> float | None:
        """Until CONNECT: the connect timeout; then one and a half keep-alive periods."""
        if connection.state is not State.CONNECTED:
            return self.limits.connect_timeout
        return connection.keep_alive * 1.5 if connection.keep_alive else None


def _client_chain(writer: asyncio.StreamWriter) -> tuple[str, ...]:
    ssl_object = writer.get_extra_info("ssl_object")
    if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
        return ()
    native = getattr(ssl_object, "_sslobj", ssl_object)
    return tuple(str(certificate.public_bytes()) for certificate in native.get_verified_chain())
