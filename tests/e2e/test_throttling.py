"""Throttled devices back off and succeed: the official device SDKs against a dpsd that lets
one registration in at a time (``--max-registrations-in-flight 1``).

A first device, whose enrollment allocates through a custom webhook served here, holds the
only place: the webhook answers only once every SDK device has been refused (dpsd's log says
so, per device). Meanwhile each SDK device's register is answered 429 (HTTPS ``429`` with
``Retry-After``, MQTT ``res/429`` with ``retry-after``, AMQP rejected with
``com.microsoft:device-container-throttled``): the Node device SDK over HTTPS, MQTT and AMQP
(tests/node/devices.js records each request and the wait the SDK derived from it) and the
Python device SDK over MQTT. Once the webhook answers, every device registers on a later try,
after waiting what it was told, and the service API shows each one assigned, once.

Over MQTT and AMQP the SDKs wait and retry by themselves. The Node HTTP transport cannot: its
HTTP layer rejects every status from 300 up before the transport's own "429: retry" branch
runs, so the SDK rejects with ThrottlingError carrying the response; the device then honours
the Retry-After itself (devices.js ``retryThrottled``), as an application on that SDK must.

dpsd listens on 127.0.0.95 (443 for the Node HTTPS transport, 8883 for the Python SDK, 5671
for AMQP). Skipped, with the reason, when those ports cannot be bound or Node or the SDK
packages are missing; when ``CI`` is set, each of those fails instead.
"""

from __future__ import annotations

import itertools
import json
import signal
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.iot.device import ProvisioningDeviceClient
from azure.iot.deviceprovisioning import DeviceProvisioningClient

from tests.e2e.node_clients import (
    DEVICES_SCRIPT,
    NODE_DIR,
    HeldWebhook,
    Scenario,
    create_enrollment,
    create_symmetric_group,
    derive_device_key,
    held_webhook,
    new_id,
    node_env,
    require_node,
)
from tests.e2e.process import (
    DpsdProcess,
    bind_problem,
    run_dpsd,
    sdk_client,
    skip_or_fail,
    start_dpsd_listening,
)
from tests.e2e.test_node_device_sdk import DEVICE_API_VERSION, device_token

pytestmark = pytest.mark.e2e

ADDRESS = "127.0.0.95"
PORTS = {"https": 443, "mqtt": 8883, "amqp": 5671}
RETRY_AFTER = 1  # dpsd serve --retry-after: a throttled device is told 1 or 2 seconds
TOLD = {1, 2}
HUB = "throttle-e2e-hub.example.net"
NODE_TRANSPORTS = ("http", "mqtt", "amqp")
WAIT = 60.0  # bounds every wait below; none is expected to take long
POLL_INTERVAL = 0.05


# --- the webhook that holds the only place ------------------------------------------------------


@pytest.fixture(scope="module")
def webhook() -> Iterator[HeldWebhook]:
    with held_webhook(HUB, WAIT) as held:
        yield held


# --- the server and the devices -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    for port in PORTS.values():
        problem = bind_problem(ADDRESS, port)
        if problem is not None:
            skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-throttle")
    serve_args = ["--host", ADDRESS, "--hostname", ADDRESS, "--https-port", str(PORTS["https"])]
    serve_args += ["--mqtt-port", str(PORTS["mqtt"]), "--amqp-port", str(PORTS["amqp"])]
    serve_args += ["--retry-after", str(RETRY_AFTER), "--max-registrations-in-flight", "1"]
    serve_args += ["--webhook-timeout", "120", "--log-format", "json"]
    started = start_dpsd_listening(base / "data", base / "serve.log", serve_args=serve_args)
    added = run_dpsd("hub", "add", HUB, "--data-dir", str(started.data_dir))
    if added.returncode != 0:
        started.stop()
        pytest.fail(f"dpsd hub add {HUB}:\n{added.stdout}{added.stderr}")
    yield started
    started.stop_cleanly(signal.SIGTERM)


@pytest.fixture(scope="module")
def service(server: DpsdProcess) -> Iterator[DeviceProvisioningClient]:
    client = sdk_client(server.info)
    with client:
        yield client


@dataclass(frozen=True)
class Outcome:
    """What each device ended with: Node's JSON line per transport, the Python SDK's result."""

    holder: str
    node: dict[str, dict[str, Any]]
    python_id: str
    python: Any
    group_id: str


def throttled_ids(server: DpsdProcess) -> set[str]:
    lines = [json.loads(line) for line in server.output().splitlines() if line.startswith("{")]
    return {line["registration_id"] for line in lines if line.get("event") == "throttled"}


def wait_until_throttled(server: DpsdProcess, registration_ids: set[str]) -> None:
    """Until dpsd's log shows a throttled request of each device (bounded)."""
    deadline = time.monotonic() + WAIT
    while not registration_ids <= throttled_ids(server):
        missing = registration_ids - throttled_ids(server)
        assert time.monotonic() < deadline, f"never throttled: {missing}\n{server.output()}"
        time.sleep(POLL_INTERVAL)  # the log is a file: nothing to await


def hold_the_only_place(server: DpsdProcess, service: Any, webhook: HeldWebhook) -> str:
    """Register a device whose custom allocation waits for the webhook: its registration
    stays in flight. Its registration id."""
    holder = new_id("held")
    definition = {"webhookUrl": webhook.url, "apiVersion": "2021-10-01"}
    key = create_enrollment(
        service, holder, allocationPolicy="custom", customAllocationDefinition=definition
    )
    scope = server.info["idScope"]
    answer = httpx.put(
        f"https://{ADDRESS}/{scope}/registrations/{holder}/register"
        f"?api-version={DEVICE_API_VERSION}",
        json={"registrationId": holder},
        headers={"Authorization": device_token(scope, holder, key)},
        verify=ssl.create_default_context(cafile=server.info["caCertificatePath"]),
        timeout=WAIT,
    )
    assert answer.status_code == 202, answer.text
    assert webhook.asked.wait(WAIT), "dpsd never asked the webhook"
    return holder


def start_node(node: str, server: DpsdProcess, scenarios: list[Scenario]) -> subprocess.Popen[str]:
    env = node_env(
        server,
        DPS_PROVISIONING_HOST=ADDRESS,
        DPS_ID_SCOPE=server.info["idScope"],
        DPS_DEVICE_SCENARIOS=json.dumps([scenario.to_json() for scenario in scenarios]),
        DPS_SCENARIO_TIMEOUT_MS=str(int(WAIT * 1000)),
    )
    return subprocess.Popen(
        [node, DEVICES_SCRIPT.name],
        cwd=NODE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def python_register(server: DpsdProcess, registration_id: str, key: str) -> Any:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=ADDRESS,
        registration_id=registration_id,
        id_scope=server.info["idScope"],
        symmetric_key=key,
        server_verification_cert=Path(server.info["caCertificatePath"]).read_text(),
    )
    return client.register()


def node_lines(run: subprocess.Popen[str], server: DpsdProcess) -> dict[str, dict[str, Any]]:
    try:
        stdout, stderr = run.communicate(timeout=WAIT)
    except subprocess.TimeoutExpired:
        run.kill()
        stdout, stderr = run.communicate()
        pytest.fail(f"devices.js did not finish:\n{stdout}\n{stderr}\n{server.output()}")
    context = f"stdout:\n{stdout}\nstderr:\n{stderr}\n--- dpsd ---\n{server.output()}"
    assert run.returncode == 0, context
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert lines[-1] == {"done": True, "count": len(NODE_TRANSPORTS)}, context
    return {line["scenario"]: line for line in lines[:-1]}


@pytest.fixture(scope="module")
def outcome(
    server: DpsdProcess, service: DeviceProvisioningClient, webhook: HeldWebhook
) -> Outcome:
    node = require_node("azure-iot-provisioning-device-mqtt", "azure-iot-provisioning-device-amqp")
    group_id = new_id("throttled-fleet")
    group_key = create_symmetric_group(service, group_id)["primaryKey"]
    scenarios = []
    for transport in NODE_TRANSPORTS:
        member = new_id(f"node-{transport}")
        key = derive_device_key(group_key, member)
        scenarios.append(
            Scenario(
                transport,
                member,
                key,
                transport=transport,
                group_id=group_id,
                retry_throttled=transport == "http",
            )
        )
    python_id = new_id("python-mqtt")

    holder = hold_the_only_place(server, service, webhook)
    run = start_node(node, server, scenarios)
    with ThreadPoolExecutor(1) as pool:
        python: Future[Any] = pool.submit(
            python_register, server, python_id, derive_device_key(group_key, python_id)
        )
        try:
            wait_until_throttled(server, {python_id, *(s.registration_id for s in scenarios)})
        finally:
            webhook.release.set()  # the held registration settles; the others get in
        lines = node_lines(run, server)
        result = python.result(timeout=WAIT)
    return Outcome(holder, lines, python_id, result, group_id)


# --- the tests ----------------------------------------------------------------------------------


def assert_waited_as_told(calls: list[dict[str, Any]], told_ms: list[int | None]) -> None:
    """Each request came at least as long after the one before as the device was told."""
    for (before, after), wait in zip(itertools.pairwise(calls), told_ms, strict=False):
        assert wait is not None, calls
        assert after["startedMs"] - before["endedMs"] >= wait - 10, calls


def assert_registered_in_the_end(calls: list[dict[str, Any]]) -> None:
    """One register was accepted (``assigning``), then polled to ``assigned``."""
    accepted = [call for call in calls if call["call"] == "register" and call["error"] is None]
    accepted = [call for call in accepted if call["status"] != "registering"]
    assert [call["status"] for call in accepted] == ["assigning"], calls
    assert (calls[-1]["call"], calls[-1]["status"]) == ("poll", "assigned"), calls


@pytest.mark.parametrize("transport", ["mqtt", "amqp"])
def test_the_node_sdk_backs_off_and_registers(outcome: Outcome, transport: str) -> None:
    """The SDK took the refusal for ``registering`` at the interval dpsd told, waited that
    long before each next request, and registered on a later try."""
    line = outcome.node[transport]
    assert line["ok"], json.dumps(line, indent=2)
    assert (line["result"]["status"], line["result"]["assignedHub"]) == ("assigned", HUB), line
    calls = line["calls"]
    first = calls[0]
    assert (first["call"], first["status"], first["error"]) == ("register", "registering", None)
    assert first["pollingInterval"] in {seconds * 1000 for seconds in TOLD}, calls
    assert_waited_as_told(calls, [call["pollingInterval"] for call in calls])
    assert_registered_in_the_end(calls)


def test_over_https_the_node_sdk_hands_over_429_and_its_retry_after(outcome: Outcome) -> None:
    """The HTTP transport rejects with ThrottlingError (it cannot retry a 429 itself), the
    error carrying the 429, its Retry-After and the DPS body; the device registers again
    that much later and is assigned."""
    line = outcome.node["http"]
    assert line["ok"], json.dumps(line, indent=2)
    assert (line["result"]["status"], line["result"]["assignedHub"]) == ("assigned", HUB), line
    calls = line["calls"]
    first = calls[0]
    assert (first["call"], first["statusCode"], first["error"]) == (
        "register",
        429,
        "ThrottlingError",
    ), calls
    assert int(first["retryAfter"]) in TOLD, first
    told = [
        int(call["retryAfter"]) * 1000 if call["statusCode"] == 429 else call["pollingInterval"]
        for call in calls
    ]
    assert_waited_as_told(calls, told)
    assert_registered_in_the_end(calls)


def test_the_python_sdk_backs_off_and_registers(outcome: Outcome, server: DpsdProcess) -> None:
    assert outcome.python.status == "assigned"
    assert outcome.python.registration_state.assigned_hub == HUB
    assert outcome.python_id in throttled_ids(server)


def test_every_device_is_assigned_once_and_the_held_one_too(
    outcome: Outcome, service: DeviceProvisioningClient
) -> None:
    node_ids = [line["result"]["registrationId"] for line in outcome.node.values() if line["ok"]]
    members = sorted([outcome.python_id, *node_ids])
    assert len(members) == 1 + len(NODE_TRANSPORTS), outcome.node
    states = list(service.device_registration_state.query(outcome.group_id))
    assert sorted(state["registrationId"] for state in states) == members, states
    assert {state["status"] for state in states} == {"assigned"}, states
    held = service.device_registration_state.get(outcome.holder)
    assert (held["status"], held["assignedHub"]) == ("assigned", HUB), held
