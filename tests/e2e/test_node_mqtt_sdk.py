"""Devices provisioned through a real dpsd over MQTT with the official Node device SDK:
azure-iot-provisioning-device with azure-iot-provisioning-device-mqtt's ``Mqtt`` (MQTT 3.1.1 on
TLS, ``mqtts://`` + the provisioning host, so ``host:port`` picks the port and a bare host means
8883) and ``MqttWs`` (``wss://HOST:443/$iothub/websocket``, on dpsd's HTTPS port), with symmetric
keys from azure-iot-security-symmetric-key (pinned in tests/node).

The server listens on 127.0.0.83 (443 and 8883, so this module can run in one session with the
other Node and MQTT modules) and answers with ``retry-after: 1``. A hub is linked with
``dpsd hub add``, enrollments are made with the official Python service SDK, then
tests/node/devices.js registers every scenario once, concurrently, choosing each one's transport.

Skipped, with the reason, when 443 or 8883 cannot be bound on 127.0.0.83, or ``node`` or the
SDK packages in tests/node/node_modules are missing; when ``CI`` is set, each of those fails
instead.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator

import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from tests.e2e.node_clients import (
    Result,
    Scenario,
    assert_assigned,
    assert_polled_once,
    assert_recorded,
    create_enrollment,
    create_symmetric_group,
    derive_device_key,
    failed,
    new_id,
    random_key,
    registered,
    require_node,
    run_devices,
)
from tests.e2e.process import (
    DpsdProcess,
    bind_problem,
    run_dpsd,
    sdk_client,
    skip_or_fail,
    start_dpsd_listening,
)

pytestmark = pytest.mark.e2e

ADDRESS = "127.0.0.83"
HTTPS_PORT = 443  # MqttWs always connects to port 443
MQTT_PORT = 8883  # what mqtt.js uses for mqtts:// without a port
RETRY_AFTER = 1  # seconds, passed to dpsd serve --retry-after
HUB = "node-mqtt-hub.example.net"
MQTT_PACKAGE = "azure-iot-provisioning-device-mqtt"
NODE_TIMEOUT = 20.0  # the whole script; each scenario is bounded in the script too
MQTT_NOT_AUTHORIZED = 5  # CONNACK return code of MQTT 3.1.1


@pytest.fixture(scope="module")
def node_binary() -> str:
    return require_node(MQTT_PACKAGE)


@pytest.fixture(scope="module")
def dpsd_mqtt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    """dpsd on ADDRESS: HTTPS (and MQTT over WebSockets) on 443, MQTT on 8883."""
    for port in (HTTPS_PORT, MQTT_PORT):
        problem = bind_problem(ADDRESS, port)
        if problem is not None:
            skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-node-mqtt")
    listen = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", str(HTTPS_PORT)]
    serve_args = [*listen, "--mqtt-port", str(MQTT_PORT), "--retry-after", str(RETRY_AFTER)]
    server = start_dpsd_listening(base / "data", base / "serve.log", serve_args=serve_args)
    result = run_dpsd("hub", "add", HUB, "--data-dir", str(server.data_dir))
    if result.returncode != 0:
        server.stop()
        pytest.fail(f"dpsd hub add {HUB}:\n{result.stdout}{result.stderr}")
    yield server
    server.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def service(dpsd_mqtt: DpsdProcess) -> Iterator[DeviceProvisioningClient]:
    client = sdk_client(dpsd_mqtt.info)
    with client:
        yield client


@pytest.fixture(scope="module")
def scenarios(service: DeviceProvisioningClient) -> dict[str, Scenario]:
    """The enrollments the Node devices register against, made with the Python service SDK."""
    made: list[Scenario] = []

    individual = new_id("nmqtt-ind")
    key = create_enrollment(service, individual)
    made.append(Scenario("mqtt_individual", individual, key, transport="mqtt"))

    group_id = new_id("nmqtt-group")
    group_key = create_symmetric_group(service, group_id)["primaryKey"]
    member = new_id("nmqtt-member")
    derived = derive_device_key(group_key, member)
    explicit_port = f"{ADDRESS}:{MQTT_PORT}"
    made.append(
        Scenario(
            "mqtt_group",
            member,
            derived,
            transport="mqtt",
            provisioning_host=explicit_port,
            group_id=group_id,
        )
    )

    over_ws = new_id("nmqtt-ws")
    key = create_enrollment(service, over_ws)
    made.append(Scenario("mqttws_individual", over_ws, key, transport="mqttws"))

    wrong_key = new_id("nmqtt-wrongkey")
    create_enrollment(service, wrong_key)
    made.append(Scenario("mqtt_wrong_key", wrong_key, random_key(), transport="mqtt"))

    return {scenario.name: scenario for scenario in made}


@pytest.fixture(scope="module")
def devices(
    node_binary: str, dpsd_mqtt: DpsdProcess, scenarios: dict[str, Scenario]
) -> dict[str, Result]:
    """Every scenario's JSON line from one run of tests/node/devices.js, by name."""
    return run_devices(node_binary, dpsd_mqtt, list(scenarios.values()), ADDRESS, NODE_TIMEOUT)


def test_every_expected_outcome(devices: dict[str, Result]) -> None:
    outcomes = {name: line["ok"] for name, line in devices.items()}
    assert outcomes == {
        "mqtt_individual": True,
        "mqtt_group": True,
        "mqttws_individual": True,
        "mqtt_wrong_key": False,
    }, json.dumps(devices, indent=2)


def test_mqtt_individual_enrollment_on_the_default_port(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # provisioningHost is the bare address: mqtts:// without a port is 8883 in mqtt.js.
    scenario = scenarios["mqtt_individual"]
    assert scenario.provisioning_host is None
    state = registered(devices, "mqtt_individual")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, (HUB,))
    assert "symmetricKey" not in state, state  # as over HTTP: only groups are named
    assert_polled_once(devices["mqtt_individual"], RETRY_AFTER)
    assert_recorded(service, state)


def test_mqtt_group_device_with_a_derived_key_and_an_explicit_port(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    scenario = scenarios["mqtt_group"]
    assert scenario.provisioning_host == f"{ADDRESS}:{MQTT_PORT}"
    state = registered(devices, "mqtt_group")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, (HUB,))
    assert state["symmetricKey"] == {"enrollmentGroupId": scenario.group_id}, state
    assert_polled_once(devices["mqtt_group"], RETRY_AFTER)
    assert_recorded(service, state)
    assert scenario.group_id is not None
    listed = list(service.device_registration_state.query(scenario.group_id))
    assert [item["registrationId"] for item in listed] == [scenario.registration_id], listed


def test_mqtt_over_websockets_individual_enrollment(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # MqttWs connects to wss://ADDRESS:443/$iothub/websocket, dpsd's HTTPS listener.
    scenario = scenarios["mqttws_individual"]
    state = registered(devices, "mqttws_individual")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, (HUB,))
    assert_polled_once(devices["mqttws_individual"], RETRY_AFTER)
    assert_recorded(service, state)


def test_mqtt_wrong_key_is_refused_at_connect(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # dpsd refuses the CONNECT with return code 5 (not authorised). mqtt.js rejects with a plain
    # Error carrying that code, and azure-iot-mqtt-base, the Mqtt transport and the polling state
    # machine pass it through untranslated: no UnauthorizedError, no DPS error body, no topic.
    line = devices["mqtt_wrong_key"]
    error = failed(devices, "mqtt_wrong_key")
    assert error["name"] == "Error", error
    assert error["message"] == "Connection refused: Not authorized", error
    assert error["code"] == MQTT_NOT_AUTHORIZED, error
    assert error["statusCode"] is None, error
    assert error["responseBody"] is None, error
    assert error["result"] is None, error
    assert error["topic"] is None, error
    assert "_handleConnack" in line["stack"], line["stack"]
    # The register call failed on the connect; the SDK gave up at once, without polling.
    assert [call["call"] for call in line["calls"]] == ["register"], line["calls"]
    assert line["calls"][0]["error"] == "Error", line["calls"]
    assert line["calls"][0]["status"] is None, line["calls"]
    # Nothing was registered. (Read from the enrollment, not a 404 from the registration state:
    # azure-core leaves an error response's keep-alive connection open, which holds dpsd's
    # graceful shutdown for its whole 5 s.)
    enrollment = service.enrollment.get(scenarios["mqtt_wrong_key"].registration_id)
    assert "registrationState" not in enrollment, enrollment
