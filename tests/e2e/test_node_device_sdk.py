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
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from tests.certs import issue
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

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
DEVICES_SCRIPT = NODE_DIR / "devices.js"
SDK_PACKAGES = (
    "azure-iot-provisioning-device",
    "azure-iot-provisioning-device-http",
    "azure-iot-security-symmetric-key",
    "azure-iot-security-x509",
)
ADDRESS = "127.0.0.78"
PORT = 443
RETRY_AFTER = 1  # seconds, passed to dpsd serve --retry-after
HUBS = ("hub-a.example.net", "hub-b.example.net")
STATIC_HUB = HUBS[1]
WEBHOOK_HUB = HUBS[0]  # the hub the custom allocation webhook picks
WEBHOOK_API_VERSION = "2021-10-01"
DEVICE_API_VERSION = "2019-03-31"  # what the device SDKs send
NODE_TIMEOUT = 30.0  # the whole script; each scenario is bounded in the script too
SCENARIO_TIMEOUT_MS = 10_000
MAX_POLLS = 5
HTTP_TIMEOUT = 10.0
WEBHOOK_STOP_TIMEOUT = 10.0

Result = dict[str, Any]


# --- device credentials, as the device SDKs make them -----------------------------------------


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The key a device of a symmetric-key group signs with (``az iot dps compute-device-key``)."""
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


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


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_enrollment(
    service: DeviceProvisioningClient, registration_id: str, **fields: Any
) -> str:
    """A symmetric-key individual enrollment; its generated primary key."""
    body = {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **fields}
    created = service.enrollment.create_or_update(registration_id, body)
    key: str = created["attestation"]["symmetricKey"]["primaryKey"]
    return key


@dataclass(frozen=True)
class Scenario:
    """One device the Node script registers, and what the enrollment side expects of it."""

    name: str
    registration_id: str
    key: str | None = None  # symmetric key; None for an X.509 device
    identity: tuple[str, str] | None = None  # X.509: certificate (chain) file and key file
    payload: Any = None
    device_id: str | None = None
    group_id: str | None = None

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {"name": self.name, "registrationId": self.registration_id}
        if self.identity is not None:
            line["certFile"], line["keyFile"] = self.identity
        else:
            line["key"] = self.key
        if self.payload is not None:
            line["payload"] = self.payload
        return line


@dataclass
class Webhook:
    """A custom allocation webhook on 127.0.0.1 that picks WEBHOOK_HUB and answers a payload
    echoing the device's; it records the path and body of every request dpsd posts."""

    server: ThreadingHTTPServer
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/allocate?code=e2e"

    @staticmethod
    def answer(body: Mapping[str, Any]) -> dict[str, Any]:
        context = body.get("deviceRuntimeContext") or {}
        return {
            "iotHubHostName": WEBHOOK_HUB,
            "payload": {"allocatedBy": "webhook", "echo": context.get("payload")},
        }


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """Webhook served in a thread for the module; shut down (bounded) afterwards."""
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append({"path": self.path, "body": body})
            data = json.dumps(Webhook.answer(body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name="webhook", daemon=True)
    thread.start()
    yield Webhook(server, requests)
    server.shutdown()
    server.server_close()
    thread.join(timeout=WEBHOOK_STOP_TIMEOUT)
    assert not thread.is_alive(), "the webhook thread did not stop"


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
    group = service.enrollment_group.create_or_update(
        group_id, {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}
    )
    group_keys = group["attestation"]["symmetricKey"]
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
    certificate = issue(x509_individual)
    attestation = {"primary": {"certificate": certificate.pem}}
    service.enrollment.create_or_update(
        x509_individual,
        {
            "registrationId": x509_individual,
            "attestation": {"type": "x509", "x509": {"clientCertificates": attestation}},
        },
    )
    identity = write_identity(identities, "individual", [certificate])
    scenarios.append(Scenario("x509_individual", x509_individual, identity=identity))

    # X.509 group: the root CA signs it, the device sends its leaf and the intermediate.
    x509_group = new_id("node-x509-group")
    root = issue(f"{x509_group}-root", ca=True)
    intermediate = issue(f"{x509_group}-intermediate", root, ca=True)
    service.enrollment_group.create_or_update(
        x509_group,
        {
            "enrollmentGroupId": x509_group,
            "attestation": {
                "type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}},
            },
        },
    )
    member = new_id("node-x509-member")
    identity = write_identity(identities, "member", [issue(member, intermediate), intermediate])
    scenarios.append(Scenario("x509_group", member, identity=identity, group_id=x509_group))

    # Custom allocation: the webhook served above picks the hub and the returned payload.
    custom = new_id("node-custom")
    definition = {"webhookUrl": webhook.url, "apiVersion": WEBHOOK_API_VERSION}
    key = create_enrollment(
        service, custom, allocationPolicy="custom", customAllocationDefinition=definition
    )
    payload = {"modelId": "dtmi:dpsd:sensor;1", "site": "north"}
    scenarios.append(Scenario("custom_allocation", custom, key, payload=payload))

    return {scenario.name: scenario for scenario in scenarios}


# --- the Node run -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not on PATH")
    for package in SDK_PACKAGES:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            skip_or_fail(
                f"tests/node/node_modules/{package} is missing: "
                "run scripts/install (npm ci --prefix tests/node)"
            )
    return node


@pytest.fixture(scope="module")
def devices(
    node_binary: str,
    dpsd_on_443: DpsdProcess,
    id_scope: str,
    device_scenarios: dict[str, Scenario],
) -> dict[str, Result]:
    """Every scenario's JSON line from one run of tests/node/devices.js, by name."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("DPS")}
    env["NODE_EXTRA_CA_CERTS"] = dpsd_on_443.info["caCertificatePath"]
    env["DPS_PROVISIONING_HOST"] = ADDRESS
    env["DPS_ID_SCOPE"] = id_scope
    env["DPS_DEVICE_SCENARIOS"] = json.dumps([s.to_json() for s in device_scenarios.values()])
    env["DPS_SCENARIO_TIMEOUT_MS"] = str(SCENARIO_TIMEOUT_MS)
    try:
        run = subprocess.run(
            [node_binary, str(DEVICES_SCRIPT)],
            cwd=NODE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=NODE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(
            f"devices.js did not finish within {NODE_TIMEOUT}s:\n{timeout.stdout!r}\n"
            f"{timeout.stderr!r}\n--- dpsd ---\n{dpsd_on_443.output()}"
        )
    context = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\n--- dpsd ---\n{dpsd_on_443.output()}"
    assert run.returncode == 0, f"devices.js exited with {run.returncode}\n{context}"
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    assert lines, f"devices.js printed nothing\n{context}"
    assert lines[-1].get("done") is True, f"devices.js did not finish\n{context}"
    results = {line["scenario"]: line for line in lines[:-1]}
    assert sorted(results) == sorted(device_scenarios), context
    assert lines[-1]["count"] == len(device_scenarios), context
    return results


def registered(results: Mapping[str, Result], name: str) -> Result:
    """The registration state the SDK resolved with, failing with its error when it threw."""
    line = results[name]
    assert line["ok"], f"scenario {name} threw:\n{json.dumps(line, indent=2)}"
    state: Result = line["result"]
    return state


def failed(results: Mapping[str, Result], name: str) -> Result:
    """The error the SDK rejected with, failing when the registration succeeded."""
    line = results[name]
    assert not line["ok"], f"scenario {name} succeeded:\n{json.dumps(line, indent=2)}"
    error: Result = line["error"]
    return error


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


def assert_assigned(
    state: Mapping[str, Any], registration_id: str, device_id: str, hubs: tuple[str, ...]
) -> None:
    assert state["registrationId"] == registration_id, state
    assert state["status"] == "assigned", state
    assert state["substatus"] == "initialAssignment", state
    assert state["assignedHub"] in hubs, state
    assert state["deviceId"] == device_id, state
    assert state["etag"], state
    assert state["createdDateTimeUtc"], state
    assert state["lastUpdatedDateTimeUtc"], state
    assert "errorCode" not in state, state


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
    # dpsd answers the operation with 200 {status: "disabled"}; the SDK's polling state machine
    # knows assigning, assigned, failed and registering only, and rejects any other status with
    # SyntaxError('status is <status>'), the operation status attached as error.result.
    scenario = device_scenarios["disabled"]
    error = failed(devices, "disabled")
    assert error["name"] == "SyntaxError", error
    assert error["message"] == "status is disabled", error
    assert error["statusCode"] == 200, error
    result = error["result"]
    assert result["status"] == "disabled", result
    assert result["operationId"], result
    state = result["registrationState"]
    assert state["registrationId"] == scenario.registration_id, state
    assert state["status"] == "disabled", state
    assert state["errorCode"] == 401008, state
    assert state["errorMessage"], state
    assert "assignedHub" not in state, state
    assert_polled_with_retry_after(devices["disabled"], "disabled")

    recorded = service.device_registration_state.get(scenario.registration_id)
    assert recorded["status"] == "disabled", recorded
    assert recorded["errorCode"] == 401008, recorded
    assert not recorded.get("assignedHub"), recorded


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

    sent = [
        request
        for request in webhook.requests
        if (request["body"].get("deviceRuntimeContext") or {}).get("registrationId")
        == scenario.registration_id
    ]
    assert len(sent) == 1, webhook.requests
    assert sent[0]["path"] == "/allocate?code=e2e", sent[0]
    body = sent[0]["body"]
    context = body["deviceRuntimeContext"]
    assert context["registrationId"] == scenario.registration_id, body
    assert context["payload"] == scenario.payload, body  # setProvisioningPayload's payload
    assert "symmetricKey" in context, body
    assert body["individualEnrollment"]["registrationId"] == scenario.registration_id, body
    assert sorted(body["linkedHubs"]) == sorted(HUBS), body


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
