"""The AMQP listener in-process over real TLS sockets on 127.0.0.1: proton's client engine
used as the Node SDK uses AMQP (SASL PLAIN or a client certificate, bare addresses, string
correlation-ids), uamqp (the C SDK's AMQP library) configured as the C SDK does, the errors
devices see, and hostile traffic that closes only its own connection."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from dpsd.amqp.codec import SASL_HEADER
from dpsd.amqp.server import AmqpServer
from dpsd.app import Runtime
from dpsd.devices.listener import Admission, ConnectionLimits
from dpsd.domain.device_auth import derive_device_key
from dpsd.mqtt.server import MqttServer
from dpsd.service.device_registration import DeviceRegistrationService
from tests.amqp_peer import POLL, REGISTER, ProtonPeer, exchange
from tests.certs import Issued, issue
from tests.conftest import ServiceApi, sas_token
from tests.device_servers import serving, serving_websockets
from tests.e2e.test_x509_devices import write_identity
from tests.integration.test_custom_allocation import Webhook, webhook  # noqa: F401 - a fixture
from tests.integration.test_device_registration_api import GROUP_KEY, KEY, enroll

HUB = "amqp-hub.example"
PER_ADDRESS = 4


@dataclass
class Endpoint:
    api: ServiceApi
    port: int
    mqtt_port: int
    folder: Path

    @property
    def scope(self) -> str:
        return self.api.runtime.id_scope

    def address(self, registration_id: str) -> str:
        return f"{self.scope}/registrations/{registration_id}"

    def peer(self, registration_id: str, key: str = KEY) -> ProtonPeer:
        """A device with a SAS token as its SASL PLAIN password, as the Node SDK signs it."""
        audience = self.address(registration_id)
        return ProtonPeer(audience, sas_token(audience, "registration", key, encode=False))

    async def open(
        self, identity: tuple[str, str] | None = None, port: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        context = ssl.create_default_context(cafile=str(self.api.runtime.tls.ca_certificate))
        if identity is not None:
            context.load_cert_chain(*identity)
        return await asyncio.open_connection(
            "127.0.0.1", port or self.port, ssl=context, server_hostname="localhost"
        )

    def identity(self, name: str, chain: list[Issued]) -> tuple[str, str]:
        return write_identity(self.folder, name, chain)


@pytest.fixture
async def amqp(service_api: ServiceApi, tmp_path: Path) -> AsyncIterator[Endpoint]:
    runtime = service_api.runtime
    await runtime.hubs.link(HUB)
    for name in ("dev-1", "dev-2"):
        await enroll(service_api, name)
    group = {
        "enrollmentGroupId": "fleet",
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY},
        },
    }
    assert (await service_api.put("/enrollmentGroups/fleet", group)).status_code == 200
    admission = Admission(ConnectionLimits(max_connections_per_address=PER_ADDRESS))
    async with device_listeners(
        service_api, runtime.devices, tmp_path, admission, handshake_timeout=0.5
    ) as endpoint:
        yield endpoint


@asynccontextmanager
async def device_listeners(
    api: ServiceApi,
    devices: DeviceRegistrationService,
    folder: Path,
    admission: Admission | None = None,
    handshake_timeout: float = 10.0,
) -> AsyncIterator[Endpoint]:
    """AMQP and MQTT over TLS on 127.0.0.1:0 for ``devices`` (one admission count)."""
    runtime = api.runtime
    admission = admission or Admission()
    amqp = AmqpServer(devices, 1, runtime.now, admission, handshake_timeout=handshake_timeout)
    mqtt = MqttServer(devices, 1, runtime.now, admission=admission)
    listeners = (amqp.listener, mqtt.listener)
    async with serving(listeners, runtime.client_trust.context) as ports:
        yield Endpoint(api, ports[0], ports[1], folder)


def body_of(message: Any) -> dict[str, Any]:
    assert isinstance(message.body, memoryview), "answers are one Data section"
    answer: dict[str, Any] = json.loads(bytes(message.body))
    return answer


async def provision(
    endpoint: Endpoint,
    peer: ProtonPeer,
    registration_id: str,
    identity: tuple[str, str] | None = None,
    **register: Any,
) -> tuple[Any, Any]:
    """Register, then poll once the assignment is done: both answers."""
    reader, writer = await endpoint.open(identity)
    peer.open_links(endpoint.address(registration_id))
    peer.register(registration_id, **register)
    await exchange(peer, reader, writer, until=lambda: len(peer.messages) == 1)
    await endpoint.api.runtime.devices.drain()
    operation_id = body_of(peer.messages[0])["operationId"]
    peer.request(POLL, "", correlation_id=str(uuid.uuid4()), operation_id=operation_id)
    await exchange(peer, reader, writer, until=lambda: len(peer.messages) == 2)
    writer.close()
    return peer.messages[0], peer.messages[1]


async def test_a_symmetric_key_device_registers_and_polls(amqp: Endpoint) -> None:
    started, done = await provision(amqp, amqp.peer("dev-1"), "dev-1")
    assert body_of(started)["status"] == "assigning"
    assert started.properties == {"retry-after": "1", "Retry-After": "1"}
    state = body_of(done)
    assert (state["status"], state["registrationState"]["assignedHub"]) == ("assigned", HUB)
    assert state["operationId"] == body_of(started)["operationId"]
    assert done.properties == {}
    registered = await amqp.api.get("/registrations/dev-1")
    assert registered.json()["assignedHub"] == HUB


async def test_a_group_device_registers_with_its_derived_key(amqp: Endpoint) -> None:
    key = derive_device_key(GROUP_KEY, "sensor-7")
    _, done = await provision(amqp, amqp.peer("sensor-7", key), "sensor-7")
    state = body_of(done)["registrationState"]
    assert state["symmetricKey"] == {"enrollmentGroupId": "fleet"}


async def test_a_disabled_enrollment_is_answered_disabled(amqp: Endpoint) -> None:
    await enroll(amqp.api, "dev-off", provisioningStatus="disabled")
    _, done = await provision(amqp, amqp.peer("dev-off"), "dev-off")
    assert body_of(done)["status"] == "disabled"


async def test_custom_allocation_payloads_travel_both_ways(
    amqp: Endpoint,
    webhook: Webhook,  # noqa: F811 - the fixture imported above
) -> None:
    await amqp.api.runtime.hubs.link("hub-b.example")
    definition = {"webhookUrl": f"{webhook.url}/allocate", "apiVersion": "2021-10-01"}
    await enroll(
        amqp.api, "dev-9", allocationPolicy="custom", customAllocationDefinition=definition
    )
    _, done = await provision(amqp, amqp.peer("dev-9"), "dev-9", payload={"model": "t-1"})
    assert body_of(done)["registrationState"]["payload"]["site"] == "north"
    assert webhook.requests[0]["deviceRuntimeContext"]["payload"] == {"model": "t-1"}


async def test_x509_devices_open_without_sasl(amqp: Endpoint) -> None:
    device = issue("camera-1")
    attestation = {"clientCertificates": {"primary": {"certificate": device.pem}}}
    body = {"registrationId": "camera-1", "attestation": {"type": "x509", "x509": attestation}}
    assert (await amqp.api.put("/enrollments/camera-1", body)).status_code == 200
    _, done = await provision(amqp, ProtonPeer(), "camera-1", amqp.identity("camera-1", [device]))
    assert body_of(done)["registrationState"]["deviceId"] == "camera-1"

    root = issue("amqp-root", ca=True)
    intermediate = issue("amqp-intermediate", root, ca=True)
    signing = {"signingCertificates": {"primary": {"certificate": root.pem}}}
    group = {"enrollmentGroupId": "cameras", "attestation": {"type": "x509", "x509": signing}}
    assert (await amqp.api.put("/enrollmentGroups/cameras", group)).status_code == 200
    chain = [issue("camera-2", intermediate), intermediate]
    _, done = await provision(amqp, ProtonPeer(), "camera-2", amqp.identity("camera-2", chain))
    assert body_of(done)["registrationState"]["x509"]["enrollmentGroupId"] == "cameras"


async def refused_open(amqp: Endpoint, peer: ProtonPeer, **open_args: Any) -> dict[str, Any]:
    reader, writer = await amqp.open(**open_args)
    peer.open_links(amqp.address("dev-1"))
    await exchange(peer, reader, writer, until=lambda: peer.closed_by_server)
    writer.close()
    condition = peer.connection.remote_condition
    assert condition.name == "amqp:unauthorized-access"
    open_error = peer.connection.remote_properties["com.microsoft:open-error"]
    assert open_error.value[1] == condition.description
    body: dict[str, Any] = json.loads(condition.description)
    return body


async def test_a_wrong_key_is_refused_at_open_with_the_dps_error(amqp: Endpoint) -> None:
    body = await refused_open(amqp, amqp.peer("dev-1", GROUP_KEY))
    assert body["errorCode"] == 401002
    assert "not signed" in body["message"]


async def test_no_sasl_and_no_certificate_is_refused_at_open(amqp: Endpoint) -> None:
    assert (await refused_open(amqp, ProtonPeer()))["errorCode"] == 401002


async def test_a_link_for_another_registration_is_refused(amqp: Endpoint) -> None:
    peer = amqp.peer("dev-1")
    reader, writer = await amqp.open()
    peer.open_links(amqp.address("dev-2"))
    await exchange(peer, reader, writer, until=lambda: len(peer.attached) == 2)
    for link in peer.attached:
        assert (link.remote_source.address, link.remote_target.address) == (None, None)
    condition = peer.attached[0].remote_condition
    assert condition.name == "amqp:unauthorized-access"
    assert json.loads(condition.description)["errorCode"] == 401002
    # The connection goes on for the device's own links.
    peer.open_links(f"amqps://localhost/{amqp.address('dev-1')}")
    peer.register("dev-1")
    await exchange(peer, reader, writer, until=lambda: len(peer.messages) == 1)
    assert body_of(peer.messages[0])["status"] == "assigning"
    writer.close()


async def test_request_errors_are_rejected_with_the_dps_error(amqp: Endpoint) -> None:
    peer = amqp.peer("dev-1")
    reader, writer = await amqp.open()
    peer.open_links(amqp.address("dev-1"))
    unknown = peer.request(POLL, "", operation_id=f"4.{'0' * 16}.{uuid.uuid4()}")
    nameless = peer.request("iotdps-get-registration", "")
    bad_body = peer.request(REGISTER, b"{not json")
    await exchange(peer, reader, writer, until=lambda: len(peer.outcomes) == 3)
    expected = {
        unknown: ("amqp:not-found", 404205),
        nameless: ("amqp:invalid-field", 400004),
        bad_body: ("amqp:invalid-field", 400004),
    }
    for tag, (condition, code) in expected.items():
        outcome = peer.outcomes[tag]
        assert outcome.remote_state == 37  # rejected
        assert outcome.remote.condition.name == condition
        assert json.loads(outcome.remote.condition.description)["errorCode"] == code
    assert peer.messages == []
    writer.close()


def c_sdk_token(audience: str, key: str) -> str:
    """The C SDK's token: ``sr`` URL-encoded with lower-case escapes, signed as sent."""
    resource = audience.replace("/", "%2f")
    expiry = int(time.time()) + 2400
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{expiry}".encode(), hashlib.sha256)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={expiry}&skn=registration"


def c_sdk_register(endpoint: Endpoint, registration_id: str) -> list[tuple[dict[Any, Any], Any]]:
    """Register and poll as the C SDK does with UAMQP: ``recv_link`` and ``sender_link`` on
    ``amqps://host/`` addresses, no correlation-id, the registration JSON in every request.
    Runs in a thread of its own (UAMQP blocks)."""
    import uamqp
    from uamqp import address, constants
    from uamqp.authentication import SASLPlain

    audience = endpoint.address(registration_id)
    auth = SASLPlain(
        "127.0.0.1",
        audience,
        c_sdk_token(audience, KEY),
        port=endpoint.port,
        verify=str(endpoint.api.runtime.tls.ca_certificate),
    )
    connection = uamqp.Connection("127.0.0.1", auth, container_id="prov_connection")
    session = uamqp.Session(connection, incoming_window=2147483647, outgoing_window=65536)
    full = f"amqps://127.0.0.1/{audience}"
    answers: list[Any] = []
    properties = {b"com.microsoft:api-version": "2021-06-01"}
    receiver = uamqp.receiver.MessageReceiver(
        session,
        address.Source(full),
        "local_endpoint",
        answers.append,
        name="recv_link",
        receive_settle_mode=constants.ReceiverSettleMode.ReceiveAndDelete,
        max_message_size=65536,
        properties=properties,
    )
    sender = uamqp.sender.MessageSender(
        session, "remote_endpoint", address.Target(full), name="sender_link", properties=properties
    )
    receiver.open()
    sender.open()
    body = json.dumps({"registrationId": registration_id}).encode()

    def ask(application_properties: dict[bytes, bytes]) -> Any:
        message = uamqp.Message(body, application_properties=application_properties)
        sender.send(message, lambda *_outcome, **_details: None)
        deadline = time.monotonic() + 10
        count = len(answers)
        while len(answers) == count and time.monotonic() < deadline:
            connection.work()
        return answers[-1]

    try:
        started = ask({b"iotdps-operation-type": b"iotdps-register"})
        operation_id = json.loads(b"".join(started.get_data()))["operationId"].encode()
        done = ask(
            {
                b"iotdps-operation-type": b"iotdps-get-operationstatus",
                b"iotdps-operation-id": operation_id,
            }
        )
        return [
            (answer.application_properties, json.loads(b"".join(answer.get_data())))
            for answer in (started, done)
        ]
    finally:
        sender.close()
        receiver.close()
        session.destroy()
        connection.destroy()


async def test_the_c_sdks_amqp_library_registers_and_polls(amqp: Endpoint) -> None:
    (started, started_body), (_, done_body) = await asyncio.to_thread(c_sdk_register, amqp, "dev-2")
    assert started == {b"retry-after": b"1", b"Retry-After": b"1"}
    assert started_body["status"] == "assigning"
    assert done_body["status"] in ("assigning", "assigned")
    assert done_body["operationId"] == started_body["operationId"]


# --- hostile traffic ------------------------------------------------------------------------


async def served(amqp: Endpoint, registration_id: str = "dev-1") -> None:
    """A device is served meanwhile."""
    started, _ = await provision(amqp, amqp.peer(registration_id), registration_id)
    assert body_of(started)["status"] == "assigning"


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """What the server sends before it closes (bounded)."""
    try:
        return await asyncio.wait_for(reader.read(), timeout=5)
    except (ConnectionError, ssl.SSLError):
        return b""


async def test_garbage_closes_only_its_own_connection(amqp: Endpoint) -> None:
    reader, writer = await amqp.open()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await closed_by_server(reader) == SASL_HEADER
    writer.close()
    await served(amqp)


async def test_a_silent_or_slow_client_is_dropped_at_the_handshake_deadline(
    amqp: Endpoint,
) -> None:
    silent_reader, silent = await amqp.open()
    trickling_reader, trickling = await amqp.open()
    trickling.write(SASL_HEADER[:3])
    assert await closed_by_server(silent_reader) == b""
    assert await closed_by_server(trickling_reader) == b""
    silent.close()
    trickling.close()
    await served(amqp)


async def test_connections_per_address_are_counted_with_mqtt(amqp: Endpoint) -> None:
    held = [await amqp.open(port=amqp.mqtt_port) for _ in range(PER_ADDRESS)]
    reader, writer = await amqp.open()
    assert await closed_by_server(reader) == b""
    writer.close()
    for _, mqtt_writer in held:
        mqtt_writer.close()


# --- WebSockets on the HTTPS port -----------------------------------------------------------


async def over_websocket(runtime: Runtime, peer: ProtonPeer, until: Any) -> str | None:
    """Drive ``peer`` over a WebSocket at the Node path until ``until()``, through the
    runtime's device WebSockets on uvicorn; the subprotocol the server chose."""
    async with (
        serving_websockets(runtime.websockets) as served,
        served.connect("AMQPWSB10") as websocket,
    ):
        while not until():
            outgoing = peer.outgoing()
            if outgoing:
                await websocket.send(outgoing)
            peer.incoming(await asyncio.wait_for(websocket.recv(), 5))
        subprotocol: str | None = websocket.subprotocol
        return subprotocol


async def test_amqp_over_websockets_on_the_https_listener(amqp: Endpoint) -> None:
    peer = amqp.peer("dev-1")
    peer.open_links(amqp.address("dev-1"))
    peer.register("dev-1")
    chosen = await over_websocket(amqp.api.runtime, peer, until=lambda: peer.messages)
    assert chosen == "AMQPWSB10"
    assert body_of(peer.messages[0])["status"] == "assigning"
