"""An AMQP 1.0 device client for tests: proton's client engine without I/O, used as the device
SDKs use AMQP (SASL PLAIN or no SASL, one session, a sender and a receiver link on the
registration's address, requests with or without a correlation-id). Unit tests move its bytes
to an ``AmqpConnection`` in memory; integration tests over a TLS socket (``exchange``)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

from proton import Collector, Connection, Delivery, Event, Message, Transport

REGISTER = "iotdps-register"
POLL = "iotdps-get-operationstatus"


class ProtonPeer:
    def __init__(
        self,
        user: str | None = None,
        password: str | None = None,
        *,
        hostname: str = "localhost",
        idle_timeout: float | None = None,
    ) -> None:
        self.transport: Any = Transport(Transport.CLIENT)
        if user is not None:
            sasl = self.transport.sasl()
            sasl.allowed_mechs("PLAIN")
            sasl.allow_insecure_mechs = True  # TLS is below proton, which cannot see it
        if idle_timeout is not None:
            self.transport.idle_timeout = idle_timeout
        self.connection: Any = Connection()
        self.collector: Any = Collector()
        self.connection.collect(self.collector)
        self.connection.hostname = hostname
        self.connection.container = "prov_connection"
        if user is not None:
            self.connection.user = user
            self.connection.password = password
        self.transport.bind(self.connection)
        self.connection.open()
        self.session: Any = self.connection.session()
        self.session.open()
        self.sender: Any = None
        self.receiver: Any = None
        self.messages: list[Any] = []
        self.outcomes: dict[str, Any] = {}
        self.attached: list[Any] = []
        self._tags = 0
        self.window = False

    # --- what the device does ---------------------------------------------------------------

    def open_links(self, address: str, *, credit: int = 10) -> None:
        """A sender (target = address) and a receiver (source = address) with a window of
        ``credit`` (topped up as answers arrive, as rhea does), or none."""
        self.window = credit > 0
        self.sender = self.session.sender(f"sender-{uuid.uuid4()}")
        self.sender.target.address = address
        self.sender.open()
        self.receiver = self.session.receiver(f"receiver-{uuid.uuid4()}")
        self.receiver.source.address = address
        if credit:
            self.receiver.flow(credit)
        self.receiver.open()

    def request(
        self,
        operation: str,
        body: Any = b"",
        *,
        correlation_id: Any = None,
        operation_id: str | None = None,
    ) -> str:
        """Send a request; its delivery tag."""
        properties: dict[str, Any] = {"iotdps-operation-type": operation}
        if operation_id is not None:
            properties["iotdps-operation-id"] = operation_id
        message = Message(properties=properties, body=body, inferred=isinstance(body, bytes))
        if correlation_id is not None:
            message.correlation_id = correlation_id
        self._tags += 1
        tag = str(self._tags)
        self.sender.delivery(tag)
        self.sender.send(message.encode())
        self.sender.advance()
        return tag

    def register(self, registration_id: str, **body: Any) -> str:
        payload = json.dumps({"registrationId": registration_id, **body}).encode()
        return self.request(REGISTER, payload, correlation_id=str(uuid.uuid4()))

    # --- bytes ------------------------------------------------------------------------------

    def outgoing(self) -> bytes:
        chunks = []
        while (pending := self.transport.pending()) > 0:
            chunks.append(bytes(self.transport.peek(pending)))
            self.transport.pop(pending)
        return b"".join(chunks)

    def incoming(self, data: bytes) -> None:
        if data and self.transport.capacity() > 0:
            self.transport.push(data)
        self._collect()

    @property
    def closed_by_server(self) -> bool:
        return bool(self.connection.remote_condition) or self.transport.capacity() < 0

    def _collect(self) -> None:
        while (event := self.collector.peek()) is not None:
            self._on(event)
            self.collector.pop()

    def _on(self, event: Any) -> None:
        if event.type == Event.LINK_REMOTE_OPEN:
            self.attached.append(event.link)
        if event.type != Event.DELIVERY:
            return
        delivery = event.delivery
        if delivery.link.is_sender:
            if delivery.remote_state:
                self.outcomes[delivery.tag] = delivery
            return
        if delivery.readable and not delivery.partial:
            message = Message()
            message.decode(delivery.link.recv(delivery.pending))
            delivery.link.advance()
            delivery.update(Delivery.ACCEPTED)
            delivery.settle()
            self.messages.append(message)
            if self.window:
                delivery.link.flow(1)


async def exchange(
    peer: ProtonPeer,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    until: Any,
    within: float = 10.0,
) -> None:
    """Move bytes between ``peer`` and a server until ``until()`` is true or the server
    closes; bounded by ``within`` seconds."""

    async def run() -> None:
        while not until():
            outgoing = peer.outgoing()
            if outgoing:
                writer.write(outgoing)
                await writer.drain()
            data = await reader.read(65536)
            if not data:
                peer.incoming(b"")
                return
            peer.incoming(data)

    await asyncio.wait_for(run(), within)
