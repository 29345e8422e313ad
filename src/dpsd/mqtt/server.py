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
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if sum(self._open.values()) >= self.limits.max_connections or (
            self._open[address] >= self.limits.max_connections_per_address
        ):
            writer.close()
            return
        self._open[address] += 1
        self._writers.add(writer)
        try:
            await self._serve(reader, writer)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the device went away or timed out: nothing to answer
        finally:
            self._writers.discard(writer)
            self._open[address] -= 1
            if not self._open[address]:
                del self._open[address]
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = MqttConnection(self.limits.max_packet_size)
        session = DeviceSession(self.service, self.retry_after, _client_chain(writer), self.now)
        while not connection.closed:
            data = await asyncio.wait_for(reader.read(READ_SIZE), self._timeout(connection))
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
                writer.write(outgoing)
                await writer.drain()

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
