"""Complete device registrations over MQTT per second, next to a bare TLS accept-and-close
loop, and the memory dpsd holds per idle connected device.

    .venv/bin/python bench/mqtt.py [--devices 2000] [--concurrency 32] [--idle 1000]

Starts ``dpsd serve`` on a fresh data dir (SQLite store, HTTPS and MQTT on 127.0.0.1, both
on port 0, AMQP off, ``--retry-after 1``), links one IoT hub and creates a symmetric-key
enrollment group with a known key through the service API (the helpers of
bench/registrations.py). Then one client process (this one: asyncio TLS streams speaking MQTT
3.1.1 with dpsd's own sans-I/O codec, ``dpsd.mqtt.codec``) drives three phases against the
MQTT port (the machinery, shared with bench/amqp.py, is bench/device_bench.py):

    registrations  each simulated device opens a new TLS connection, sends CONNECT (client
                   id = registration id, user name {idScope}/registrations/{id}/api-version=
                   2019-03-31, password = a SAS token signed with the key derived from the
                   group key), SUBSCRIBE $dps/registrations/res/#, publishes register
                   ($rid=1), reads the 202 with the operationId, polls the operation status
                   ($rid=2) at once, checks "assigned", sends DISCONNECT and closes.
    bare TLS       the same client opens a new TLS connection to the same port (full
                   handshake) and closes it: dpsd accepts, reads the end of the stream and
                   closes too. What TLS and the accept loop cost, without MQTT.
    idle           --idle devices connect (TLS, CONNECT, SUBSCRIBE) and stay connected;
                   dpsd's VmRSS (/proc/<pid>/status) is read before and after, and the
                   difference per device reported; a PINGREQ on every connection checks they
                   are all still alive; then they disconnect and VmRSS is read once more.
                   --idle-cycles above 1 repeats this (memory freed by the first cycle and
                   reused by the next shows up as a smaller growth). With --idle-tls-only
                   the idle connections stop after the TLS handshake (no CONNECT), which
                   separates what TLS and asyncio hold from what the MQTT session adds;
                   dpsd closes such connections after its connect timeout (10 s).

The poll does not wait the retry-after, and the exit status says whether everything
succeeded: both as bench/device_bench.py says.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from device_bench import (
    DeviceProtocol,
    Failure,
    Target,
    close_tls,
    main,
    open_tls,
)
from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Disconnect,
    MalformedPacket,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    Publish,
    SubAck,
    Subscribe,
    encode,
)
from registrations import device_key, device_token

DEVICE_API_VERSION = "2019-03-31"
RESPONSE_FILTER = "$dps/registrations/res/#"
REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid={rid}"
POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
RESPONSE_PREFIX = "$dps/registrations/res/"
KEEP_ALIVE = 300  # seconds; dpsd drops a device after 1.5 keep-alives of silence
READ_SIZE = 64 * 1024


# --- the client ------------------------------------------------------------------------


class Device:
    """One simulated device: a TLS connection and dpsd's MQTT codec, nothing else."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._packets = PacketReader()
        self._pending: list[Packet] = []

    @classmethod
    async def open(cls, target: Target) -> Device:
        return cls(*await open_tls(target))

    def send(self, packet: Packet) -> None:
        self._writer.write(encode(packet))

    async def receive(self) -> Packet:
        while not self._pending:
            data = await self._reader.read(READ_SIZE)
            if not data:
                raise Failure("dpsd closed the connection")
            self._pending.extend(self._packets.feed(data))
        return self._pending.pop(0)

    async def expect_publish(self, rid: str) -> tuple[int, dict[str, Any]]:
        """The answer to request ``rid``: (status, body)."""
        packet = await self.receive()
        if not isinstance(packet, Publish) or not packet.topic.startswith(RESPONSE_PREFIX):
            raise Failure(f"expected an answer, got {packet}")
        status_text, _, query = packet.topic[len(RESPONSE_PREFIX) :].partition("/?")
        if f"$rid={rid}" not in query.split("&"):
            raise Failure(f"an answer to another request: {packet.topic}")
        return int(status_text), json.loads(packet.payload)

    async def connect(self, target: Target, registration_id: str) -> None:
        """CONNECT with a SAS token from the group's derived key, then SUBSCRIBE."""
        token = device_token(target.id_scope, registration_id, device_key(registration_id))
        self.send(
            Connect(
                client_id=registration_id,
                keep_alive=KEEP_ALIVE,
                clean_session=True,
                username=(
                    f"{target.id_scope}/registrations/{registration_id}"
                    f"/api-version={DEVICE_API_VERSION}"
                ),
                password=token.encode(),
            )
        )
        answer = await self.receive()
        if not isinstance(answer, ConnAck) or answer.return_code != ConnectReturnCode.ACCEPTED:
            raise Failure(f"CONNECT {registration_id}: {answer}")
        self.send(Subscribe(1, ((RESPONSE_FILTER, 1),)))
        acknowledged = await self.receive()
        if not isinstance(acknowledged, SubAck) or acknowledged.return_codes != (1,):
            raise Failure(f"SUBSCRIBE {registration_id}: {acknowledged}")

    async def check(self) -> None:
        """PINGREQ, answered by PINGRESP."""
        self.send(PingReq())
        answer = await self.receive()
        if not isinstance(answer, PingResp):
            raise Failure(f"PINGREQ: {answer}")

    async def leave(self) -> None:
        self.send(Disconnect())
        await close_tls(self._writer)

    def abort(self) -> None:
        self._writer.transport.abort()


async def register(target: Target, registration_id: str, max_polls: int) -> int:
    """One complete registration; the number of polls beyond the first."""
    device = await Device.open(target)
    try:
        await device.connect(target, registration_id)
        body = json.dumps({"registrationId": registration_id}).encode()
        device.send(Publish(REGISTER_TOPIC.format(rid=1), body))
        status, started = await device.expect_publish("1")
        if status != 202 or "operationId" not in started:
            raise Failure(f"register {registration_id}: {status} {started}")
        for poll in range(max_polls):
            rid = str(2 + poll)
            topic = POLL_TOPIC.format(rid=rid, op=started["operationId"])
            device.send(Publish(topic, b""))  # no wait for retry-after: see the docstring
            status, polled = await device.expect_publish(rid)
            if status == 200 and polled.get("status") == "assigned":
                await device.leave()
                return poll
            if status != 202:
                raise Failure(f"poll {registration_id}: {status} {polled}")
        raise Failure(f"{registration_id} not assigned after {max_polls} polls")
    except BaseException:
        device.abort()
        raise


async def connect_idle(target: Target, registration_id: str, tls_only: bool) -> Device:
    """A device that connects (CONNECT + SUBSCRIBE, or TLS only) and stays."""
    device = await Device.open(target)
    try:
        if not tls_only:
            await device.connect(target, registration_id)
    except BaseException:
        device.abort()
        raise
    return device


MQTT = DeviceProtocol(
    name="MQTT",
    endpoint="mqtt",
    serve_args=("--mqtt-port", "0", "--amqp-port", "-1"),
    client="asyncio TLS streams + dpsd.mqtt.codec, MQTT 3.1.1",
    handshake="CONNECT + SUBSCRIBE",
    check="answered PINGREQ",
    errors=(MalformedPacket,),
    register=register,
    connect_idle=connect_idle,
)


if __name__ == "__main__":
    sys.exit(main(MQTT))
