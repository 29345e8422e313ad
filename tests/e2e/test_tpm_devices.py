"""TPM devices with a real (software) TPM provision against a real ``dpsd serve`` and land in
its built-in hub.

swtpm plays each device's TPM 2.0; tests/tpm/device_tpm.py drives it through tpm2-pytss as
the Azure device SDKs drive theirs (EK and SRK from the SDKs' templates, PolicySecret,
ActivateCredential, Import, Load, HMAC). The device's HTTPS requests are made here, as the
C SDK's HTTP transport makes them: the first PUT without credentials, then the same PUT
signed by the TPM with the key the 401 carried, then polls. The key of the device's hub
identity, delivered in the final answer, must then sign in the TPM what the hub verifies
(checked against the key IoTHubRegistryManager reads from the hub).

One dpsd on 127.0.0.90 serves HTTPS on 443 (the hub client insists on it), with a built-in
hub whose name resolves there for this process only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.iot.hub import IoTHubRegistryManager

from tests.e2e.hub_registry import hub_names_resolving_to, hub_registries
from tests.e2e.process import (
    DpsdProcess,
    bind_problem,
    run_dpsd,
    sdk_client,
    skip_or_fail,
    start_dpsd_listening,
)
from tests.tpm.swtpm import DeviceTpm, SwTpm

pytestmark = pytest.mark.e2e

ADDRESS = "127.0.0.90"
HUB = "tpm-hub.dpsd.test"
DEVICE_API = "?api-version=2021-06-01"
INITIAL_TWIN = {"tags": {"kind": "gateway"}, "properties": {"desired": {"interval": 30}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    problem = bind_problem(ADDRESS, 443)
    if problem:
        skip_or_fail(problem)
    base = tmp_path_factory.mktemp("dpsd-tpm")
    listen = [
        *("--host", ADDRESS, "--hostname", ADDRESS),
        *("--https-port", "443", "--mqtt-port", "-1", "--amqp-port", "-1"),
        *("--retry-after", "1"),
    ]
    started = start_dpsd_listening(base / "data", base / "serve.log", serve_args=listen)
    added = run_dpsd("hub", "add", HUB, "--builtin", "--data-dir", str(base / "data"))
    assert added.returncode == 0, added.stderr
    yield started
    started.stop_cleanly()


@pytest.fixture(scope="module", autouse=True)
def hub_name_resolves_to_dpsd() -> Iterator[None]:
    with hub_names_resolving_to(ADDRESS):
        yield


@pytest.fixture(scope="module")
def registry(server: DpsdProcess) -> Iterator[IoTHubRegistryManager]:
    with hub_registries(server, (HUB,)) as managers:
        yield managers[HUB]


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SwTpm]:
    tpm = SwTpm(ADDRESS, tmp_path_factory.mktemp("swtpm"))
    yield tpm
    tpm.stop()


@pytest.fixture
def device(swtpm: SwTpm) -> Iterator[DeviceTpm]:
    tpm = DeviceTpm(swtpm)
    yield tpm
    tpm.close()


@pytest.fixture(scope="module")
def http(server: DpsdProcess) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=f"https://{ADDRESS}",
        verify=ssl.create_default_context(cafile=server.info["caCertificatePath"]),
        timeout=30,
    ) as client:
        yield client


def enroll(server: DpsdProcess, registration_id: str, endorsement_key: str) -> None:
    enrollment = {
        "registrationId": registration_id,
        "attestation": {"type": "tpm", "tpm": {"endorsementKey": endorsement_key}},
        "allocationPolicy": "static",
        "iotHubs": [HUB],
        "initialTwin": INITIAL_TWIN,
    }
    sdk_client(server.info).enrollment.create_or_update(id=registration_id, enrollment=enrollment)


def tpm_token(device: DeviceTpm, resource: str, expiry: int) -> str:
    """A SAS token signed inside the TPM: ``sr`` encoded as the C SDK encodes it."""
    encoded = quote(resource, safe="").replace("%2F", "%2f")
    signature = base64.b64encode(device.sign(f"{encoded}\n{expiry}")).decode()
    return (
        f"SharedAccessSignature sr={encoded}&sig={quote(signature, safe='')}&se={expiry}"
        "&skn=registration"
    )


def register(
    http: httpx.Client, id_scope: str, registration_id: str, keys: tuple[str, str], **headers: str
) -> httpx.Response:
    body = {
        "registrationId": registration_id,
        "tpm": {"endorsementKey": keys[0], "storageRootKey": keys[1]},
    }
    return http.put(
        f"/{id_scope}/registrations/{registration_id}/register{DEVICE_API}",
        json=body,
        headers=headers,
    )


def provision(
    http: httpx.Client, id_scope: str, registration_id: str, device: DeviceTpm, keys: Any
) -> dict[str, Any]:
    """The C SDK's HTTP flow, the TPM doing the key work; the final answer."""
    challenge = register(http, id_scope, registration_id, keys)
    assert challenge.status_code == 401, challenge.text
    assert challenge.json()["keyName"] == "registration"
    device.activate(challenge.json()["authenticationKey"])
    token = tpm_token(
        device, f"{id_scope}/registrations/{registration_id}", int(time.time()) + 2400
    )
    started = register(http, id_scope, registration_id, keys, Authorization=token)
    assert started.status_code == 202, started.text
    operation = started.json()["operationId"]
    path = f"/{id_scope}/registrations/{registration_id}/operations/{operation}{DEVICE_API}"
    for _ in range(30):
        polled = http.get(path, headers={"Authorization": token})
        if polled.status_code == 200:
            outcome: dict[str, Any] = polled.json()
            return outcome
        assert polled.status_code == 202, polled.text
        time.sleep(float(polled.headers.get("retry-after", "1")))  # the device's poll interval
    pytest.fail("the registration was still assigning after 30 polls")


def test_a_device_with_a_tpm_provisions_and_signs_with_its_hub_key(
    server: DpsdProcess,
    http: httpx.Client,
    device: DeviceTpm,
    registry: IoTHubRegistryManager,
) -> None:
    id_scope = server.info["idScope"]
    keys = device.keys()
    ek = base64.b64decode(keys[0])
    registration_id = base64.b32encode(hashlib.sha256(ek).digest()).decode().rstrip("=").lower()
    enroll(server, registration_id, keys[0])

    outcome = provision(http, id_scope, registration_id, device, keys)
    state = outcome["registrationState"]
    assert (outcome["status"], state["assignedHub"], state["deviceId"]) == (
        "assigned",
        HUB,
        registration_id,
    )
    device.activate(state["tpm"]["authenticationKey"])
    hub_device = registry.get_device(registration_id)
    assert hub_device.authentication.type == "sas"
    hub_key = base64.b64decode(hub_device.authentication.symmetric_key.primary_key)
    # What the device signs for its hub, the hub verifies with the key it holds.
    resource = f"{HUB}%2fdevices%2f{registration_id}\n{int(time.time()) + 3600}"
    assert device.sign(resource) == hmac.new(hub_key, resource.encode(), hashlib.sha256).digest()
    assert registry.get_twin(registration_id).tags == INITIAL_TWIN["tags"]

    # Registering again: a new challenge, and the same hub key in the new final blob.
    again = provision(http, id_scope, registration_id, device, keys)
    assert again["registrationState"]["substatus"] == "reprovisionedToInitialAssignment"
    device.activate(again["registrationState"]["tpm"]["authenticationKey"])
    assert device.sign("x") == hmac.new(hub_key, b"x", hashlib.sha256).digest()


def test_a_tpm_that_is_not_enrolled_is_refused_without_a_key(
    server: DpsdProcess, http: httpx.Client, device: DeviceTpm
) -> None:
    id_scope = server.info["idScope"]
    keys = device.keys()
    unknown = register(http, id_scope, f"tpm-{uuid.uuid4().hex[:8]}", keys)
    assert unknown.status_code == 404, unknown.text
    assert unknown.json()["errorCode"] == 404201

    other_ek = base64.b64encode(base64.b64decode(keys[1])).decode()  # the SRK is no EK
    registration_id = f"tpm-{uuid.uuid4().hex[:8]}"
    enroll(server, registration_id, other_ek)
    refused = register(http, id_scope, registration_id, keys)
    assert refused.status_code == 401, refused.text
    assert refused.json()["errorCode"] == 401002
    assert "authenticationKey" not in refused.json()


def test_a_token_the_tpm_signed_for_an_earlier_challenge_is_refused(
    server: DpsdProcess, http: httpx.Client, device: DeviceTpm
) -> None:
    id_scope = server.info["idScope"]
    keys = device.keys()
    registration_id = f"tpm-{uuid.uuid4().hex[:8]}"
    enroll(server, registration_id, keys[0])
    resource = f"{id_scope}/registrations/{registration_id}"
    first = register(http, id_scope, registration_id, keys)
    device.activate(first.json()["authenticationKey"])
    stale = tpm_token(device, resource, int(time.time()) + 600)
    second = register(http, id_scope, registration_id, keys)
    assert second.status_code == 401
    refused = register(http, id_scope, registration_id, keys, Authorization=stale)
    assert refused.status_code == 401, refused.text
    assert refused.json()["errorCode"] == 401002
    device.activate(second.json()["authenticationKey"])
    fresh = tpm_token(device, resource, int(time.time()) + 600)
    assert register(http, id_scope, registration_id, keys, Authorization=fresh).status_code == 202
