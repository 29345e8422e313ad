"""What the end-to-end modules of the official Node clients share: a bounded run of a script
of tests/node and the JSON lines it prints; and for the device SDK (over HTTPS, MQTT and
AMQP), the check that Node and the SDK packages are installed, the enrollments its devices
register against (made with the official Python service SDK), a custom allocation webhook,
one run of tests/node/devices.js over every scenario at once, and reading what each device
saw.

devices.js prints one JSON line per scenario (``ok`` with the registration state the SDK
resolved with, or the error it threw, and the register and poll calls its transport made),
then ``{"done": true, "count": N}``; the modules assert on those lines.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from tests.certs import Issued, issue
from tests.e2e.process import DpsdProcess, skip_or_fail
from tests.e2e.test_x509_devices import write_identity

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
DEVICES_SCRIPT = NODE_DIR / "devices.js"
SDK_PACKAGES = (
    "azure-iot-provisioning-device",
    "azure-iot-provisioning-device-http",
    "azure-iot-security-symmetric-key",
    "azure-iot-security-x509",
)
SCENARIO_TIMEOUT_MS = 10_000  # each scenario, bounded inside devices.js
WEBHOOK_API_VERSION = "2021-10-01"
WEBHOOK_STOP_TIMEOUT = 10.0

Result = dict[str, Any]


# --- device credentials, as the device SDKs make them -----------------------------------------


def derive_device_key(group_key: str, registration_id: str) -> str:
    """The key a device of a symmetric-key group signs with (``az iot dps compute-device-key``)."""
    digest = hmac.new(base64.b64decode(group_key), registration_id.encode(), hashlib.sha256)
    return base64.b64encode(digest.digest()).decode()


def random_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


# --- enrollments ------------------------------------------------------------------------------


def create_enrollment(
    service: DeviceProvisioningClient, registration_id: str, **fields: Any
) -> str:
    """A symmetric-key individual enrollment; its generated primary key."""
    body = {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **fields}
    created = service.enrollment.create_or_update(registration_id, body)
    key: str = created["attestation"]["symmetricKey"]["primaryKey"]
    return key


def create_symmetric_group(
    service: DeviceProvisioningClient, group_id: str, **fields: Any
) -> dict[str, str]:
    """A symmetric-key enrollment group; its generated keys (``primaryKey``, ``secondaryKey``)."""
    body = {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}, **fields}
    group = service.enrollment_group.create_or_update(group_id, body)
    keys: dict[str, str] = group["attestation"]["symmetricKey"]
    return keys


def create_x509_enrollment(
    service: DeviceProvisioningClient,
    registration_id: str,
    folder: Path,
    device: Issued | None = None,
    **fields: Any,
) -> tuple[str, str]:
    """An individual enrollment whose client certificate is the device's self-signed one
    (``device``, or one issued here); the device's certificate and key files."""
    certificate = device or issue(registration_id)
    attestation = {"primary": {"certificate": certificate.pem}}
    service.enrollment.create_or_update(
        registration_id,
        {
            "registrationId": registration_id,
            "attestation": {"type": "x509", "x509": {"clientCertificates": attestation}},
            **fields,
        },
    )
    return write_identity(folder, registration_id, [certificate])


def create_x509_group_member(
    service: DeviceProvisioningClient, group_id: str, member_id: str, folder: Path
) -> tuple[str, str]:
    """An X.509 group whose signing certificate is a root CA, and a device of it whose leaf an
    intermediate signed: the device's certificate file (leaf + intermediate) and key file."""
    root = issue(f"{group_id}-root", ca=True)
    intermediate = issue(f"{group_id}-intermediate", root, ca=True)
    service.enrollment_group.create_or_update(
        group_id,
        {
            "enrollmentGroupId": group_id,
            "attestation": {
                "type": "x509",
                "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}},
            },
        },
    )
    return write_identity(folder, member_id, [issue(member_id, intermediate), intermediate])


# --- the custom allocation webhook ------------------------------------------------------------


@dataclass
class Webhook:
    """A custom allocation webhook on 127.0.0.1 that picks ``hub`` and answers a payload
    echoing the device's; it records the path and body of every request dpsd posts."""

    server: ThreadingHTTPServer
    hub: str
    requests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/allocate?code=e2e"

    def answer(self, body: Mapping[str, Any]) -> dict[str, Any]:
        context = body.get("deviceRuntimeContext") or {}
        return {
            "iotHubHostName": self.hub,
            "payload": {"allocatedBy": "webhook", "echo": context.get("payload")},
        }

    def custom_allocation(self) -> dict[str, Any]:
        """The enrollment fields that send its allocation to this webhook."""
        definition = {"webhookUrl": self.url, "apiVersion": WEBHOOK_API_VERSION}
        return {"allocationPolicy": "custom", "customAllocationDefinition": definition}

    def assert_asked_once(self, scenario: Scenario, linked_hubs: tuple[str, ...]) -> None:
        """dpsd posted one request for the scenario's device, with what the device sent."""
        sent = [
            request
            for request in self.requests
            if (request["body"].get("deviceRuntimeContext") or {}).get("registrationId")
            == scenario.registration_id
        ]
        assert len(sent) == 1, self.requests
        assert sent[0]["path"] == "/allocate?code=e2e", sent[0]
        body = sent[0]["body"]
        context = body["deviceRuntimeContext"]
        assert context["registrationId"] == scenario.registration_id, body
        assert context["payload"] == scenario.payload, body  # setProvisioningPayload's payload
        assert "symmetricKey" in context, body
        assert body["individualEnrollment"]["registrationId"] == scenario.registration_id, body
        assert sorted(body["linkedHubs"]) == sorted(linked_hubs), body


@contextmanager
def serve_webhook(hub: str) -> Iterator[Webhook]:
    """A Webhook served in a thread; shut down (bounded) afterwards."""
    webhook: Webhook | None = None

    def answer(path: str, body: bytes) -> Any:
        assert webhook is not None
        request = json.loads(body)
        webhook.requests.append({"path": path, "body": request})
        return webhook.answer(request)

    with _serving(answer, "webhook", lambda: None) as server:
        webhook = Webhook(server, hub)
        yield webhook


@dataclass
class HeldWebhook:
    """A custom allocation webhook that picks ``hub`` only once ``release`` is set;
    ``asked`` is set when dpsd posts to it."""

    server: ThreadingHTTPServer
    asked: threading.Event
    release: threading.Event

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/allocate"


@contextmanager
def held_webhook(hub: str, wait: float) -> Iterator[HeldWebhook]:
    """A HeldWebhook served in a thread: each request waits at most ``wait`` seconds for
    the release; released and shut down (bounded) afterwards."""
    asked, release = threading.Event(), threading.Event()

    def answer(path: str, body: bytes) -> Any:
        asked.set()
        release.wait(wait)
        return {"iotHubHostName": hub}

    with _serving(answer, "held-webhook", release.set) as server:
        yield HeldWebhook(server, asked, release)


@contextmanager
def _serving(
    answer: Callable[[str, bytes], Any], name: str, before_stop: Callable[[], None]
) -> Iterator[ThreadingHTTPServer]:
    """An HTTP server on 127.0.0.1 in a thread, answering each POST with the JSON of
    ``answer(path, body)``; ``before_stop`` runs first when it stops, which it must within
    WEBHOOK_STOP_TIMEOUT."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            data = json.dumps(answer(self.path, body)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        before_stop()
        server.shutdown()
        server.server_close()
        thread.join(timeout=WEBHOOK_STOP_TIMEOUT)
    assert not thread.is_alive(), f"the {name} thread did not stop"


# --- the Node run -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    """One device devices.js registers, and what the enrollment side expects of it."""

    name: str
    registration_id: str
    key: str | None = None  # symmetric key; None for an X.509 device
    identity: tuple[str, str] | None = None  # X.509: certificate (chain) file and key file
    transport: str = "http"  # or "mqtt", "mqttws", "amqp", "amqpws"
    payload: Any = None
    provisioning_host: str | None = None  # None: the run's provisioning host
    device_id: str | None = None
    group_id: str | None = None
    retry_throttled: bool = False  # register again, as told, when the SDK rejects with a 429
    tpm: Mapping[str, Any] | None = None  # a TPM device: its swtpm and bridge (devices.js)
    sdk_derives_id: bool = False  # a TPM device whose SDK derives its id from the EK

    def to_json(self) -> dict[str, Any]:
        line: dict[str, Any] = {
            "name": self.name,
            "registrationId": None if self.sdk_derives_id else self.registration_id,
            "transport": self.transport,
        }
        if self.identity is not None:
            line["certFile"], line["keyFile"] = self.identity
        elif self.tpm is not None:
            line["tpm"] = dict(self.tpm)
        else:
            line["key"] = self.key
        if self.payload is not None:
            line["payload"] = self.payload
        if self.provisioning_host is not None:
            line["provisioningHost"] = self.provisioning_host
        if self.retry_throttled:
            line["retryThrottled"] = True
        return line


def require_node(*packages: str) -> str:
    """The ``node`` binary, once it and ``packages`` (besides SDK_PACKAGES) are installed;
    skipped (failed in CI) otherwise."""
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not on PATH")
    for package in (*SDK_PACKAGES, *packages):
        if not (NODE_DIR / "node_modules" / package).is_dir():
            skip_or_fail(
                f"tests/node/node_modules/{package} is missing: "
                "run scripts/install (npm ci --prefix tests/node)"
            )
    return node


@dataclass(frozen=True)
class NodeRun:
    """The JSON lines a script printed, and what to show when they disappoint."""

    script: str
    lines: list[Result]
    context: str  # the script's stdout and stderr, and dpsd's output

    def by_scenario(self) -> dict[str, Result]:
        """The scenarios' lines by name, once the last line says all of them were printed."""
        assert self.lines, f"{self.script} printed nothing\n{self.context}"
        count = len(self.lines) - 1
        last = self.lines[-1]
        assert last == {"done": True, "count": count}, f"{self.script} stopped\n{self.context}"
        results = {line["scenario"]: line for line in self.lines[:-1]}
        assert len(results) == count, f"scenarios printed twice\n{self.context}"
        return results


def node_env(server: DpsdProcess, **settings: str) -> dict[str, str]:
    """The environment of a Node script: this one's without DPS* and HUB* settings, trusting
    dpsd's CA, with ``settings``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DPS", "HUB"))}
    env["NODE_EXTRA_CA_CERTS"] = server.info["caCertificatePath"]
    return env | settings


def run_node_script(
    node: str,
    server: DpsdProcess,
    script: str,
    env: Mapping[str, str],
    timeout: float,
    *node_options: str,
) -> NodeRun:
    """Run ``script`` of tests/node to its end (bounded by ``timeout`` seconds); fails with
    its and dpsd's output when it does not exit with 0."""
    try:
        run = subprocess.run(
            [node, *node_options, script],
            cwd=NODE_DIR,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        pytest.fail(
            f"{script} did not finish within {timeout}s:\n{expired.stdout!r}\n"
            f"{expired.stderr!r}\n--- dpsd ---\n{server.output()}"
        )
    context = f"stdout:\n{run.stdout}\nstderr:\n{run.stderr}\n--- dpsd ---\n{server.output()}"
    assert run.returncode == 0, f"{script} exited with {run.returncode}\n{context}"
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return NodeRun(script, lines, context)


def run_devices(
    node: str,
    server: DpsdProcess,
    scenarios: Sequence[Scenario],
    provisioning_host: str,
    timeout: float,
    scenario_timeout_ms: int = SCENARIO_TIMEOUT_MS,
) -> dict[str, Result]:
    """Every scenario's JSON line from one run of devices.js (bounded by ``timeout`` seconds),
    by name; fails with the script's and dpsd's output when the run does not end well."""
    env = node_env(
        server,
        DPS_PROVISIONING_HOST=provisioning_host,
        DPS_ID_SCOPE=server.info["idScope"],
        DPS_DEVICE_SCENARIOS=json.dumps([scenario.to_json() for scenario in scenarios]),
        DPS_SCENARIO_TIMEOUT_MS=str(scenario_timeout_ms),
    )
    run = run_node_script(node, server, DEVICES_SCRIPT.name, env, timeout)
    results = run.by_scenario()
    by_name = {scenario.name: scenario for scenario in scenarios}
    assert sorted(results) == sorted(by_name), run.context
    for name, line in results.items():
        assert line["transport"] == by_name[name].transport, line
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


def assert_assigned(
    state: Mapping[str, Any], registration_id: str, device_id: str, hubs: tuple[str, ...]
) -> None:
    """A registration state the device was told on its first assignment."""
    assert state["registrationId"] == registration_id, state
    assert state["status"] == "assigned", state
    assert state["substatus"] == "initialAssignment", state
    assert state["assignedHub"] in hubs, state
    assert state["deviceId"] == device_id, state
    assert state["etag"], state
    assert state["createdDateTimeUtc"], state
    assert state["lastUpdatedDateTimeUtc"], state
    assert "errorCode" not in state, state


def assert_polled_once(line: Mapping[str, Any], retry_after: int, final: str = "assigned") -> None:
    """Over MQTT and AMQP: one register answered ``assigning`` with ``retry_after`` (the SDK's
    interval becomes that many seconds, its default being 2), then one poll that much later
    answered ``final``. There is no HTTP response, so no status code is recorded."""
    calls = line["calls"]
    assert [call["call"] for call in calls] == ["register", "poll"], calls
    register, poll = calls
    assert register["status"] == "assigning", register
    assert register["pollingInterval"] == retry_after * 1000, register
    assert register["error"] is None, register
    assert poll["startedMs"] - register["endedMs"] >= retry_after * 1000 - 10, calls
    assert poll["status"] == final, poll
    assert poll["error"] is None, poll
    assert register.get("statusCode") is None, register
    assert poll.get("statusCode") is None, poll


def assert_recorded(service: DeviceProvisioningClient, state: Mapping[str, Any]) -> None:
    """The service API shows the registration the device was told about."""
    recorded = service.device_registration_state.get(state["registrationId"])
    assert recorded["status"] == "assigned", recorded
    assert recorded["assignedHub"] == state["assignedHub"], recorded
    assert recorded["deviceId"] == state["deviceId"], recorded
    assert recorded["etag"] == state["etag"], recorded


def assert_disabled(error: Mapping[str, Any], registration_id: str) -> None:
    """The poll answered ``{status: "disabled"}`` (as over HTTPS); the SDK's polling state
    machine knows assigning, assigned, failed and registering only, and rejects any other
    status with SyntaxError('status is <status>'), the operation status attached as
    error.result."""
    assert error["name"] == "SyntaxError", error
    assert error["message"] == "status is disabled", error
    result = error["result"]
    assert result["status"] == "disabled", result
    assert result["operationId"], result
    state = result["registrationState"]
    assert state["registrationId"] == registration_id, state
    assert state["status"] == "disabled", state
    assert state["errorCode"] == 401008, state
    assert state["errorMessage"], state
    assert "assignedHub" not in state, state


def assert_recorded_disabled(service: DeviceProvisioningClient, registration_id: str) -> None:
    recorded = service.device_registration_state.get(registration_id)
    assert recorded["status"] == "disabled", recorded
    assert recorded["errorCode"] == 401008, recorded
    assert not recorded.get("assignedHub"), recorded
