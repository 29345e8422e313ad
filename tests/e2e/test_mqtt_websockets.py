"""MQTT over WebSockets on the HTTPS port: the official Python device SDK (port 443, path
``/$iothub/websocket``) and a paho client on the root path, as the C# SDK connects."""

from __future__ import annotations

import base64
import json
import queue
import ssl
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from azure.iot.device import X509, ProvisioningDeviceClient

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
ADDRESS = "127.0.0.82"
KEY = base64.b64encode(b"w" * 32).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    problem = bind_problem(ADDRESS, 443)
    if problem:
        skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-ws")
    listen = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", "443", "--mqtt-port", "-1"]
    started = start_dpsd_listening(base / "data", base / "serve.log", serve_args=listen)
    assert (
        run_dpsd("hub", "add", "ws-hub.example", "--data-dir", str(base / "data")).returncode == 0
    )
    keys = {"primaryKey": KEY, "secondaryKey": KEY}
    for device in ("ws-dev-1", "ws-dev-2"):
        enrollment = {
            "registrationId": device,
            "attestation": {"type": "symmetricKey", "symmetricKey": keys},
        }
        sdk_client(started.info).enrollment.create_or_update(id=device, enrollment=enrollment)
    yield started
    started.stop_cleanly()


def test_the_python_device_sdk_over_websockets(server: DpsdProcess) -> None:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=ADDRESS,
        registration_id="ws-dev-1",
        id_scope=server.info["idScope"],
        symmetric_key=KEY,
        server_verification_cert=Path(server.info["caCertificatePath"]).read_text(),
        websockets=True,
    )
    result = client.register()
    assert result.status == "assigned"
    assert result.registration_state.assigned_hub == "ws-hub.example"


def test_mqtt_over_websockets_on_the_root_path(server: DpsdProcess) -> None:
    scope = server.info["idScope"]
    messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
    connected: queue.Queue[int] = queue.Queue()
    client = mqtt.Client(client_id="ws-dev-2", protocol=mqtt.MQTTv311, transport="websockets")
    client.ws_set_options(path="/")
    client.tls_set_context(ssl.create_default_context(cafile=server.info["caCertificatePath"]))
    password = sas_token(f"{scope}/registrations/ws-dev-2", "registration", KEY)
    client.username_pw_set(f"{scope}/registrations/ws-dev-2/api-version=2019-03-31", password)
    client.on_connect = lambda _c, _u, _f, code: connected.put(code)
    client.on_message = lambda _c, _u, message: messages.put(message)
    client.connect(ADDRESS, 443)
    client.loop_start()
    try:
        assert connected.get(timeout=10) == 0
        client.subscribe("$dps/registrations/res/#", qos=1)
        client.publish(
            "$dps/registrations/PUT/iotdps-register/?$rid=7",
            json.dumps({"registrationId": "ws-dev-2"}),
            qos=1,
        )
        answer = messages.get(timeout=10)
        assert answer.topic.startswith("$dps/registrations/res/202/?$rid=7")
        assert json.loads(answer.payload)["status"] == "assigning"
    finally:
        client.loop_stop()
        client.disconnect()


def test_an_x509_device_over_websockets(server: DpsdProcess, tmp_path: Path) -> None:
    device = issue("ws-camera-1")
    enrollment = {
        "registrationId": "ws-camera-1",
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": device.pem}}},
        },
    }
    sdk_client(server.info).enrollment.create_or_update(id="ws-camera-1", enrollment=enrollment)
    cert_file, key_file = write_identity(tmp_path, "ws-camera-1", [device])
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=ADDRESS,
        registration_id="ws-camera-1",
        id_scope=server.info["idScope"],
        x509=X509(cert_file=cert_file, key_file=key_file),
        server_verification_cert=Path(server.info["caCertificatePath"]).read_text(),
        websockets=True,
    )
    result = client.register()
    assert result.status == "assigned"
    assert result.registration_state.device_id == "ws-camera-1"
