"""What happens to devices, in the log, on every protocol (in-process, real TLS sockets on
127.0.0.1 for MQTT and AMQP): refusals and why, registrations with their hub and allocation
policy, failures with their error code, connections closing, each under the tracking id of
the answer the device got; and never a key, token, signature or certificate body."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

import pytest

from dpsd.domain.device_auth import derive_device_key
from dpsd.domain.hub import OWNER_HUB_POLICY
from dpsd.service.ports import CustomAllocationRequest, CustomAllocationResult
from dpsd.telemetry.logs import LogFormat
from tests.amqp_peer import ProtonPeer, exchange
from tests.certs import issue
from tests.conftest import API, ServiceApi, sas_token
from tests.device_servers import serving
from tests.e2e.test_x509_devices import write_identity
from tests.integration.test_device_registration_api import (
    GROUP_KEY,
    KEY,
    enroll,
    enroll_group,
    register,
)
from tests.log_capture import captured_logs, events, json_lines
from tests.mqtt_device import BareMqttDevice

HUB = "hub-a.example"


@dataclass
class Devices:
    """The runtime's own MQTT and AMQP servers on free ports."""

    api: ServiceApi
    mqtt_port: int
    amqp_port: int
    folder: Path

    @property
    def scope(self) -> str:
        return self.api.runtime.id_scope

    def token(self, registration_id: str, key: str = KEY) -> str:
        return sas_token(f"{self.scope}/registrations/{registration_id}", "registration", key)

    def context(self, identity: tuple[str, str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.api.runtime.tls.ca_certificate))
        if identity is not None:
            context.load_cert_chain(*identity)
        return context

    async def mqtt(
        self, registration_id: str, password: str | None, **connect: Any
    ) -> tuple[BareMqttDevice, int]:
        device, answer = await BareMqttDevice.connect(
            self.mqtt_port,
            self.context(connect.pop("identity", None)),
            self.scope,
            registration_id,
            password,
            **connect,
        )
        return device, answer.return_code

    async def amqp_refusal(self, peer: ProtonPeer) -> dict[str, Any]:
        """Open as ``peer``; the DPS body of the server's refusal."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", self.amqp_port, ssl=self.context(), server_hostname="localhost"
        )
        peer.open_links(f"{self.scope}/registrations/dev-1")
        await exchange(peer, reader, writer, until=lambda: peer.closed_by_server)
        writer.close()
        body: dict[str, Any] = json.loads(peer.connection.remote_condition.description)
        return body

    def counted(self, name: str, **labels: str) -> float:
        value = self.api.runtime.metrics.registry.get_sample_value(name, labels)
        return value or 0.0


@pytest.fixture
async def devices(service_api: ServiceApi, tmp_path: Path) -> AsyncIterator[Devices]:
    runtime = service_api.runtime
    await runtime.hubs.link(HUB)
    await enroll(service_api, "dev-1")
    await enroll_group(service_api, "fleet")
    listeners = (runtime.mqtt.listener, runtime.amqp.listener)
    async with serving(listeners, runtime.client_trust.context) as ports:
        yield Devices(service_api, ports[0], ports[1], tmp_path)


async def test_an_https_registration_is_logged_from_register_to_assignment(
    devices: Devices,
) -> None:
    with captured_logs() as stream:
        started = await register(devices.api, "dev-1", KEY)
        await devices.api.runtime.devices.drain()
    assert started.status_code == 202
    tracking_id = started.headers["x-ms-request-id"]
    # Assigned within its register request: one line says it all.
    assert events(stream, "registering") == []
    (assigned,) = events(stream, "assigned", protocol="https", registration_id="dev-1")
    assert assigned["operation_id"] == started.json()["operationId"]
    assert assigned["attestation"] == "symmetricKey"
    assert "enrollment_group_id" not in assigned  # an individual enrollment (None: left out)
    assert assigned["message"] == f"https device dev-1 assigned to {HUB}"
    assert (assigned["hub"], assigned["allocation_policy"], assigned["device_id"]) == (
        HUB,
        "hashed",
        "dev-1",
    )
    assert assigned["tracking_id"] == tracking_id  # the assignment ran for that request
    labels = {"protocol": "https", "attestation": "symmetricKey", "outcome": "assigned"}
    assert devices.counted("dpsd_registrations_total", **labels) == 1
    assert devices.counted("dpsd_registration_duration_seconds_count", **labels) == 0
    timed = {"protocol": "https", "outcome": "assigned"}
    assert devices.counted("dpsd_registration_duration_seconds_count", **timed) == 1


class PromptAllocator:
    """A custom allocation webhook that answers at once."""

    async def allocate(self, request: CustomAllocationRequest) -> CustomAllocationResult:
        return CustomAllocationResult(iot_hub_host_name=HUB)


async def test_a_registration_answered_before_it_ends_is_logged_as_registering_first(
    devices: Devices, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A custom allocation is never waited for by the register request: it goes on after.
    definition = {"webhookUrl": "https://allocator.example/", "apiVersion": "2021-10-01"}
    await enroll(
        devices.api, "custom-1", allocationPolicy="custom", customAllocationDefinition=definition
    )
    monkeypatch.setattr(devices.api.runtime.devices, "allocator", PromptAllocator())
    with captured_logs() as stream:
        started = await register(devices.api, "custom-1", KEY)
        await devices.api.runtime.devices.drain()
    assert started.status_code == 202
    tracking_id = started.headers["x-ms-request-id"]
    lines = [line for line in json_lines(stream) if line.get("registration_id") == "custom-1"]
    assert [line["event"] for line in lines] == ["registering", "assigned"]
    registering, assigned = lines
    assert registering["operation_id"] == assigned["operation_id"] == started.json()["operationId"]
    assert (registering["attestation"], registering["allocation_policy"]) == (
        "symmetricKey",
        "custom",
    )
    assert registering["tracking_id"] == assigned["tracking_id"] == tracking_id


async def test_a_refused_device_is_logged_with_the_reason_and_the_tracking_id(
    devices: Devices,
) -> None:
    with captured_logs() as stream:
        refused = await register(devices.api, "dev-1", GROUP_KEY)
    assert refused.status_code == 401
    (line,) = events(stream, "refused")
    assert (line["protocol"], line["registration_id"], line["attestation"]) == (
        "https",
        "dev-1",
        "symmetricKey",
    )
    assert "not signed with this device's enrollment keys" in line["reason"]
    assert line["tracking_id"] == refused.json()["trackingId"]
    labels = {"protocol": "https", "attestation": "symmetricKey", "outcome": "refused"}
    assert devices.counted("dpsd_registrations_total", **labels) == 1


async def test_failed_and_disabled_registrations_are_logged_with_their_codes(
    service_api: ServiceApi,
) -> None:
    await enroll(service_api, "no-hub")  # no hub is linked
    await enroll(service_api, "off", provisioningStatus="disabled")
    with captured_logs() as stream:
        for registration_id in ("no-hub", "off"):
            assert (await register(service_api, registration_id, KEY)).status_code == 202
        await service_api.runtime.devices.drain()
    (failed,) = events(stream, "failed", registration_id="no-hub")
    assert (failed["level"], failed["error_code"]) == ("WARNING", 400208)
    assert failed["reason"] == "no linked IoT hub takes part in allocation"
    (disabled,) = events(stream, "disabled", registration_id="off")
    assert (disabled["level"], disabled["error_code"]) == ("INFO", 401008)


async def test_mqtt_devices_are_logged_from_connect_to_disconnect(devices: Devices) -> None:
    with captured_logs() as stream:
        device, code = await devices.mqtt("dev-1", devices.token("dev-1"))
        assert code == 0
        topic, started = await device.register({"registrationId": "dev-1"})
        assert topic.startswith("$dps/registrations/res/202/")
        await devices.api.runtime.devices.drain()
        topic, missing = await device.poll("4.0000000000000000.nope")
        assert topic.startswith("$dps/registrations/res/404/")
        await device.close()
    (assigned,) = events(stream, "assigned", protocol="mqtt", registration_id="dev-1")
    assert (assigned["hub"], assigned["operation_id"]) == (HUB, started["operationId"])
    (failed,) = events(stream, "request_failed", protocol="mqtt", request="poll")
    assert (failed["status"], failed["error_code"]) == (404, 404205)
    assert failed["tracking_id"] == missing["trackingId"]
    (closed,) = events(stream, "disconnected", protocol="mqtt")
    assert (closed["registration_id"], closed["reason"], closed["transport"]) == (
        "dev-1",
        "the device disconnected",
        "tls",
    )
    assert devices.counted("dpsd_device_connections", protocol="mqtt") == 0


async def test_mqtt_connections_refused_say_why(devices: Devices) -> None:
    with captured_logs() as stream:
        wrong_key, code = await devices.mqtt("dev-1", devices.token("dev-1", GROUP_KEY))
        assert code == 5
        await wrong_key.close()
        nameless, code = await devices.mqtt("dev-1", "x", username="not-a-registration")
        assert code == 4
        await nameless.close()
        impostor, code = await devices.mqtt("dev-1", devices.token("dev-1"), client_id="dev-2")
        assert code == 2
        await impostor.close()
    (refused,) = events(stream, "refused", protocol="mqtt", registration_id="dev-1")
    assert "not signed" in refused["reason"]
    unnamed, other_client = events(stream, "connect_refused", protocol="mqtt")
    assert "{idScope}/registrations/{registrationId}" in unnamed["reason"]
    assert other_client["reason"] == "the client id 'dev-2' is not the user name's registration id"
    reasons = [line["reason"] for line in events(stream, "disconnected", protocol="mqtt")]
    assert reasons == [
        "CONNECT refused: NOT_AUTHORIZED",
        "CONNECT refused: BAD_USERNAME_OR_PASSWORD",
        "CONNECT refused: IDENTIFIER_REJECTED",
    ]


async def test_amqp_refusals_are_logged_under_the_tracking_id_of_the_open_error(
    devices: Devices,
) -> None:
    audience = f"{devices.scope}/registrations/dev-1"
    wrong = ProtonPeer(audience, sas_token(audience, "registration", GROUP_KEY, encode=False))
    unnamed = ProtonPeer("someone", "password")
    with captured_logs() as stream:
        wrong_body = await devices.amqp_refusal(wrong)
        unnamed_body = await devices.amqp_refusal(unnamed)
    (refused,) = events(stream, "refused", protocol="amqp", registration_id="dev-1")
    assert refused["tracking_id"] == wrong_body["trackingId"]
    (connect_refused,) = events(stream, "connect_refused", protocol="amqp")
    assert connect_refused["tracking_id"] == unnamed_body["trackingId"]
    assert connect_refused["reason"] == unnamed_body["message"]


def secrets_of(token: str) -> list[str]:
    """A SAS token whole and its signature, as sent and decoded."""
    signature = parse_qs(token.removeprefix("SharedAccessSignature "))["sig"][0]
    return [token, signature, unquote(signature), signature.replace("+", "%2B")]


@pytest.mark.parametrize("log_format", list(LogFormat))
async def test_no_key_token_signature_or_certificate_reaches_the_log(
    devices: Devices, log_format: LogFormat
) -> None:
    api, runtime = devices.api, devices.api.runtime
    hub = await runtime.hubs.link("hub2.dpsd.test", builtin=True)
    hub_policy = hub.policy(OWNER_HUB_POLICY)
    assert hub_policy is not None
    device_key = derive_device_key(GROUP_KEY, "sensor-1")
    wrong_service = sas_token("localhost", "provisioningserviceowner", GROUP_KEY)
    wrong_device = devices.token("dev-1", GROUP_KEY)
    right_device = devices.token("sensor-1", device_key)
    wrong_hub = sas_token("hub2.dpsd.test", OWNER_HUB_POLICY, KEY)
    not_base64 = "c2VjcmV0LWtleS1tYXRlcmlhbA==!SECRET-MATERIAL"
    camera = issue("camera-9")
    identity = write_identity(devices.folder, "camera-9", [camera])
    certificates = {"clientCertificates": {"primary": {"certificate": camera.pem}}}
    enrollment = {
        "registrationId": "camera-9",
        "attestation": {"type": "x509", "x509": certificates},
    }
    assert (await api.put("/enrollments/camera-9", enrollment)).status_code == 200
    with captured_logs(log_format) as stream:
        await api.client.get(f"/enrollments/dev-1{API}", headers={"Authorization": wrong_service})
        await api.client.get(f"/enrollments/dev-1{API}&sig={KEY}", headers=api.auth())
        broken = {
            "registrationId": "leaky",
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": not_base64, "secondaryKey": KEY},
            },
        }
        assert (await api.put("/enrollments/leaky", broken)).status_code == 400
        assert (await register(api, "dev-1", GROUP_KEY)).status_code == 401
        assert (await register(api, "sensor-1", device_key)).status_code == 202
        for registration_id, password in (("dev-1", wrong_device), ("sensor-1", right_device)):
            device, _ = await devices.mqtt(registration_id, password)
            await device.close()
        device, code = await devices.mqtt("camera-x", None, identity=identity)  # not its CN
        assert code == 5
        await device.close()
        audience = f"{devices.scope}/registrations/dev-1"
        await devices.amqp_refusal(ProtonPeer(audience, wrong_device))
        await api.client.get(
            "/devices/x", headers={"Host": hub.host_name, "Authorization": wrong_hub}
        )
        await runtime.devices.drain()
    log = stream.getvalue()
    assert log.count("refused") >= 4
    secrets = [KEY, GROUP_KEY, device_key, api.owner_key, hub_policy.primary_key, not_base64]
    secrets += ["SECRET-MATERIAL", camera.pem.splitlines()[2]]
    for token in (wrong_service, wrong_device, right_device, wrong_hub):
        secrets += secrets_of(token)
    leaked = [secret for secret in secrets if secret in log]
    assert not leaked, f"secrets in the log: {leaked}"
    assert "BEGIN CERTIFICATE" not in log
