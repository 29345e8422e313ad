"""The MQTT listener under hostile or broken traffic: each bad connection is closed on its
own, and the others are served throughout. Real TLS sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta

import pytest

from dpsd.devices.answers import DeviceRequests
from dpsd.domain.device_auth import derive_device_key
from dpsd.mqtt.codec import (
    ConnAck,
    Connect,
    ConnectReturnCode,
    Packet,
    PacketReader,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    encode,
)
from dpsd.mqtt.connection import MqttConnection
from dpsd.mqtt.handlers import DeviceSession
from dpsd.mqtt.server import MqttDevice, MqttLimits, MqttServer
from dpsd.service.device_events import DeviceProtocol
from dpsd.service.device_registration import ATTESTATION_STANDS_SECONDS
from dpsd.tls_transport import serve_tls
from tests.conftest import API, ServiceApi
from tests.integration.test_device_registration_api import (
    GROUP_KEY,
    KEY,
    device_token,
    enroll,
    enroll_group,
)

OTHER_GROUP_KEY = base64.b64encode(b"o" * 64).decode()
LIMITS = MqttLimits(connect_timeout=0.5, max_packet_size=4096, max_connections_per_address=3)


@dataclass
class MovableClock:
    """The time now, moved on by ``ahead``."""

    ahead: timedelta = timedelta()

    def now(self) -> datetime:
        return datetime.now(UTC) + self.ahead

    def move_past_the_connect_attestation(self) -> None:
        self.ahead += timedelta(seconds=ATTESTATION_STANDS_SECONDS + 1)


@dataclass
class Listener:
    port: int
    client_context: ssl.SSLContext
    api: ServiceApi
    clock: MovableClock = field(default_factory=MovableClock)

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.port, ssl=self.client_context, server_hostname="localhost"
        )


@pytest.fixture
async def listener(service_api: ServiceApi) -> AsyncIterator[Listener]:
    runtime = service_api.runtime
    clock = MovableClock()
    handler = MqttServer(replace(runtime.devices, clock=clock), 1, runtime.now, LIMITS)
    server = await serve_tls(
        handler.listener.connection_protocol,
        runtime.client_trust.context,
        handshake_timeout=10.0,
        host="127.0.0.1",
        port=0,
    )
    context = ssl.create_default_context(cafile=str(runtime.tls.ca_certificate))
    try:
        yield Listener(server.sockets[0].getsockname()[1], context, service_api, clock)
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


def device_connect(api: ServiceApi, registration_id: str) -> Connect:
    scope = api.runtime.id_scope
    username = f"{scope}/registrations/{registration_id}/api-version=2019-03-31"
    password = device_token(scope, registration_id, KEY).encode()
    return Connect(registration_id, 60, True, username, password)


async def packets_until(reader: asyncio.StreamReader, count: int) -> list[Packet]:
    """The first ``count`` packets the server sends (fewer if it closes first)."""
    packets = PacketReader(1 << 20)
    received: list[Packet] = []
    while len(received) < count:
        data = await asyncio.wait_for(reader.read(65536), timeout=10)
        if not data:
            break
        received += packets.feed(data)
    return received


REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid=7"


def pipelined_stream(api: ServiceApi) -> bytes:
    """CONNECT, SUBSCRIBE and a register PUBLISH, as paho sends them when ``subscribe()`` and
    ``publish()`` follow ``connect()`` at once."""
    return b"".join(
        [
            encode(device_connect(api, "dev-1")),
            encode(Subscribe(1, (("$dps/registrations/res/#", 1),))),
            encode(Publish(REGISTER_TOPIC, b'{"registrationId": "dev-1"}', qos=1, packet_id=2)),
        ]
    )


def assert_served(packets: list[Packet]) -> None:
    connack, suback, puback, answer = packets
    assert connack == ConnAck(False, ConnectReturnCode.ACCEPTED)
    assert suback == SubAck(1, (1,))
    assert puback == PubAck(2)
    assert isinstance(answer, Publish)
    assert answer.topic.startswith("$dps/registrations/res/202/?$rid=7")
    assert json.loads(answer.payload)["status"] == "assigning"


@pytest.mark.parametrize("write_size", [None, 1, 7])
async def test_packets_pipelined_after_connect_are_served_in_order(
    listener: Listener, write_size: int | None
) -> None:
    """One TLS write carrying CONNECT, SUBSCRIBE and PUBLISH, or the same bytes cut into
    writes of any size: the same answers."""
    await enroll(listener.api, "dev-1")
    reader, writer = await listener.open()
    stream = pipelined_stream(listener.api)
    size = write_size or len(stream)
    for start in range(0, len(stream), size):
        writer.write(stream[start : start + size])
        await writer.drain()
    assert_served(await packets_until(reader, 4))
    writer.close()


async def test_a_connect_trickled_byte_by_byte_is_dropped_at_the_deadline(
    listener: Listener,
) -> None:
    """The deadline holds for the whole CONNECT packet, not its first byte: a client that
    sends one byte every 0.2 s (the packet would take some 20 s) is closed after 0.5 s."""
    await enroll(listener.api, "dev-1")
    reader, writer = await listener.open()
    connect = encode(device_connect(listener.api, "dev-1"))
    started = time.monotonic()

    async def trickle() -> None:
        with contextlib.suppress(OSError):
            for byte in connect[:-1]:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)

    trickling = asyncio.create_task(trickle())
    try:
        answered = await asyncio.wait_for(reader.read(), timeout=5)
    except (ConnectionError, ssl.SSLError):
        answered = b""
    finally:
        trickling.cancel()
    assert answered == b""
    assert LIMITS.connect_timeout <= time.monotonic() - started < 5
    writer.close()


def enrollment_body(registration_id: str, **extra: object) -> dict[str, object]:
    keys = {"primaryKey": KEY, "secondaryKey": KEY}
    attestation = {"type": "symmetricKey", "symmetricKey": keys}
    return {"registrationId": registration_id, "attestation": attestation, **extra}


def group_body(group_id: str, key: str) -> dict[str, object]:
    keys = {"primaryKey": key, "secondaryKey": key}
    return {
        "enrollmentGroupId": group_id,
        "attestation": {"type": "symmetricKey", "symmetricKey": keys},
    }


async def overwrite(api: ServiceApi, path: str, body: dict[str, object]) -> None:
    response = await api.put(path, body, **{"If-Match": "*"})
    assert response.status_code == 200, response.text


async def connected_device(
    listener: Listener, registration_id: str, key: str = KEY
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A device connected (its CONNECT accepted) and subscribed to its answers."""
    reader, writer = await listener.open()
    connect = device_connect(listener.api, registration_id)
    if key != KEY:
        scope = listener.api.runtime.id_scope
        password = device_token(scope, registration_id, key).encode()
        connect = Connect(registration_id, 60, True, connect.username, password)
    writer.write(encode(connect) + encode(Subscribe(1, (("$dps/registrations/res/#", 1),))))
    await writer.drain()
    connack, suback = await packets_until(reader, 2)
    assert connack == ConnAck(False, ConnectReturnCode.ACCEPTED)
    assert suback == SubAck(1, (1,))
    return reader, writer


async def registered(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, registration_id: str
) -> tuple[str, dict[str, object]]:
    """Register on the connection and poll once: the answer's status topic part and body
    (the poll's, when the register was accepted)."""
    body = json.dumps({"registrationId": registration_id}).encode()
    writer.write(encode(Publish(REGISTER_TOPIC, body, qos=0)))
    await writer.drain()
    (answer,) = await packets_until(reader, 1)
    assert isinstance(answer, Publish)
    status = answer.topic.split("/")[3]
    if status != "202":
        return status, json.loads(answer.payload)
    operation_id = json.loads(answer.payload)["operationId"]
    topic = f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId={operation_id}"
    writer.write(encode(Publish(topic, b"", qos=0)))
    await writer.drain()
    (polled,) = await packets_until(reader, 1)
    assert isinstance(polled, Publish)
    return polled.topic.split("/")[3], json.loads(polled.payload)


async def test_a_register_right_after_connect_stands_on_the_connects_attestation(
    listener: Listener,
) -> None:
    """A device registers right after it connects: within ATTESTATION_STANDS_SECONDS of the
    CONNECT, its attestation stands without the store asked again, even for an enrollment
    changed meanwhile (disabled here: the register goes on as the enrollment was). (No hub
    is linked here: an enabled device's registration fails for want of one.)"""
    api = listener.api
    await enroll(api, "dev-2")
    reader, writer = await connected_device(listener, "dev-2")
    await overwrite(
        api, "/enrollments/dev-2", enrollment_body("dev-2", provisioningStatus="disabled")
    )
    status, body = await registered(reader, writer, "dev-2")
    assert (status, body["status"]) == ("200", "failed")
    writer.close()


async def test_a_later_register_reads_the_enrollment_as_it_is_now_not_as_it_was_at_connect(
    listener: Listener,
) -> None:
    """Past ATTESTATION_STANDS_SECONDS, a register uses the CONNECT's attestation only while
    the enrollment that vouched for it is unchanged: disabled since, the device is
    disabled."""
    api = listener.api
    await enroll(api, "dev-3")
    reader, writer = await connected_device(listener, "dev-3")
    listener.clock.move_past_the_connect_attestation()
    assert (await registered(reader, writer, "dev-3"))[1]["status"] == "failed"
    await overwrite(
        api, "/enrollments/dev-3", enrollment_body("dev-3", provisioningStatus="disabled")
    )
    status, body = await registered(reader, writer, "dev-3")
    assert (status, body["status"]) == ("200", "disabled")
    writer.close()


async def test_a_group_device_meets_an_enrollment_of_its_own_made_after_connect(
    listener: Listener,
) -> None:
    """A group device attested at CONNECT, then given an enrollment of its own with other
    keys (which takes precedence): its register past ATTESTATION_STANDS_SECONDS is refused,
    as a new connection's would be; a group whose keys changed since CONNECT refuses it too."""
    api = listener.api
    await enroll_group(api, "fleet")
    key = derive_device_key(GROUP_KEY, "dev-4")
    reader, writer = await connected_device(listener, "dev-4", key)
    await enroll(api, "dev-4")  # signed with KEY, not the derived key
    listener.clock.move_past_the_connect_attestation()
    assert (await registered(reader, writer, "dev-4"))[0] == "401"
    writer.close()
    key = derive_device_key(GROUP_KEY, "dev-5")
    reader, writer = await connected_device(listener, "dev-5", key)
    await overwrite(api, "/enrollmentGroups/fleet", group_body("fleet", OTHER_GROUP_KEY))
    listener.clock.move_past_the_connect_attestation()
    assert (await registered(reader, writer, "dev-5"))[0] == "401"
    writer.close()


async def test_a_poll_of_the_operation_its_connection_settled_needs_no_store(
    listener: Listener,
) -> None:
    """The register settled the operation on this connection: its poll is answered from
    what the register settled, even with the state deleted meanwhile; a second poll of it
    reads the store (where the deleted state took it along)."""
    api = listener.api
    await api.runtime.hubs.link("hub-a.example")
    await enroll(api, "dev-5")
    reader, writer = await connected_device(listener, "dev-5")
    body = json.dumps({"registrationId": "dev-5"}).encode()
    writer.write(encode(Publish(REGISTER_TOPIC, body, qos=0)))
    (started,) = await packets_until(reader, 1)
    assert isinstance(started, Publish)
    operation_id = json.loads(started.payload)["operationId"]
    deleted = await api.client.delete(f"/registrations/dev-5{API}", headers=api.auth())
    assert deleted.status_code == 204
    topic = f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=8&operationId={operation_id}"
    polls = []
    for _ in range(2):
        writer.write(encode(Publish(topic, b"", qos=0)))
        (polled,) = await packets_until(reader, 1)
        assert isinstance(polled, Publish)
        polls.append((polled.topic.split("/")[3], json.loads(polled.payload)))
    (first_status, first), (second_status, second) = polls
    assert (first_status, first["status"]) == ("200", "assigned")
    assert first["registrationState"]["assignedHub"] == "hub-a.example"
    assert (second_status, second["errorCode"]) == ("404", 404205)
    writer.close()


async def answer_of(device: MqttDevice, packet: Packet) -> tuple[bool, list[Packet]]:
    """Whether ``device`` answered ``packet`` at once (without a use case to wait for), and
    what it answered."""
    answered = device.receive(encode(packet))
    at_once = isinstance(answered, bytes)
    data = answered if isinstance(answered, bytes) else await answered
    return at_once, PacketReader(1 << 20).feed(data)


async def test_a_poll_of_what_the_register_settled_is_answered_at_once(
    service_api: ServiceApi,
) -> None:
    """Driven without a socket: the poll of the operation the connection's register settled
    needs nothing to wait for, so it is answered in place; a later poll of it, or a poll of
    another operation, goes to the store."""
    runtime = service_api.runtime
    await runtime.hubs.link("hub-a.example")
    await enroll(service_api, "dev-6")
    requests = DeviceRequests(runtime.devices, 1, runtime.now, protocol=DeviceProtocol.MQTT)
    device = MqttDevice(MqttConnection(4096), DeviceSession(requests, ()))
    at_once, (connack,) = await answer_of(device, device_connect(service_api, "dev-6"))
    assert (at_once, connack) == (False, ConnAck(False, ConnectReturnCode.ACCEPTED))
    subscribe = Subscribe(1, (("$dps/registrations/res/#", 1),))
    assert (await answer_of(device, subscribe))[0]
    body = json.dumps({"registrationId": "dev-6"}).encode()
    at_once, (started,) = await answer_of(device, Publish(REGISTER_TOPIC, body, qos=0))
    assert not at_once
    assert isinstance(started, Publish)
    operation_id = json.loads(started.payload)["operationId"]
    poll = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}"
    at_once, (polled,) = await answer_of(device, Publish(poll.format(rid=8, op=operation_id), b""))
    assert at_once
    assert isinstance(polled, Publish)
    assert polled.topic.startswith("$dps/registrations/res/200/?$rid=8")
    assert json.loads(polled.payload)["registrationState"]["assignedHub"] == "hub-a.example"
    again = await answer_of(device, Publish(poll.format(rid=9, op=operation_id), b""))
    unknown = await answer_of(device, Publish(poll.format(rid=10, op="4.0.unknown"), b""))
    for (at_once, (answer,)), status in ((again, 200), (unknown, 404)):
        assert not at_once
        assert isinstance(answer, Publish)
        assert answer.topic.startswith(f"$dps/registrations/res/{status}/")
