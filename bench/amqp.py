"""Complete device registrations over AMQP per second, next to a bare TLS accept-and-close
loop on the same port, and the memory dpsd holds per idle connected device.

    .venv/bin/python bench/amqp.py [--devices 2000] [--concurrency 32] [--idle 1000]

Starts ``dpsd serve`` on a fresh data dir (SQLite store, HTTPS and AMQP on 127.0.0.1, both on
port 0, MQTT off, ``--retry-after 1``), links one IoT hub and creates a symmetric-key
enrollment group with a known key through the service API. Then one client process (this
one: asyncio TLS streams carrying python-qpid-proton's client engine, used without I/O as the
device SDKs use AMQP) drives three phases against the AMQP port (the machinery, shared with
bench/mqtt.py, is bench/device_bench.py):

    registrations  each simulated device opens a new TLS connection and, as the Node SDK
                   does: the SASL header and PLAIN (authcid {idScope}/registrations/{id},
                   password a SAS token signed with the key derived from the group key), the
                   AMQP header, OPEN, BEGIN, a sender and a receiver link on
                   {idScope}/registrations/{id} (10 credits); sends the register request
                   (application property iotdps-operation-type iotdps-register, a Data body
                   {"registrationId": id}, a string correlation-id), reads the answer
                   (assigning, operationId), sends the poll (iotdps-get-operationstatus with
                   iotdps-operation-id) at once, checks "assigned", sends CLOSE, waits for
                   dpsd's CLOSE and closes the TLS connection.
    bare TLS       the same client opens a new TLS connection to the same port (full
                   handshake) and closes it: dpsd accepts, reads the end of the stream and
                   closes too. What TLS and the accept loop cost, without AMQP.
    idle           --idle devices connect (TLS, SASL PLAIN, OPEN, BEGIN, both links, the
                   credit granted: attested and ready to register) and stay connected;
                   dpsd's VmRSS is read before and after, and the difference per device
                   reported; each then polls an unknown operation, which dpsd must reject
                   (amqp:not-found), to prove it still serves the connection; then they
                   close and VmRSS is read once more. --idle-cycles and --idle-tls-only as in
                   bench/mqtt.py.

The poll does not wait the retry-after, and the exit status says whether everything
succeeded: both as bench/device_bench.py says.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

from proton import Connection, Delivery, Endpoint, Message, ProtonException, Transport

from device_bench import (
    READ_SIZE,
    DeviceProtocol,
    Failure,
    Target,
    close_tls,
    main,
    open_tls,
)
from registrations import device_key, device_token

REGISTER = "iotdps-register"
POLL = "iotdps-get-operationstatus"
CREDIT = 10  # the window the device grants on its receiver
UNKNOWN_OPERATION = "4.0000000000000000.00000000-0000-0000-0000-000000000000"


class AmqpDevice:
    """One simulated device: a TLS connection and proton's client engine, which this class
    feeds with the bytes read and drains of the bytes to write."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        target: Target,
        registration_id: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._transport = Transport(Transport.CLIENT)
        sasl = self._transport.sasl()
        sasl.allowed_mechs("PLAIN")
        sasl.allow_insecure_mechs = True  # TLS is below proton, which cannot see it
        address = f"{target.id_scope}/registrations/{registration_id}"
        self._connection = Connection()
        self._connection.container = registration_id
        self._connection.hostname = target.host
        self._connection.user = address
        key = device_key(registration_id)
        self._connection.password = device_token(target.id_scope, registration_id, key)
        self._transport.bind(self._connection)
        self._connection.open()
        session = self._connection.session()
        session.open()
        self._sender = session.sender("sender")
        self._sender.target.address = address
        self._sender.open()
        self._receiver = session.receiver("receiver")
        self._receiver.source.address = address
        self._receiver.flow(CREDIT)
        self._receiver.open()
        self._sent = 0

    @classmethod
    async def connect(cls, target: Target, registration_id: str) -> AmqpDevice:
        """Connected, attested and ready: dpsd granted credit on the link to it."""
        device = cls(*await open_tls(target), target, registration_id)
        try:
            await device._until(lambda: device._sender.credit > 0)
        except BaseException:
            device.abort()
            raise
        return device

    # --- requests -------------------------------------------------------------------------

    async def request(self, properties: dict[str, Any], body: bytes) -> dict[str, Any]:
        """Send a request and read its answer's JSON body."""
        self._send(properties, body)
        await self._until(self._answer_arrived)
        delivery = self._receiver.current
        if delivery is None:
            raise Failure("an answer arrived without a delivery")
        data = self._receiver.recv(delivery.pending)
        self._receiver.advance()
        delivery.settle()
        self._receiver.flow(1)
        if data is None:
            raise Failure("an answer arrived without a body")
        message = Message()
        message.decode(data)
        if not isinstance(message.body, bytes | memoryview):
            raise Failure(f"an answer's body is {type(message.body).__name__}, not binary")
        answer: dict[str, Any] = json.loads(bytes(message.body))
        return answer

    async def check(self) -> None:
        """Poll an unknown operation: dpsd must reject it (amqp:not-found)."""
        properties = {"iotdps-operation-type": POLL, "iotdps-operation-id": UNKNOWN_OPERATION}
        delivery = self._send(properties, b"")
        await self._until(lambda: delivery.remote_state != 0)
        if delivery.remote_state != Delivery.REJECTED:
            raise Failure(f"the poll of an unknown operation ended {delivery.remote_state}")

    async def leave(self) -> None:
        """CLOSE, dpsd's CLOSE, then the end of the TLS connection."""
        self._connection.close()
        try:
            await self._until(lambda: bool(self._connection.state & Endpoint.REMOTE_CLOSED))
        finally:
            await close_tls(self._writer)

    def abort(self) -> None:
        self._writer.transport.abort()

    # --- bytes ----------------------------------------------------------------------------

    def _send(self, properties: dict[str, Any], body: bytes) -> Any:
        self._sent += 1
        message = Message(properties=properties, body=body, inferred=True)
        message.correlation_id = str(self._sent)
        delivery = self._sender.delivery(str(self._sent))
        self._sender.send(message.encode())
        self._sender.advance()
        return delivery

    def _answer_arrived(self) -> bool:
        delivery = self._receiver.current
        return delivery is not None and delivery.readable and not delivery.partial

    async def _until(self, condition: Callable[[], bool]) -> None:
        """Exchange bytes with dpsd until ``condition()`` holds."""
        self._flush()
        while not condition():
            if self._connection.remote_condition is not None:
                raise Failure(f"dpsd closed the connection: {self._connection.remote_condition}")
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise Failure("dpsd ended the TLS connection")
            self._push(data)
            self._flush()

    def _push(self, data: bytes) -> None:
        while data:
            room = self._transport.capacity()
            if room <= 0:
                raise Failure("the client engine takes no more bytes")
            self._transport.push(data[:room])
            data = data[room:]

    def _flush(self) -> None:
        pending = self._transport.pending()
        if pending > 0:
            data = self._transport.peek(pending)
            if data is not None:
                self._writer.write(data)
            self._transport.pop(pending)


async def register(target: Target, registration_id: str, max_polls: int) -> int:
    """One complete registration; the number of polls beyond the first."""
    device = await AmqpDevice.connect(target, registration_id)
    try:
        body = json.dumps({"registrationId": registration_id}).encode()
        properties = {"iotdps-operation-type": REGISTER, "iotdps-forceRegistration": False}
        started = await device.request(properties, body)
        if started.get("status") != "assigning" or "operationId" not in started:
            raise Failure(f"register {registration_id}: {started}")
        poll = {"iotdps-operation-type": POLL, "iotdps-operation-id": started["operationId"]}
        for extra in range(max_polls):
            polled = await device.request(poll, b"")  # no wait for retry-after: see above
            if polled.get("status") == "assigned":
                await device.leave()
                return extra
            if polled.get("status") != "assigning":
                raise Failure(f"poll {registration_id}: {polled}")
        raise Failure(f"{registration_id} not assigned after {max_polls} polls")
    except BaseException:
        device.abort()
        raise


class TlsOnly:
    """An idle connection that stopped after the TLS handshake."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def check(self) -> None:
        raise Failure("a TLS-only connection cannot prove it is served")

    async def leave(self) -> None:
        await close_tls(self._writer)

    def abort(self) -> None:
        self._writer.transport.abort()


async def connect_idle(target: Target, registration_id: str, tls_only: bool) -> Any:
    """A device that connects (up to the credit on its links, or TLS only) and stays."""
    if tls_only:
        _, writer = await open_tls(target)
        return TlsOnly(writer)
    return await AmqpDevice.connect(target, registration_id)


AMQP = DeviceProtocol(
    name="AMQP",
    endpoint="amqp",
    serve_args=("--amqp-port", "0", "--mqtt-port", "-1"),
    client="asyncio TLS streams + python-qpid-proton's client engine, AMQP 1.0",
    handshake="SASL PLAIN + OPEN + BEGIN + 2 links",
    check="answered a request",
    errors=(ProtonException,),
    register=register,
    connect_idle=connect_idle,
)


if __name__ == "__main__":
    sys.exit(main(AMQP))
