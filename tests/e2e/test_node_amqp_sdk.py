"""Devices provisioned through a real dpsd over AMQP with the official Node device SDK:
azure-iot-provisioning-device with azure-iot-provisioning-device-amqp's ``Amqp`` (AMQP 1.0 on
TLS, ``amqps://`` + the provisioning host, so ``host:port`` picks the port and a bare host
means 5671) and ``AmqpWs`` (``wss://HOST:443/$iothub/websocket``, subprotocol ``AMQPWSB10``,
on dpsd's HTTPS port), with symmetric keys (SASL PLAIN) and X.509 client certificates (no
SASL), pinned in tests/node.

The server listens on 127.0.0.87 (443 and 5671, so this module can run in one session with
the other Node modules) and answers with ``retry-after: 1``. Two hubs are linked: one by name
only, and one that dpsd serves itself (``dpsd hub add --builtin``), where devices must then
exist with their identity and initial twin, as the official Python hub client
(IoTHubRegistryManager) reads them. Enrollments are made with the official Python service
SDK, then tests/node/devices.js registers every scenario once, concurrently, over both
transports: symmetric keys (individual, group-derived), X.509 (individual, group with a
chain), a disabled enrollment, a wrong key, an unknown device and a custom allocation webhook
with a payload.

Skipped, with the reason, when 443 or 5671 cannot be bound on 127.0.0.87, or ``node`` or the
SDK packages in tests/node/node_modules are missing; when ``CI`` is set, each of those fails
instead.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from azure.iot.hub import IoTHubRegistryManager

from tests.certs import Issued, issue
from tests.e2e.hub_registry import (
    assert_initial_twin,
    assert_sas_device,
    assert_x509_device,
    hub_names_resolving_to,
    hub_registries,
)
from tests.e2e.node_clients import (
    Result,
    Scenario,
    Webhook,
    assert_assigned,
    assert_disabled,
    assert_polled_once,
    assert_recorded,
    assert_recorded_disabled,
    create_enrollment,
    create_symmetric_group,
    create_x509_enrollment,
    create_x509_group_member,
    derive_device_key,
    failed,
    new_id,
    random_key,
    registered,
    require_node,
    run_devices,
    serve_webhook,
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

ADDRESS = "127.0.0.87"
HTTPS_PORT = 443  # AmqpWs always connects to wss://HOST:443
AMQP_PORT = 5671  # what the Amqp transport uses for amqps:// without a port
RETRY_AFTER = 1  # seconds, passed to dpsd serve --retry-after
NAMED_HUB = "node-amqp-hub.example.net"  # linked by name: dpsd records the assignment only
BUILTIN_HUB = "node-amqp-hub.dpsd.test"  # served by dpsd itself
HUBS = (NAMED_HUB, BUILTIN_HUB)
TRANSPORTS = ("amqp", "amqpws")
AMQP_PACKAGE = "azure-iot-provisioning-device-amqp"
NODE_TIMEOUT = 30.0  # the whole script; each scenario is bounded in the script too
UNAUTHORIZED = "amqp:unauthorized-access"
INITIAL_TWIN = {"tags": {"site": "amqp"}, "properties": {"desired": {"interval": "30"}}}


@pytest.fixture(scope="module")
def node_binary() -> str:
    return require_node(AMQP_PACKAGE)


@pytest.fixture(scope="module")
def dpsd_amqp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    """dpsd on ADDRESS: HTTPS (and AMQP over WebSockets) on 443, AMQP on 5671, MQTT off; the
    hubs HUBS linked."""
    for port in (HTTPS_PORT, AMQP_PORT):
        problem = bind_problem(ADDRESS, port)
        if problem is not None:
            skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-node-amqp")
    listen = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", str(HTTPS_PORT)]
    ports = ["--amqp-port", str(AMQP_PORT), "--mqtt-port", "-1"]
    serve_args = [*listen, *ports, "--retry-after", str(RETRY_AFTER)]
    server = start_dpsd_listening(base / "data", base / "serve.log", serve_args=serve_args)
    for hub, kind in ((NAMED_HUB, ()), (BUILTIN_HUB, ("--builtin",))):
        result = run_dpsd("hub", "add", hub, *kind, "--data-dir", str(server.data_dir))
        if result.returncode != 0:
            server.stop()
            pytest.fail(f"dpsd hub add {hub}:\n{result.stdout}{result.stderr}")
    yield server
    server.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def service(dpsd_amqp: DpsdProcess) -> Iterator[DeviceProvisioningClient]:
    client = sdk_client(dpsd_amqp.info)
    with client:
        yield client


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """The custom allocation webhook, picking NAMED_HUB."""
    with serve_webhook(NAMED_HUB) as served:
        yield served


@pytest.fixture(scope="module")
def registry(dpsd_amqp: DpsdProcess) -> Iterator[IoTHubRegistryManager]:
    """The official hub client of BUILTIN_HUB, its name resolving to ADDRESS."""
    with (
        hub_names_resolving_to(ADDRESS),
        hub_registries(dpsd_amqp, (BUILTIN_HUB,)) as registries,
    ):
        yield registries[BUILTIN_HUB]


def transport_scenarios(
    service: DeviceProvisioningClient, transport: str, webhook: Webhook, folder: Path
) -> list[Scenario]:
    """The scenarios every transport runs, named ``{transport}_{what}``."""

    def named(what: str) -> str:
        return f"{transport}_{what}"

    def id_for(what: str) -> str:
        return new_id(f"n{transport}-{what.replace('_', '-')}")

    made: list[Scenario] = []
    individual = id_for("individual")
    key = create_enrollment(service, individual)
    made.append(Scenario(named("individual"), individual, key, transport=transport))

    group_id, member = id_for("group"), id_for("member")
    derived = derive_device_key(create_symmetric_group(service, group_id)["primaryKey"], member)
    # Amqp's provisioning host may name the port; AmqpWs always uses 443.
    host = f"{ADDRESS}:{AMQP_PORT}" if transport == "amqp" else None
    made.append(
        Scenario(
            named("group"),
            member,
            derived,
            transport=transport,
            provisioning_host=host,
            group_id=group_id,
        )
    )

    x509_individual = id_for("x509")
    identity = create_x509_enrollment(service, x509_individual, folder)
    made.append(
        Scenario(named("x509_individual"), x509_individual, identity=identity, transport=transport)
    )

    x509_group, x509_member = id_for("x509-group"), id_for("x509-member")
    identity = create_x509_group_member(service, x509_group, x509_member, folder)
    made.append(
        Scenario(
            named("x509_group"),
            x509_member,
            identity=identity,
            transport=transport,
            group_id=x509_group,
        )
    )

    disabled = id_for("disabled")
    key = create_enrollment(service, disabled, provisioningStatus="disabled")
    made.append(Scenario(named("disabled"), disabled, key, transport=transport))

    wrong_key = id_for("wrong-key")
    create_enrollment(service, wrong_key)
    made.append(Scenario(named("wrong_key"), wrong_key, random_key(), transport=transport))

    unknown = id_for("unknown")
    made.append(Scenario(named("not_enrolled"), unknown, random_key(), transport=transport))

    custom = id_for("custom")
    key = create_enrollment(service, custom, **webhook.custom_allocation())
    payload = {"modelId": "dtmi:dpsd:sensor;1", "transport": transport}
    made.append(
        Scenario(named("custom_allocation"), custom, key, transport=transport, payload=payload)
    )
    return made


@pytest.fixture(scope="module")
def builtin_x509_device() -> tuple[str, Issued]:
    """The registration id and self-signed certificate of the X.509 device enrolled to
    BUILTIN_HUB."""
    registration_id = new_id("namqpws-builtin-x509")
    return registration_id, issue(registration_id)


def builtin_hub_scenarios(
    service: DeviceProvisioningClient, x509_device: tuple[str, Issued], folder: Path
) -> list[Scenario]:
    """A symmetric-key device (with its own device id) over Amqp and an X.509 device over
    AmqpWs, both enrolled to BUILTIN_HUB with INITIAL_TWIN."""
    fields = {"allocationPolicy": "static", "iotHubs": [BUILTIN_HUB], "initialTwin": INITIAL_TWIN}
    keyed, device_id = new_id("namqp-builtin"), new_id("namqp-builtin-device")
    key = create_enrollment(service, keyed, deviceId=device_id, **fields)
    certified, certificate = x509_device
    identity = create_x509_enrollment(service, certified, folder, certificate, **fields)
    return [
        Scenario("amqp_builtin_hub", keyed, key, transport="amqp", device_id=device_id),
        Scenario("amqpws_builtin_hub_x509", certified, identity=identity, transport="amqpws"),
    ]


@pytest.fixture(scope="module")
def scenarios(
    service: DeviceProvisioningClient,
    webhook: Webhook,
    builtin_x509_device: tuple[str, Issued],
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Scenario]:
    """Every enrollment the Node devices register against, made with the Python service SDK."""
    folder = tmp_path_factory.mktemp("node-amqp-x509")
    made = [
        scenario
        for transport in TRANSPORTS
        for scenario in transport_scenarios(service, transport, webhook, folder)
    ]
    made += builtin_hub_scenarios(service, builtin_x509_device, folder)
    return {scenario.name: scenario for scenario in made}


@pytest.fixture(scope="module")
def devices(
    node_binary: str, dpsd_amqp: DpsdProcess, scenarios: dict[str, Scenario]
) -> dict[str, Result]:
    """Every scenario's JSON line from one run of tests/node/devices.js, by name."""
    return run_devices(node_binary, dpsd_amqp, list(scenarios.values()), ADDRESS, NODE_TIMEOUT)


def provisioned(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
    name: str,
) -> tuple[Scenario, Result]:
    """The scenario and the registration state its device was assigned, after checking that
    it took one register and one poll and that the service API records the same."""
    scenario = scenarios[name]
    state = registered(devices, name)
    device_id = scenario.device_id or scenario.registration_id
    assert_assigned(state, scenario.registration_id, device_id, HUBS)
    assert_polled_once(devices[name], RETRY_AFTER)
    assert_recorded(service, state)
    return scenario, state


def assert_refused_at_open(devices: dict[str, Result], name: str) -> None:
    """dpsd refused the device at OPEN (``com.microsoft:open-error``, then CLOSE): rhea hands
    the Amqp transport the AMQP error as a plain object, which the SDK passes through
    untranslated, so the device sees the condition and the DPS error body; it did not poll."""
    error = failed(devices, name)
    assert error["name"] == "object", error
    assert error["condition"] == UNAUTHORIZED, error
    body = error["description"]
    assert isinstance(body, dict), error
    assert body["errorCode"] == 401002, body
    assert body["trackingId"], body
    assert body["message"], body
    calls = devices[name]["calls"]
    assert [call["call"] for call in calls] == ["register"], calls
    assert calls[0]["error"] is not None, calls
    assert calls[0]["status"] is None, calls


# --- what the devices saw ---------------------------------------------------------------------


def test_every_expected_outcome(devices: dict[str, Result]) -> None:
    outcomes = {name: line["ok"] for name, line in devices.items()}
    expected = {
        "individual": True,
        "group": True,
        "x509_individual": True,
        "x509_group": True,
        "disabled": False,
        "wrong_key": False,
        "not_enrolled": False,
        "custom_allocation": True,
    }
    assert outcomes == {
        **{f"{transport}_{what}": ok for transport in TRANSPORTS for what, ok in expected.items()},
        "amqp_builtin_hub": True,
        "amqpws_builtin_hub_x509": True,
    }, json.dumps(devices, indent=2)


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("what", ["individual", "x509_individual"])
def test_individual_enrollment_is_assigned(
    transport: str,
    what: str,
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # A SAS token as the SASL PLAIN password, or (no SASL) the device's self-signed
    # certificate in the TLS handshake.
    _, state = provisioned(devices, scenarios, service, f"{transport}_{what}")
    assert "symmetricKey" not in state, state  # as over HTTPS: only groups are named
    assert "x509" not in state, state


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("what", "attestation"), [("group", "symmetricKey"), ("x509_group", "x509")]
)
def test_group_device_is_assigned_and_its_group_named(
    transport: str,
    what: str,
    attestation: str,
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # A key derived from the group's (over Amqp with the port in the provisioning host), or a
    # certificate chain leaf + intermediate whose root is the group's signing certificate.
    scenario, state = provisioned(devices, scenarios, service, f"{transport}_{what}")
    assert state[attestation] == {"enrollmentGroupId": scenario.group_id}, state
    assert scenario.group_id is not None
    listed = list(service.device_registration_state.query(scenario.group_id))
    assert [item["registrationId"] for item in listed] == [scenario.registration_id], listed


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_disabled_enrollment_fails_with_status_disabled(
    transport: str,
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    name = f"{transport}_disabled"
    assert_disabled(failed(devices, name), scenarios[name].registration_id)
    assert_polled_once(devices[name], RETRY_AFTER, final="disabled")
    assert_recorded_disabled(service, scenarios[name].registration_id)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_wrong_key_is_refused_with_the_dps_error(
    transport: str,
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    assert_refused_at_open(devices, f"{transport}_wrong_key")
    # Nothing was registered. (Read from the enrollment, not a 404 from the registration state:
    # azure-core leaves an error response's keep-alive connection open, which holds dpsd's
    # graceful shutdown for its whole 5 s.)
    enrollment = service.enrollment.get(scenarios[f"{transport}_wrong_key"].registration_id)
    assert "registrationState" not in enrollment, enrollment


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_device_without_enrollment_is_refused_with_the_dps_error(
    transport: str, devices: dict[str, Result]
) -> None:
    assert_refused_at_open(devices, f"{transport}_not_enrolled")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_custom_allocation_webhook_picks_the_hub_and_the_payload(
    transport: str,
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    webhook: Webhook,
    service: DeviceProvisioningClient,
) -> None:
    name = f"{transport}_custom_allocation"
    scenario, state = provisioned(devices, scenarios, service, name)
    assert state["assignedHub"] == NAMED_HUB, state
    # The register message carried the device's payload; the answer carries the webhook's.
    assert state["payload"] == {"allocatedBy": "webhook", "echo": scenario.payload}, state
    webhook.assert_asked_once(scenario, HUBS)


# --- the built-in hub -------------------------------------------------------------------------


def test_symmetric_key_device_lands_in_the_builtin_hub_with_its_initial_twin(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    registry: IoTHubRegistryManager,
    service: DeviceProvisioningClient,
) -> None:
    scenario, state = provisioned(devices, scenarios, service, "amqp_builtin_hub")
    assert state["assignedHub"] == BUILTIN_HUB, state
    assert state["deviceId"] == scenario.device_id, state
    # The hub's device has the enrollment's two keys, the one the device signed with first.
    keys = service.enrollment.get_attestation_mechanism(scenario.registration_id)
    assert scenario.key == keys["symmetricKey"]["primaryKey"]
    assert_sas_device(
        registry, state["deviceId"], scenario.key, keys["symmetricKey"]["secondaryKey"]
    )
    assert_initial_twin(registry, state["deviceId"], INITIAL_TWIN)


def test_x509_device_over_websockets_lands_in_the_builtin_hub_self_signed(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    registry: IoTHubRegistryManager,
    service: DeviceProvisioningClient,
    builtin_x509_device: tuple[str, Issued],
) -> None:
    registration_id, certificate = builtin_x509_device
    _, state = provisioned(devices, scenarios, service, "amqpws_builtin_hub_x509")
    assert state["assignedHub"] == BUILTIN_HUB, state
    assert_x509_device(registry, registration_id, certificate)
    assert_initial_twin(registry, registration_id, INITIAL_TWIN)


def test_every_device_assigned_to_the_builtin_hub_exists_there(
    devices: dict[str, Result],
    scenarios: dict[str, Scenario],
    registry: IoTHubRegistryManager,
) -> None:
    # Enrollments without iotHubs spread over both linked hubs: whichever landed in the
    # built-in one must be there, authenticated as it attested.
    landed = [
        (scenarios[name], line["result"])
        for name, line in devices.items()
        if line["ok"] and line["result"]["assignedHub"] == BUILTIN_HUB
    ]
    assert len(landed) >= 2, devices  # at least the two enrolled to it
    for scenario, state in landed:
        device = registry.get_device(state["deviceId"])
        assert device.status == "enabled"
        expected = "sas" if scenario.identity is None else "selfSigned"
        assert device.authentication.type == expected, (scenario, state)
