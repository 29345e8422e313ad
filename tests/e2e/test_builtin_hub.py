"""Provisioned devices land in a hub that dpsd serves itself, checked with the official
Python hub client (azure-iot-hub's IoTHubRegistryManager, unchanged).

One dpsd on 127.0.0.83 serves HTTPS and MQTT over WebSockets on 443 and MQTT on 8883 (the
ports the Python device SDK insists on), and two built-in hubs linked with
``dpsd hub add --builtin``. The hubs' names (``*.dpsd.test``) resolve to that address for
this test process only: the resolver is the one thing faked here, as a user would put the
names in DNS or /etc/hosts. Devices attest with symmetric keys (individual, group) and X.509
(individual, group with an intermediate, group without a chain) over HTTPS, MQTT and MQTT
over WebSockets; each must then exist in its hub with the identity and initial twin the real
service gives it. Reprovisioning moves devices between the hubs by the enrollment's policy.
"""

from __future__ import annotations

import base64
import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from azure.iot.device import X509, ProvisioningDeviceClient
from azure.iot.hub import IoTHubRegistryManager
from azure.iot.hub.models import QuerySpecification, Twin, TwinProperties
from msrest.exceptions import HttpOperationError

from dpsd.domain.device_auth import derive_device_key
from tests.certs import Issued, issue
from tests.e2e.hub_registry import (
    assert_initial_twin,
    assert_sas_device,
    assert_x509_device,
    hub_names_resolving_to,
    hub_registries,
    serving_builtin_hubs,
)
from tests.e2e.process import (
    DpsdProcess,
    run_dpsd,
    sdk_client,
)
from tests.e2e.test_node_device_sdk import device_token
from tests.e2e.test_x509_devices import provision as provision_x509_over_https
from tests.e2e.test_x509_devices import write_identity

pytestmark = pytest.mark.e2e

ADDRESS = "127.0.0.83"
HUB_A = "hub-a.dpsd.test"
HUB_B = "hub-b.dpsd.test"
DEVICE_API = "?api-version=2019-03-31"
INITIAL_TWIN = {"tags": {"site": "north"}, "properties": {"desired": {"testProp": "42"}}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def random_key() -> str:
    return base64.b64encode(uuid.uuid4().bytes * 2).decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    base = tmp_path_factory.mktemp("dpsd-hub")
    ports = [("https", 443), ("mqtt", 8883)]
    with serving_builtin_hubs(base, ADDRESS, ports, [HUB_A, HUB_B]) as started:
        yield started


@pytest.fixture(scope="module", autouse=True)
def hub_names_resolve_to_dpsd() -> Iterator[None]:
    """``*.dpsd.test`` resolves to dpsd's address in this process."""
    with hub_names_resolving_to(ADDRESS):
        yield


@pytest.fixture(scope="module")
def registries(server: DpsdProcess) -> Iterator[dict[str, IoTHubRegistryManager]]:
    """The official hub client of each built-in hub."""
    with hub_registries(server, (HUB_A, HUB_B)) as managers:
        yield managers


def enroll(server: DpsdProcess, registration_id: str, **fields: Any) -> dict[str, Any]:
    enrollment = {
        "registrationId": registration_id,
        "allocationPolicy": "static",
        "iotHubs": [HUB_A],
        "initialTwin": INITIAL_TWIN,
        **fields,
    }
    created: dict[str, Any] = sdk_client(server.info).enrollment.create_or_update(
        id=registration_id, enrollment=enrollment
    )
    return created


def enroll_group(server: DpsdProcess, group_id: str, **fields: Any) -> None:
    group = {
        "enrollmentGroupId": group_id,
        "allocationPolicy": "static",
        "iotHubs": [HUB_A],
        "initialTwin": INITIAL_TWIN,
        **fields,
    }
    sdk_client(server.info).enrollment_group.create_or_update(id=group_id, enrollment_group=group)


def symmetric(key: str) -> dict[str, Any]:
    return {"type": "symmetricKey", "symmetricKey": {"primaryKey": key, "secondaryKey": key}}


def client_certificate(device: Issued) -> dict[str, Any]:
    return {
        "type": "x509",
        "x509": {"clientCertificates": {"primary": {"certificate": device.pem}}},
    }


def signing_certificate(signer: Issued) -> dict[str, Any]:
    return {
        "type": "x509",
        "x509": {"signingCertificates": {"primary": {"certificate": signer.pem}}},
    }


def ca_text(server: DpsdProcess) -> str:
    return Path(server.info["caCertificatePath"]).read_text()


def mqtt_register_key(
    server: DpsdProcess, registration_id: str, key: str, *, websockets: bool = False
) -> Any:
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=ADDRESS,
        registration_id=registration_id,
        id_scope=server.info["idScope"],
        symmetric_key=key,
        server_verification_cert=ca_text(server),
        websockets=websockets,
    )
    return client.register()


def mqtt_register_x509(
    server: DpsdProcess, registration_id: str, identity: tuple[str, str], *, websockets: bool
) -> Any:
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=ADDRESS,
        registration_id=registration_id,
        id_scope=server.info["idScope"],
        x509=X509(cert_file=identity[0], key_file=identity[1]),
        server_verification_cert=ca_text(server),
        websockets=websockets,
    )
    return client.register()


def https_register_key(server: DpsdProcess, registration_id: str, key: str) -> dict[str, Any]:
    """Register and poll over HTTPS as the device SDKs do, until the operation ends."""
    scope = server.info["idScope"]
    headers = {"Authorization": device_token(scope, registration_id, key)}
    base = f"https://{ADDRESS}/{scope}/registrations/{registration_id}"
    trust = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    with httpx.Client(verify=trust, timeout=10) as client:
        started = client.put(
            f"{base}/register{DEVICE_API}",
            json={"registrationId": registration_id},
            headers=headers,
        )
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        for _ in range(20):
            polled = client.get(f"{base}/operations/{operation}{DEVICE_API}", headers=headers)
            body: dict[str, Any] = polled.json()
            if body["status"] != "assigning":
                return body
        raise AssertionError(f"{registration_id} was still assigning after 20 polls")


# --- symmetric keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "register",
    [
        pytest.param(lambda s, r, k: https_register_key(s, r, k)["registrationState"], id="https"),
        pytest.param(lambda s, r, k: mqtt_register_key(s, r, k).registration_state, id="mqtt"),
        pytest.param(
            lambda s, r, k: mqtt_register_key(s, r, k, websockets=True).registration_state,
            id="mqtt-ws",
        ),
    ],
)
def test_symmetric_key_devices_land_with_their_keys_and_initial_twin(
    server: DpsdProcess,
    registries: dict[str, IoTHubRegistryManager],
    register: Callable[[DpsdProcess, str, str], Any],
) -> None:
    individual, key = new_id("sym-ind"), random_key()
    enroll(server, individual, attestation=symmetric(key), deviceId=f"{individual}-dev")
    state = register(server, individual, key)
    hub = state["assignedHub"] if isinstance(state, dict) else state.assigned_hub
    assert hub == HUB_A
    assert_sas_device(registries[HUB_A], f"{individual}-dev", key)
    assert_initial_twin(registries[HUB_A], f"{individual}-dev", INITIAL_TWIN)

    group, group_key = new_id("sym-grp"), random_key()
    enroll_group(server, group, attestation=symmetric(group_key))
    member = new_id("sym-member")
    register(server, member, derive_device_key(group_key, member))
    assert_sas_device(registries[HUB_A], member, derive_device_key(group_key, member))
    assert_initial_twin(registries[HUB_A], member, INITIAL_TWIN)


# --- X.509 ------------------------------------------------------------------------------------


def x509_register(
    server: DpsdProcess, transport: str, registration_id: str, identity: tuple[str, str]
) -> str:
    """The hub the device was assigned to."""
    if transport == "https":
        polled = provision_x509_over_https(server.info, identity, registration_id)
        assert polled.status_code == 200, polled.text
        body = polled.json()
        if body["status"] == "assigning":
            raise AssertionError("the X.509 device was still assigning at its first poll")
        hub: str = body["registrationState"]["assignedHub"]
        return hub
    result = mqtt_register_x509(
        server, registration_id, identity, websockets=transport == "mqtt-ws"
    )
    assigned: str = result.registration_state.assigned_hub
    return assigned


@pytest.mark.parametrize("transport", ["https", "mqtt", "mqtt-ws"])
def test_x509_devices_land_self_signed_by_their_certificate(
    server: DpsdProcess,
    registries: dict[str, IoTHubRegistryManager],
    tmp_path: Path,
    transport: str,
) -> None:
    registry = registries[HUB_A]
    individual = new_id(f"x509-ind-{transport}")
    device = issue(individual)
    enroll(server, individual, attestation=client_certificate(device))
    assert x509_register(server, transport, individual, write_identity(tmp_path, "ind", [device]))
    assert_x509_device(registry, individual, device)
    assert_initial_twin(registry, individual, INITIAL_TWIN)

    root = issue(new_id("root"), ca=True)
    intermediate = issue(new_id("intermediate"), root, ca=True)
    enroll_group(server, new_id("x509-chain"), attestation=signing_certificate(root))
    chained = new_id(f"x509-chained-{transport}")
    leaf = issue(chained, intermediate)
    identity = write_identity(tmp_path, "chained", [leaf, intermediate])
    assert x509_register(server, transport, chained, identity) == HUB_A
    assert_x509_device(registry, chained, leaf)
    assert_initial_twin(registry, chained, INITIAL_TWIN)

    signer = issue(new_id("signer"), ca=True)
    enroll_group(server, new_id("x509-direct"), attestation=signing_certificate(signer))
    direct = new_id(f"x509-direct-{transport}")
    leaf = issue(direct, signer)
    assert x509_register(server, transport, direct, write_identity(tmp_path, "direct", [leaf]))
    assert_x509_device(registry, direct, leaf)


# --- reprovisioning ---------------------------------------------------------------------------


def move_to(server: DpsdProcess, registration_id: str, hub: str, *, migrate: bool) -> None:
    client = sdk_client(server.info)
    current = client.enrollment.get(id=registration_id)
    moved = {
        **current,
        "iotHubs": [hub],
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": migrate},
    }
    client.enrollment.create_or_update(
        id=registration_id, enrollment=moved, if_match=current["etag"]
    )


def test_reprovisioning_migrates_or_resets_the_device(
    server: DpsdProcess, registries: dict[str, IoTHubRegistryManager]
) -> None:
    hub_a, hub_b = registries[HUB_A], registries[HUB_B]
    device, key = new_id("mover"), random_key()
    enroll(server, device, attestation=symmetric(key))
    assert https_register_key(server, device, key)["registrationState"]["assignedHub"] == HUB_A
    changed = Twin(tags={"site": "moved"}, properties=TwinProperties(desired={"rate": 7}))
    hub_a.update_twin(device, changed, hub_a.get_twin(device).etag)

    again = https_register_key(server, device, key)["registrationState"]
    assert (again["assignedHub"], again["substatus"]) == (
        HUB_A,
        "reprovisionedToInitialAssignment",
    )
    assert hub_a.get_twin(device).properties.desired["rate"] == 7  # kept in place

    move_to(server, device, HUB_B, migrate=True)
    migrated = https_register_key(server, device, key)["registrationState"]
    assert (migrated["assignedHub"], migrated["substatus"]) == (HUB_B, "deviceDataMigrated")
    twin = hub_b.get_twin(device)
    assert twin.tags == {"site": "moved"}
    assert twin.properties.desired["rate"] == 7
    assert_sas_device(hub_b, device, key)
    assert not [d for d in hub_a.get_devices() if d.device_id == device]

    hub_b.update_twin(device, changed, "*")
    move_to(server, device, HUB_A, migrate=False)
    reset = https_register_key(server, device, key)["registrationState"]
    assert reset["assignedHub"] == HUB_A
    assert_initial_twin(hub_a, device, INITIAL_TWIN)
    assert "rate" not in hub_a.get_twin(device).properties.desired
    assert not [d for d in hub_b.get_devices() if d.device_id == device]


def test_an_unreachable_hub_fails_the_registration_and_loses_nothing(
    server: DpsdProcess, registries: dict[str, IoTHubRegistryManager]
) -> None:
    """A hub linked by connection string that dpsd cannot reach (its name resolves nowhere
    for dpsd): the device is told why, its previous assignment stands, and once the
    enrollment points at a working hub again it provisions there."""
    unreachable = "gone.invalid"
    data_dir = str(server.data_dir)
    hub_key = random_key()
    connection = f"HostName={unreachable};SharedAccessKeyName=iothubowner;SharedAccessKey={hub_key}"
    linked = run_dpsd(
        "hub", "add", unreachable, "--connection-string", connection, "--data-dir", data_dir
    )
    assert linked.returncode == 0, linked.stderr
    device, key = new_id("stranded"), random_key()
    enroll(server, device, attestation=symmetric(key))
    assert https_register_key(server, device, key)["status"] == "assigned"
    move_to(server, device, unreachable, migrate=True)

    failed = https_register_key(server, device, key)
    assert failed["status"] == "failed"
    assert failed["registrationState"]["errorCode"] == 500000
    assert unreachable in failed["registrationState"]["errorMessage"]
    assert hub_key not in failed["registrationState"]["errorMessage"]
    recorded = sdk_client(server.info).device_registration_state.get(id=device)
    assert (recorded["status"], recorded["assignedHub"]) == ("assigned", HUB_A)
    assert_sas_device(registries[HUB_A], device, key)

    move_to(server, device, HUB_B, migrate=True)
    assert https_register_key(server, device, key)["registrationState"]["assignedHub"] == HUB_B
    assert_sas_device(registries[HUB_B], device, key)


def test_the_python_hub_client_manages_devices_twins_and_queries(
    registries: dict[str, IoTHubRegistryManager],
) -> None:
    """The registry calls of IoTHubRegistryManager itself, on a hub no device provisioned."""
    registry = registries[HUB_B]
    device_id, key = new_id("py-client"), random_key()
    created = registry.create_device_with_sas(device_id, key, key, "enabled")
    assert (created.device_id, created.authentication.symmetric_key.primary_key) == (
        device_id,
        key,
    )
    with pytest.raises(HttpOperationError) as refused:
        registry.create_device_with_sas(device_id, key, key, "enabled")
    assert refused.value.response.status_code == 409

    updated = registry.update_device_with_sas(device_id, created.etag, key, key, "disabled")
    assert updated.status == "disabled"
    assert registry.get_device(device_id).etag == updated.etag

    twin = registry.get_twin(device_id)
    replaced = registry.replace_twin(
        device_id,
        Twin(tags={"rack": "r1"}, properties=TwinProperties(desired={"fan": "auto"})),
        twin.etag,
    )
    assert (replaced.tags, replaced.properties.desired["fan"]) == ({"rack": "r1"}, "auto")
    patched = registry.update_twin(
        device_id, Twin(properties=TwinProperties(desired={"fan": None, "led": 1})), "*"
    )
    assert "fan" not in patched.properties.desired
    assert patched.properties.desired["led"] == 1

    found = registry.query_iot_hub(
        QuerySpecification(query="SELECT * FROM devices WHERE tags.rack = 'r1'")
    )
    assert found.type == "twin"
    assert [item.device_id for item in found.items] == [device_id]
    counted = registry.query_iot_hub(
        QuerySpecification(query="SELECT COUNT() AS total FROM devices WHERE status = 'disabled'")
    )
    # the client reads every row as a Twin: a COUNT row reaches it as an empty one
    assert (counted.type, len(counted.items)) == ("raw", 1)
    other = registry.create_device_with_sas(new_id("py-other"), key, key, "enabled").device_id
    everything = QuerySpecification(query="SELECT * FROM devices")
    first = registry.query_iot_hub(everything, None, 1)
    assert first.continuation_token
    rest = registry.query_iot_hub(everything, first.continuation_token, 1)
    assert rest.items[0].device_id != first.items[0].device_id

    registry.delete_device(other)
    registry.delete_device(device_id)
    with pytest.raises(HttpOperationError) as missing:
        registry.get_device(device_id)
    assert missing.value.response.status_code == 404
