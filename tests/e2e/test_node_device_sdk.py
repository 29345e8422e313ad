"""Devices provisioned through a real dpsd over HTTPS: with the official Node device SDK
(azure-iot-provisioning-device + -http, symmetric keys from azure-iot-security-symmetric-key,
X.509 client certificates from azure-iot-security-x509, pinned in tests/node), and with raw
HTTPS requests for the error paths the SDK cannot reach.

The Node transport only connects to port 443, so the server listens on 127.0.0.78:443 (not
127.0.0.77, which test_node_sdk.py uses, so both modules can run in one session) and answers
with ``retry-after: 1``. Hubs are linked with ``dpsd hub add`` on the running server's store,
enrollments are made with the official Python service SDK, then tests/node/devices.js registers
every device scenario once, concurrently, and prints one JSON line each; the tests here assert
on those observations and on what the service API records afterwards. The X.509 devices'
certificates are minted here (tests/certs.py); the custom allocation webhook is served here
too, by http.server on 127.0.0.1 (dpsd calls it in the background while the device polls).

Skipped, with the reason, when port 443 cannot be bound (not root), and the SDK tests also when
``node`` or tests/node/node_modules is missing; when ``CI`` is set, each of those fails instead.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import signal
import ssl
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from tests.e2e.node_clients import (
    Result,
    Scenario,
    Webhook,
    assert_assigned,
    assert_disabled,
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

ADDRESS = "127.0.0.78"
PORT = 443
RETRY_AFTER = 1  # seconds, passed to dpsd serve --retry-after
HUBS = ("hub-a.example.net", "hub-b.example.net")
STATIC_HUB = HUBS[1]
WEBHOOK_HUB = HUBS[0]  # the hub the custom allocation webhook picks
DEVICE_API_VERSION = "2019-03-31"  # what the device SDKs send
NODE_TIMEOUT = 30.0  # the whole script; each scenario is bounded in the script too
MAX_POLLS = 5
HTTP_TIMEOUT = 10.0


def device_token(
    id_scope: str, registration_id: str, key: str, *, expiry: int | None = None
) -> str:
    """A device SAS token as the Python device SDK writes it (``sr`` URL-encoded and signed
    encoded, ``skn=registration``)."""
    resource = quote(f"{id_scope}/registrations/{registration_id}", safe="")
    se = int(time.time()) + 3600 if expiry is None else expiry
    digest = hmac.new(base64.b64decode(key), f"{resource}\n{se}".encode(), hashlib.sha256)
    signature = quote(base64.b64encode(digest.digest()).decode(), safe="")
    return f"SharedAccessSignature sr={resource}&sig={signature}&se={se}&skn=registration"


# --- the server, its hubs and the enrollments -------------------------------------------------


@pytest.fixture(scope="module")
def dpsd_on_443(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    """dpsd on ADDRESS:443, HTTPS only, retry-after RETRY_AFTER; stopped cleanly."""
    problem = bind_problem(ADDRESS, PORT)
    if problem is not None:
        skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-node-devices")
    listen = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", str(PORT)]
    server = start_dpsd_listening(
        base / "data", base / "serve.log", serve_args=[*listen, "--retry-after", str(RETRY_AFTER)]
    )
    yield server
    server.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def linked_hubs(dpsd_on_443: DpsdProcess) -> tuple[str, ...]:
    """HUBS, linked on the running server's store (it sees them at its next registration)."""
    for hub in HUBS:
        result = run_dpsd("hub", "add", hub, "--data-dir", str(dpsd_on_443.data_dir))
        assert result.returncode == 0, f"dpsd hub add {hub}:\n{result.stdout}{result.stderr}"
    return HUBS


@pytest.fixture(scope="module")
def service(dpsd_on_443: DpsdProcess) -> Iterator[DeviceProvisioningClient]:
    client = sdk_client(dpsd_on_443.info)
    with client:
        yield client


@pytest.fixture(scope="module")
def id_scope(dpsd_on_443: DpsdProcess) -> str:
    scope: str = dpsd_on_443.info["idScope"]
    return scope


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """The custom allocation webhook, picking WEBHOOK_HUB."""
    with serve_webhook(WEBHOOK_HUB) as served:
        yield served


@pytest.fixture(scope="module")
def device_scenarios(
    service: DeviceProvisioningClient,
    linked_hubs: tuple[str, ...],
    webhook: Webhook,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Scenario]:
    """Every enrollment the Node devices register against, made with the Python service SDK."""
    scenarios: list[Scenario] = []
    identities = tmp_path_factory.mktemp("node-x509")

    individual = new_id("node-ind")
    scenarios.append(Scenario("individual", individual, create_enrollment(service, individual)))

    with_device_id = new_id("node-devid")
    device_id = new_id("custom-device")
    key = create_enrollment(service, with_device_id, deviceId=device_id)
    scenarios.append(Scenario("individual_device_id", with_device_id, key, device_id=device_id))

    group_id = new_id("node-group")
    group_keys = create_symmetric_group(service, group_id)
    for name, group_key in (
        ("group_primary", group_keys["primaryKey"]),
        ("group_secondary", group_keys["secondaryKey"]),
    ):
        member = new_id(f"node-{name.replace('_', '-')}")
        derived = derive_device_key(group_key, member)
        scenarios.append(Scenario(name, member, derived, group_id=group_id))

    disabled = new_id("node-disabled")
    key = create_enrollment(service, disabled, provisioningStatus="disabled")
    scenarios.append(Scenario("disabled", disabled, key))

    wrong_key = new_id("node-wrongkey")
    create_enrollment(service, wrong_key)
    scenarios.append(Scenario("wrong_key", wrong_key, random_key()))

    scenarios.append(Scenario("not_enrolled", new_id("node-unknown"), random_key()))

    static = new_id("node-static")
    key = create_enrollment(service, static, allocationPolicy="static", iotHubs=[STATIC_HUB])
    payload = {"modelId": "dtmi:dpsd:thermostat;1", "firmware": "1.2.3"}
    scenarios.append(Scenario("static", static, key, payload=payload))

    # X.509 individual enrollment: the device's self-signed certificate is the enrollment's
    # client certificate.
    x509_individual = new_id("node-x509-ind")
    identity = create_x509_enrollment(service, x509_individual, identities)
    scenarios.append(Scenario("x509_individual", x509_individual, identity=identity))

    # X.509 group: the root CA signs it, the device sends its leaf and the intermediate.
    x509_group = new_id("node-x509-group")
    member = new_id("node-x509-member")
    identity = create_x509_group_member(service, x509_group, member, identities)
    scenarios.append(Scenario("x509_group", member, identity=identity, group_id=x509_group))

    # Custom allocation: the webhook served above picks the hub and the returned payload.
    custom = new_id("node-custom")
    key = create_enrollment(service, custom, **webhook.custom_allocation())
    payload = {"modelId": "dtmi:dpsd:sensor;1", "site": "north"}
    scenarios.append(Scenario("custom_allocation", custom, key, payload=payload))

    return {scenario.name: scenario for scenario in scenarios}


# --- the Node run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_binary() -> str:
    return require_node()


@pytest.fixture(scope="module")
def devices(
    node_binary: str, dpsd_on_443: DpsdProcess, device_scenarios: dict[str, Scenario]
) -> dict[str, Result]:
    """Every scenario's JSON line from one run of tests/node/devices.js, by name."""
    scenarios = list(device_scenarios.values())
    return run_devices(node_binary, dpsd_on_443, scenarios, ADDRESS, NODE_TIMEOUT)


def assert_polled_with_retry_after(line: Mapping[str, Any], final_status: str) -> None:
    """One register (202 assigning, retry-after) then one poll RETRY_AFTER seconds later, at the
    interval the SDK derived from the header (its default is 2000 ms)."""
    calls = line["calls"]
    assert [call["call"] for call in calls] == ["register", "poll"], calls
    register, poll = calls
    assert register["statusCode"] == 202, register
    assert register["status"] == "assigning", register
    assert register["retryAfter"] == str(RETRY_AFTER), register
    assert register["pollingInterval"] == RETRY_AFTER * 1000, register
    assert poll["startedMs"] - register["endedMs"] >= RETRY_AFTER * 1000 - 10, calls
    assert poll["statusCode"] == 200, poll
    assert poll["status"] == final_status, poll
    assert poll["error"] is None, poll


def assert_unauthorized(error: Mapping[str, Any], line: Mapping[str, Any]) -> None:
    """The register PUT is refused with 401, which the SDK surfaces as UnauthorizedError with
    the DPS error body; it does not poll."""
    assert error["name"] == "UnauthorizedError", error
    assert error["statusCode"] == 401, error
    assert "application/json" in (error["contentType"] or ""), error
    assert error["errorCodeHeader"] == "401002", error
    body = error["responseBody"]
    assert isinstance(body, dict), error
    assert body["errorCode"] == 401002, body
    assert body["trackingId"], body
    # azure-iot-http-base parses only IoT Hub's {"Message": "ErrorCode:...;..."} bodies; for any
    # other body, the DPS one included, the message is 'Error: ' followed by the raw body.
    assert error["message"].startswith("Error: "), error
    assert json.loads(error["message"].removeprefix("Error: ")) == body, error
    assert [call["call"] for call in line["calls"]] == ["register"], line["calls"]
    assert line["calls"][0]["statusCode"] == 401, line["calls"]


# --- Node device SDK ---------------------------------------------------------------------------


def test_every_expected_outcome(devices: dict[str, Result]) -> None:
    outcomes = {name: line["ok"] for name, line in devices.items()}
    assert outcomes == {
        "individual": True,
        "individual_device_id": True,
        "group_primary": True,
        "group_secondary": True,
        "disabled": False,
        "wrong_key": False,
        "not_enrolled": False,
        "static": True,
        "x509_individual": True,
        "x509_group": True,
        "custom_allocation": True,
    }, json.dumps(devices, indent=2)


def test_individual_enrollment_is_assigned_to_a_linked_hub(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    scenario = device_scenarios["individual"]
    state = registered(devices, "individual")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert not (state.get("symmetricKey") or {}).get("enrollmentGroupId"), state
    assert_polled_with_retry_after(devices["individual"], "assigned")

    recorded = service.device_registration_state.get(scenario.registration_id)
    assert recorded["status"] == "assigned", recorded
    assert recorded["assignedHub"] == state["assignedHub"], recorded
    assert recorded["deviceId"] == scenario.registration_id, recorded
    assert recorded["etag"] == state["etag"], recorded


def test_individual_enrollment_device_id_names_the_device(
    devices: dict[str, Result], device_scenarios: dict[str, Scenario]
) -> None:
    scenario = device_scenarios["individual_device_id"]
    assert scenario.device_id is not None
    state = registered(devices, "individual_device_id")
    assert_assigned(state, scenario.registration_id, scenario.device_id, HUBS)


@pytest.mark.parametrize("name", ["group_primary", "group_secondary"])
def test_group_device_with_a_derived_key_is_assigned_and_recorded(
    name: str,
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    scenario = device_scenarios[name]
    state = registered(devices, name)
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert state["symmetricKey"] == {"enrollmentGroupId": scenario.group_id}, state
    assert_polled_with_retry_after(devices[name], "assigned")

    recorded = service.device_registration_state.get(scenario.registration_id)
    assert recorded["registrationId"] == scenario.registration_id, recorded
    assert recorded["status"] == "assigned", recorded
    assert recorded["assignedHub"] == state["assignedHub"], recorded
    assert recorded["deviceId"] == scenario.registration_id, recorded
    assert recorded["etag"] == state["etag"], recorded


def test_group_registration_states_query_lists_its_devices(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    members = [device_scenarios[name] for name in ("group_primary", "group_secondary")]
    for member in members:
        registered(devices, member.name)
    group_id = members[0].group_id
    assert group_id is not None
    listed = service.device_registration_state.query(group_id)
    by_id = {state["registrationId"]: state for state in listed}
    assert sorted(by_id) == sorted(member.registration_id for member in members), listed
    for member in members:
        state = by_id[member.registration_id]
        assert state["status"] == "assigned", state
        assert state["assignedHub"] == devices[member.name]["result"]["assignedHub"], state


def test_disabled_enrollment_fails_with_status_disabled(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # dpsd answers the operation with 200 {status: "disabled"}.
    scenario = device_scenarios["disabled"]
    error = failed(devices, "disabled")
    assert_disabled(error, scenario.registration_id)
    assert error["statusCode"] == 200, error
    assert_polled_with_retry_after(devices["disabled"], "disabled")
    assert_recorded_disabled(service, scenario.registration_id)


def test_wrong_key_is_refused_with_401(devices: dict[str, Result]) -> None:
    assert_unauthorized(failed(devices, "wrong_key"), devices["wrong_key"])


def test_device_without_enrollment_is_refused_with_401(devices: dict[str, Result]) -> None:
    assert_unauthorized(failed(devices, "not_enrolled"), devices["not_enrolled"])


def test_static_allocation_assigns_the_named_hub(
    devices: dict[str, Result], device_scenarios: dict[str, Scenario]
) -> None:
    # The device sends a payload; dpsd returns one only from a custom allocation webhook, so
    # nothing is asserted about it here.
    scenario = device_scenarios["static"]
    state = registered(devices, "static")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert state["assignedHub"] == STATIC_HUB, state
    assert_polled_with_retry_after(devices["static"], "assigned")


def test_x509_individual_enrollment_is_assigned(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # The SDK hands {cert, key} to the HTTPS agent, which presents the self-signed certificate
    # in the TLS handshake; no Authorization header is sent.
    scenario = device_scenarios["x509_individual"]
    state = registered(devices, "x509_individual")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert not state.get("x509"), state  # only a group is named
    assert "symmetricKey" not in state, state
    assert_polled_with_retry_after(devices["x509_individual"], "assigned")

    recorded = service.device_registration_state.get(scenario.registration_id)
    assert recorded["status"] == "assigned", recorded
    assert recorded["assignedHub"] == state["assignedHub"], recorded
    assert recorded["etag"] == state["etag"], recorded


def test_x509_group_device_with_an_intermediate_is_assigned_and_names_the_group(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    service: DeviceProvisioningClient,
) -> None:
    # The certificate file holds leaf + intermediate; the group's signing certificate is the
    # root, which the device does not send.
    scenario = device_scenarios["x509_group"]
    state = registered(devices, "x509_group")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert state["x509"] == {"enrollmentGroupId": scenario.group_id}, state
    assert "symmetricKey" not in state, state
    assert_polled_with_retry_after(devices["x509_group"], "assigned")

    assert scenario.group_id is not None
    listed = list(service.device_registration_state.query(scenario.group_id))
    assert [item["registrationId"] for item in listed] == [scenario.registration_id], listed
    assert listed[0]["assignedHub"] == state["assignedHub"], listed


def test_custom_allocation_webhook_picks_the_hub_and_the_payload(
    devices: dict[str, Result],
    device_scenarios: dict[str, Scenario],
    webhook: Webhook,
) -> None:
    scenario = device_scenarios["custom_allocation"]
    state = registered(devices, "custom_allocation")
    assert_assigned(state, scenario.registration_id, scenario.registration_id, HUBS)
    assert state["assignedHub"] == WEBHOOK_HUB, state
    # The SDK resolves with the whole registrationState, the webhook's payload included.
    assert state["payload"] == {"allocatedBy": "webhook", "echo": scenario.payload}, state
    assert_polled_with_retry_after(devices["custom_allocation"], "assigned")

    webhook.assert_asked_once(scenario, HUBS)


# --- raw HTTPS: the device API's error paths -------------------------------------------------


@dataclass(frozen=True)
class RawDevice:
    id_scope: str
    registration_id: str
    key: str

    def path(self, tail: str = "register", *, id_scope: str | None = None) -> str:
        scope = self.id_scope if id_scope is None else id_scope
        return f"/{scope}/registrations/{self.registration_id}/{tail}"

    def token(self, *, key: str | None = None, expiry: int | None = None) -> str:
        return device_token(self.id_scope, self.registration_id, key or self.key, expiry=expiry)


@pytest.fixture(scope="module")
def http(dpsd_on_443: DpsdProcess) -> Iterator[httpx.Client]:
    verify = ssl.create_default_context(cafile=dpsd_on_443.info["caCertificatePath"])
    with httpx.Client(
        base_url=f"https://{ADDRESS}",
        verify=verify,
        params={"api-version": DEVICE_API_VERSION},
        timeout=HTTP_TIMEOUT,
    ) as client:
        yield client


@pytest.fixture(scope="module")
def raw_device(
    service: DeviceProvisioningClient, id_scope: str, linked_hubs: tuple[str, ...]
) -> RawDevice:
    registration_id = new_id("raw")
    return RawDevice(id_scope, registration_id, create_enrollment(service, registration_id))


def register(
    http: httpx.Client, device: RawDevice, authorization: str | None, **body: Any
) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    payload = {"registrationId": device.registration_id, **body}
    return http.put(device.path(), json=payload, headers=headers)


def assert_device_error(response: httpx.Response, status: int, code: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    assert response.headers["x-ms-error-code"] == str(code), response.headers
    body = response.json()
    assert body["errorCode"] == code, body
    assert body["message"], body
    assert body["trackingId"], body


def test_raw_bad_signature_is_401(http: httpx.Client, raw_device: RawDevice) -> None:
    response = register(http, raw_device, raw_device.token(key=random_key()))
    assert_device_error(response, 401, 401002)


def test_raw_unknown_registration_id_is_401(http: httpx.Client, id_scope: str) -> None:
    stranger = RawDevice(id_scope, new_id("raw-unknown"), random_key())
    assert_device_error(register(http, stranger, stranger.token()), 401, 401002)


def test_raw_wrong_id_scope_is_401(http: httpx.Client, raw_device: RawDevice) -> None:
    other_scope = "0ne00000000" if raw_device.id_scope.lower() != "0ne00000000" else "0ne00000001"
    elsewhere = RawDevice(other_scope, raw_device.registration_id, raw_device.key)
    # Signed correctly with the device's own key, for the other scope's audience.
    response = http.put(
        elsewhere.path(),
        json={"registrationId": raw_device.registration_id},
        headers={"Authorization": elsewhere.token()},
    )
    assert_device_error(response, 401, 401002)


def test_raw_expired_token_is_401(http: httpx.Client, raw_device: RawDevice) -> None:
    expired = raw_device.token(expiry=int(time.time()) - 60)
    assert_device_error(register(http, raw_device, expired), 401, 401002)


def test_raw_missing_authorization_is_401(http: httpx.Client, raw_device: RawDevice) -> None:
    assert_device_error(register(http, raw_device, None), 401, 401002)


def test_raw_tpm_attestation_is_400(http: httpx.Client, raw_device: RawDevice) -> None:
    tpm = {"endorsementKey": random_key(), "storageRootKey": random_key()}
    response = register(http, raw_device, raw_device.token(), tpm=tpm)
    assert_device_error(response, 400, 400004)


def test_raw_unknown_operation_is_404(http: httpx.Client, raw_device: RawDevice) -> None:
    unknown = f"4.{'0' * 16}.{uuid.uuid4()}"
    response = http.get(
        raw_device.path(f"operations/{unknown}"),
        headers={"Authorization": raw_device.token()},
    )
    assert_device_error(response, 404, 404205)


def test_raw_register_then_poll_until_assigned(
    http: httpx.Client, raw_device: RawDevice, linked_hubs: tuple[str, ...]
) -> None:
    headers = {"Authorization": raw_device.token()}
    started = register(http, raw_device, headers["Authorization"])
    assert started.status_code == 202, started.text
    assert started.headers["content-type"].startswith("application/json"), started.headers
    assert started.headers["retry-after"] == str(RETRY_AFTER), started.headers
    body = started.json()
    assert body["status"] == "assigning", body
    operation_id = body["operationId"]
    assert operation_id, body

    response = started
    for _ in range(MAX_POLLS):
        time.sleep(int(response.headers["retry-after"]))  # the server's retry-after, honoured
        response = http.get(raw_device.path(f"operations/{operation_id}"), headers=headers)
        if response.status_code != 202:
            break
        assert response.json()["status"] == "assigning", response.text
    assert response.status_code == 200, f"not done after {MAX_POLLS} polls: {response.text}"
    assert "retry-after" not in response.headers, response.headers
    status = response.json()
    assert status["operationId"] == operation_id, status
    assert status["status"] == "assigned", status
    state = status["registrationState"]
    assert_assigned(state, raw_device.registration_id, raw_device.registration_id, linked_hubs)
