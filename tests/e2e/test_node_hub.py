"""The official Node clients against a built-in hub, the way Microsoft's provisioning
end-to-end tests use them: devices register with the Node device SDK (HTTPS, MQTT, MQTT over
WebSockets), then azure-iothub's Registry reads each device and its twin from the hub they
were assigned to and deletes them; a scratch device then goes through the Registry's device,
twin and query calls.

The Node clients connect to port 443 only, so dpsd listens on 127.0.0.84:443 (and MQTT on
8883). The hub's name resolves to that address inside the Node process only, through
tests/node/resolve.js (the stand-in for a DNS entry). Skipped or failed like the other Node
tests when node, tests/node/node_modules or port 443 is missing.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dpsd.domain.device_auth import derive_device_key
from tests.certs import issue
from tests.e2e.hub_registry import serving_builtin_hubs
from tests.e2e.node_clients import node_env, random_key, run_node_script
from tests.e2e.process import (
    DpsdProcess,
    run_dpsd,
    sdk_client,
    skip_or_fail,
)
from tests.e2e.test_x509_devices import write_identity

pytestmark = pytest.mark.e2e

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
ADDRESS = "127.0.0.84"
HUB = "hub-n.dpsd.test"
INITIAL_TWIN = {"tags": {"suite": "node"}, "properties": {"desired": {"testProp": "42"}}}
NODE_TIMEOUT = 60.0
PACKAGES = ("azure-iothub", "azure-iot-provisioning-device", "azure-iot-provisioning-device-mqtt")


@pytest.fixture(scope="module")
def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        skip_or_fail("node is not on PATH")
    for package in PACKAGES:
        if not (NODE_DIR / "node_modules" / package).is_dir():
            skip_or_fail(f"tests/node/node_modules/{package} is missing: run scripts/install")
    return node


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    base = tmp_path_factory.mktemp("dpsd-node-hub")
    ports = [("https", 443), ("mqtt", 8883)]
    with serving_builtin_hubs(base, ADDRESS, ports, [HUB]) as started:
        yield started


def hub_node_env(server: DpsdProcess) -> dict[str, str]:
    """The Node scripts' environment; HUB resolves to ADDRESS in them (tests/node/resolve.js)."""
    return node_env(server, DPSD_TEST_HOSTS=json.dumps({HUB: ADDRESS}))


def run_node(node: str, script: str, env: dict[str, str], server: DpsdProcess) -> list[Any]:
    run = run_node_script(node, server, script, env, NODE_TIMEOUT, "--require", "./resolve.js")
    return run.lines


@pytest.fixture(scope="module")
def provisioned(
    node_binary: str, server: DpsdProcess, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """Devices registered by the Node device SDK, by device id: what the scenario expects."""
    client = sdk_client(server.info)
    hub_fields = {"allocationPolicy": "static", "iotHubs": [HUB], "initialTwin": INITIAL_TWIN}
    group_key = random_key()
    group_id = f"node-hub-group-{uuid.uuid4().hex[:6]}"
    client.enrollment_group.create_or_update(
        id=group_id,
        enrollment_group={
            "enrollmentGroupId": group_id,
            "attestation": {
                "type": "symmetricKey",
                "symmetricKey": {"primaryKey": group_key, "secondaryKey": group_key},
            },
            **hub_fields,
        },
    )
    folder = tmp_path_factory.mktemp("node-hub-x509")
    scenarios, expected = [], {}
    for transport in ("http", "mqtt", "mqttws"):
        individual, key = f"node-hub-{transport}-{uuid.uuid4().hex[:6]}", random_key()
        client.enrollment.create_or_update(
            id=individual,
            enrollment={
                "registrationId": individual,
                "attestation": {
                    "type": "symmetricKey",
                    "symmetricKey": {"primaryKey": key, "secondaryKey": key},
                },
                **hub_fields,
            },
        )
        scenarios.append({"name": individual, "registrationId": individual, "key": key})
        expected[individual] = {"transport": transport, "type": "sas", "key": key}
        member = f"node-hub-member-{transport}-{uuid.uuid4().hex[:6]}"
        derived = derive_device_key(group_key, member)
        scenarios.append({"name": member, "registrationId": member, "key": derived})
        expected[member] = {"transport": transport, "type": "sas", "key": derived}
        camera = f"node-hub-x509-{transport}-{uuid.uuid4().hex[:6]}"
        certificate = issue(camera)
        client.enrollment.create_or_update(
            id=camera,
            enrollment={
                "registrationId": camera,
                "attestation": {
                    "type": "x509",
                    "x509": {"clientCertificates": {"primary": {"certificate": certificate.pem}}},
                },
                **hub_fields,
            },
        )
        cert_file, key_file = write_identity(folder, camera, [certificate])
        scenarios.append(
            {"name": camera, "registrationId": camera, "certFile": cert_file, "keyFile": key_file}
        )
        expected[camera] = {"transport": transport, "type": "selfSigned"}
    for scenario in scenarios:
        scenario["transport"] = expected[scenario["name"]]["transport"]
    env = hub_node_env(server)
    env["DPS_PROVISIONING_HOST"] = ADDRESS
    env["DPS_ID_SCOPE"] = server.info["idScope"]
    env["DPS_DEVICE_SCENARIOS"] = json.dumps(scenarios)
    lines = run_node(node_binary, "devices.js", env, server)
    for line in lines[:-1]:
        assert line["ok"], json.dumps(line, indent=2)
        assert line["result"]["assignedHub"] == HUB, line
    return expected


@pytest.fixture(scope="module")
def hub_run(
    node_binary: str, server: DpsdProcess, provisioned: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    printed = run_dpsd("hub", "connection-string", HUB, "--data-dir", str(server.data_dir))
    assert printed.returncode == 0, printed.stderr
    env = hub_node_env(server)
    env["IOTHUB_CONNECTION_STRING"] = printed.stdout.strip()
    env["HUB_PROVISIONED_DEVICES"] = json.dumps(sorted(provisioned))
    env["HUB_SCRATCH_DEVICE"] = f"node-scratch-{uuid.uuid4().hex[:6]}"
    (result,) = run_node(node_binary, "hub.js", env, server)
    assert isinstance(result, dict)
    return result


def test_provisioned_devices_are_in_the_hub_with_their_initial_twin(
    hub_run: dict[str, Any], provisioned: dict[str, dict[str, Any]]
) -> None:
    for device_id, expected in provisioned.items():
        seen = hub_run["provisioned"][device_id]
        assert "error" not in seen, (device_id, seen)
        authentication = seen["device"]["authentication"]
        assert authentication["type"] == expected["type"], (device_id, seen)
        if expected["type"] == "sas":
            assert authentication["symmetricKey"]["primaryKey"] == expected["key"]
        else:
            assert len(authentication["x509Thumbprint"]["primaryThumbprint"]) == 64
        assert seen["twin"]["properties"]["desired"]["testProp"] == "42", seen
        assert seen["twin"]["tags"] == {"suite": "node"}, seen
    assert all(line["ok"] for line in hub_run["cleanup"]), hub_run["cleanup"]


def test_the_registry_calls_of_the_node_client(hub_run: dict[str, Any]) -> None:
    steps = {line["step"]: line for line in hub_run["crud"]}
    created = steps["create"]
    assert created["ok"], created
    assert created["result"]["authentication"]["type"] == "sas"
    assert created["result"]["authentication"]["symmetricKey"]["primaryKey"]
    assert not steps["createAgain"]["ok"]
    assert steps["createAgain"]["error"]["name"] == "DeviceAlreadyExistsError"
    assert steps["get"]["ok"], steps["get"]
    assert steps["update"]["result"]["status"] == "disabled"
    assert steps["getTwin"]["result"]["properties"]["desired"]["$version"] == 1
    updated = steps["updateTwin"]["result"]
    assert updated["tags"] == {"site": "scratch"}
    assert updated["properties"]["desired"]["speed"] == 3
    assert steps["updateTwinStaleEtag"]["error"]["statusCode"] == 412
    assert steps["queryTags"]["result"] == [created["result"]["deviceId"]]
    assert steps["queryPaged"]["result"] >= 2
    assert steps["count"]["result"][0]["total"] >= 1
    assert created["result"]["deviceId"] in steps["list"]["result"]
    assert steps["delete"]["ok"], steps["delete"]
    assert steps["getDeleted"]["error"]["name"] == "DeviceNotFoundError"
