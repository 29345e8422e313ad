"""Devices provision over MQTT on TLS: the official Python device SDK (port 8883, as it
requires) with symmetric keys, and a plain paho-mqtt client for the error paths."""

from __future__ import annotations

import base64
import json
import queue
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.device.exceptions import ClientError, CredentialError

from dpsd.domain.device_auth import derive_device_key
from tests.certs import issue
from tests.conftest import sas_token
from tests.e2e.process import (
    DpsdProcess,
    bind_problem,
    run_dpsd,
    sdk_client,
    skip_or_fail,
    start_dpsd_listening,
)
from tests.e2e.test_x509_devices import write_identity

pytestmark = pytest.mark.e2e
ADDRESS = "127.0.0.81"
KEY = base64.b64encode(b"m" * 32).decode()
GROUP_KEY = base64.b64encode(b"q" * 64).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    problem = bind_problem(ADDRESS, 8883)
    if problem:
        skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-mqtt")
    listen = [
        "--host",
        ADDRESS,
        "--hostname",
        ADDRESS,
        "--https-port",
        "0",
        "--mqtt-port",
        "8883",
        "--retry-after",
        "1",
    ]
    started = start_dpsd_listening(base / "data", base / "serve.log", serve_args=listen)
    assert (
        run_dpsd("hub", "add", "mqtt-hub.example", "--data-dir", str(base / "data")).returncode == 0
    )
    client = sdk_client(started.info)
    keys = {"primaryKey": KEY, "secondaryKey": KEY}
    client.enrollment.create_or_update(
        id="mqtt-dev-1",
        enrollment={
            "registrationId": "mqtt-dev-1",
            "attestation": {"type": "symmetricKey", "symmetricKey": keys},
        },
    )
    group_keys = {"primaryKey": GROUP_KEY, "secondaryKey": GROUP_KEY}
    client.enrollment_group.create_or_update(
        id="mqtt-fleet",
        enrollment_group={
            "enrollmentGroupId": "mqtt-fleet",
            "attestation": {"type": "symmetricKey", "symmetricKey": group_keys},
        },
    )
    yield started
    started.stop_cleanly()


def ca_text(server: DpsdProcess) -> str:
    return Path(server.info["caCertificatePath"]).read_text()


def sdk_register(server: DpsdProcess, registration_id: str, key: str) -> Any:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=ADDRESS,
        registration_id=registration_id,
        id_scope=server.info["idScope"],
        symmetric_key=key,
        server_verification_cert=ca_text(server),
    )
    return client.register()  # the client disconnects once it has an answer


def test_the_python_device_sdk_provisions_an_individual_enrollment(server: DpsdProcess) -> None:
    result = sdk_register(server, "mqtt-dev-1", KEY)
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == "mqtt-hub.example"
    assert result.registration_state.device_id == "mqtt-dev-1"


def test_the_python_device_sdk_provisions_a_group_device(server: DpsdProcess) -> None:
    result = sdk_register(server, "mqtt-sensor-1", derive_device_key(GROUP_KEY, "mqtt-sensor-1"))
    assert result.status == "assigned"
    assert (
        sdk_client(server.info).device_registration_state.get(id="mqtt-sensor-1")["status"]
        == "assigned"
    )


def test_a_wrong_key_is_refused(server: DpsdProcess) -> None:
    with pytest.raises((ClientError, CredentialError)):
        sdk_register(server, "mqtt-dev-1", GROUP_KEY)


class Device:
    """A bare MQTT client on the dpsd port, to see exactly what the server answers."""

    def __init__(self, server: DpsdProcess, registration_id: str, password: str | None) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connected: queue.Queue[int] = queue.Queue()
        self.client = mqtt.Client(client_id=registration_id, protocol=mqtt.MQTTv311)
        scope = server.info["idScope"]
        self.client.username_pw_set(
            f"{scope}/registrations/{registration_id}/api-version=2019-03-31", password
        )
        context = ssl.create_default_context(cadata=ca_text(server))
        self.client.tls_set_context(context)
        self.client.on_connect = lambda _c, _u, _f, code: self.connected.put(code)
        self.client.on_message = lambda _c, _u, message: self.messages.put(message)
        self.client.connect(ADDRESS, 8883)
        self.client.loop_start()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_raw_mqtt_register_and_poll(server: DpsdProcess) -> None:
    scope = server.info["idScope"]
    token = sas_token(f"{scope}/registrations/mqtt-dev-1", None, KEY)
    device = Device(server, "mqtt-dev-1", token)
    try:
        assert device.connected.get(timeout=10) == 0
        device.client.subscribe("$dps/registrations/res/#", qos=1)
        device.client.publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=r1",
            json.dumps({"registrationId": "mqtt-dev-1"}),
            qos=1,
        )
        answer = device.messages.get(timeout=10)
        assert answer.topic == "$dps/registrations/res/202/?$rid=r1&retry-after=1"
        operation = json.loads(answer.payload)["operationId"]
        device.client.publish(
            f"$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r2&operationId={operation}",
            " ",
            qos=1,
        )
        final = device.messages.get(timeout=10)
        assert final.topic == "$dps/registrations/res/200/?$rid=r2"
        assert json.loads(final.payload)["registrationState"]["assignedHub"] == "mqtt-hub.example"
        device.client.publish(
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r3&operationId=nope",
            " ",
            qos=1,
        )
        missing = device.messages.get(timeout=10)
        assert missing.topic == "$dps/registrations/res/404/?$rid=r3"
        assert json.loads(missing.payload)["errorCode"] == 404205
    finally:
        device.close()


def test_raw_mqtt_refusals(server: DpsdProcess) -> None:
    scope = server.info["idScope"]
    wrong = Device(
        server, "mqtt-dev-1", sas_token(f"{scope}/registrations/mqtt-dev-1", None, GROUP_KEY)
    )
    try:
        assert wrong.connected.get(timeout=10) == 5  # not authorised
    finally:
        wrong.close()
    impostor = Device(
        server, "someone-else", sas_token(f"{scope}/registrations/mqtt-dev-1", None, KEY)
    )
    try:
        assert impostor.connected.get(timeout=10) in (4, 5)
    finally:
        impostor.close()


def test_the_python_device_sdk_provisions_an_x509_device(
    server: DpsdProcess, tmp_path: Path
) -> None:
    device = issue("mqtt-camera-1")
    enrollment = {
        "registrationId": "mqtt-camera-1",
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": device.pem}}},
        },
    }
    sdk_client(server.info).enrollment.create_or_update(id="mqtt-camera-1", enrollment=enrollment)
    cert_file, key_file = write_identity(tmp_path, "mqtt-camera-1", [device])
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=ADDRESS,
        registration_id="mqtt-camera-1",
        id_scope=server.info["idScope"],
        x509=X509(cert_file=cert_file, key_file=key_file),
        server_verification_cert=ca_text(server),
    )
    result = client.register()
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == "mqtt-hub.example"
