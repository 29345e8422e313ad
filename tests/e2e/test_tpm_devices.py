"""TPM devices with a real (software) TPM provision against a real ``dpsd serve`` and land in
its built-in hub.

swtpm plays each device's TPM 2.0; tests/tpm/device_tpm.py drives it through tpm2-pytss as
the Azure device SDKs drive theirs (EK and SRK from the SDKs' templates, PolicySecret,
ActivateCredential, Import, Load, HMAC). The device's HTTPS requests are made here, as the
C SDK's HTTP transport makes them: the first PUT without credentials, then the same PUT
signed by the TPM with the key the 401 carried, then polls. The key of the device's hub
identity, delivered in the final answer, must then sign in the TPM what the hub verifies
(checked against the key IoTHubRegistryManager reads from the hub).

The official Node device SDK (azure-iot-provisioning-device with azure-iot-security-tpm on
tss.js) provisions TPM devices too, over HTTPS and AMQP (SASL ``TPM``): tss.js speaks the
Microsoft simulator's protocol, which tests/node/tpm_bridge.js relays to a swtpm of each
device's own. The EK each SDK presents is the one tpm2-pytss creates from the same template,
so the enrollments are made from it first.

One dpsd on 127.0.0.90 serves HTTPS on 443 (the hub client and the Node HTTP transport insist
on it) and AMQP on 5671, with a built-in hub whose name resolves there for this process only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from azure.iot.hub import IoTHubRegistryManager

from dpsd.amqp.codec import (
    SASL_HEADER,
    SaslChallenge,
    SaslCode,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    SaslResponse,
    encode_frame,
    read_frame,
)
from tests.e2e.hub_registry import hub_names_resolving_to, hub_registries, serving_builtin_hubs
from tests.e2e.node_clients import Scenario, failed, registered, require_node, run_devices
from tests.e2e.process import (
    DpsdProcess,
    sdk_client,
)
from tests.tpm.soft_tpm import SoftTpm
from tests.tpm.swtpm import DeviceTpm, SwTpm

pytestmark = pytest.mark.e2e

ADDRESS = "127.0.0.90"
HUB = "tpm-hub.dpsd.test"
DEVICE_API = "?api-version=2021-06-01"
INITIAL_TWIN = {"tags": {"kind": "gateway"}, "properties": {"desired": {"interval": 30}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DpsdProcess]:
    ports = [("https", 443), ("mqtt", -1), ("amqp", 5671)]
    base = tmp_path_factory.mktemp("dpsd-tpm")
    with serving_builtin_hubs(base, ADDRESS, ports, [HUB]) as started:
        yield started


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


def registration_id_of(endorsement_key: str) -> str:
    """The id the C and Node SDKs derive from the EK."""
    digest = hashlib.sha256(base64.b64decode(endorsement_key)).digest()
    return base64.b32encode(digest).decode().rstrip("=").lower()


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
    registration_id = registration_id_of(keys[0])
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


NODE_PACKAGES = ("azure-iot-security-tpm", "tss.js", "azure-iot-provisioning-device-amqp")
BRIDGE_ADDRESS = "127.0.0.91"


def test_the_node_sdk_provisions_tpm_devices_over_https_and_amqp(
    server: DpsdProcess,
    registry: IoTHubRegistryManager,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Each SDK derives its id from the EK (but the AMQP one, given its id), is assigned,
    and its TPM signs with the hub key the hub holds."""
    node = require_node(*NODE_PACKAGES)
    names = ("http", "amqp", "http-other-ek")
    tpms = {name: SwTpm(ADDRESS, tmp_path_factory.mktemp(f"swtpm-{name}")) for name in names}
    try:
        endorsement_keys = {}
        for name, tpm in tpms.items():
            device = DeviceTpm(tpm)
            endorsement_keys[name] = device.keys()[0]
            device.close()
        ids = {name: registration_id_of(key) for name, key in endorsement_keys.items()}
        ids["amqp"] = f"node-tpm-{uuid.uuid4().hex[:8]}"
        for name in ("http", "amqp"):
            enroll(server, ids[name], endorsement_keys[name])
        enroll(server, ids["http-other-ek"], SoftTpm.make(0).ek_b64)
        scenarios = [
            Scenario(
                name,
                ids[name],
                transport=name.split("-")[0],
                tpm={"host": ADDRESS, "port": tpms[name].port, "bridgeHost": BRIDGE_ADDRESS},
                sdk_derives_id=name != "amqp",
            )
            for name in names
        ]
        results = run_devices(node, server, scenarios, ADDRESS, 120, scenario_timeout_ms=30_000)
    finally:
        for tpm in tpms.values():
            tpm.stop()

    for name in ("http", "amqp"):
        outcome = registered(results, name)  # for TPM, the whole operation status
        state = outcome["registrationState"]
        assert (state["assignedHub"], state["deviceId"]) == (HUB, ids[name]), state
        hub_key = registry.get_device(ids[name]).authentication.symmetric_key.primary_key
        expected = hmac.new(base64.b64decode(hub_key), b"dpsd-probe", hashlib.sha256).digest()
        assert base64.b64decode(outcome["signedProbe"]) == expected, name
    # An EK that is not the enrollment's: 401 without a blob, which the SDK reports so.
    assert failed(results, "http-other-ek")["name"] == "FormatError"


def sasl_exchange(server: DpsdProcess, frames: list[bytes]) -> list[object]:
    """Speak SASL to dpsd's AMQP port over TLS: the header, then ``frames`` one by one, each
    once the last answer came; every frame dpsd sent, decoded."""
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    received: list[object] = []
    with (
        socket.create_connection((ADDRESS, 5671), timeout=30) as raw,
        context.wrap_socket(raw, server_hostname=ADDRESS) as tls,
    ):
        tls.sendall(SASL_HEADER)
        buffer = b""
        for frame in [b"", *frames]:
            tls.sendall(frame)
            expected = len(received) + 1
            while len(received) < expected:
                chunk = tls.recv(4096)
                assert chunk, f"dpsd closed the connection after {received}"
                buffer += chunk
                if buffer.startswith(SASL_HEADER):
                    buffer = buffer[len(SASL_HEADER) :]
                while len(buffer) >= 8 and len(buffer) >= int.from_bytes(buffer[:4], "big"):
                    decoded, used = read_frame(buffer, 4096)
                    buffer = buffer[used:]
                    received.append(decoded)
            if isinstance(received[-1], SaslOutcome):
                break
    return received


def test_an_unknown_tpm_over_amqp_gets_the_dps_error_in_the_sasl_outcome(
    server: DpsdProcess, device: DeviceTpm
) -> None:
    """The SDKs wait for the blob after sending the SRK, so a refusal cannot wait for OPEN
    (Node's SDK does not report it at all: it never hears of the failed connection)."""
    keys = device.keys()
    ek, srk = base64.b64decode(keys[0]), base64.b64decode(keys[1])
    init = b"\x00" + server.info["idScope"].encode() + b"\x00nobody-tpm\x00" + ek
    frames = sasl_exchange(
        server,
        [encode_frame(SaslInit("TPM", init)), encode_frame(SaslResponse(b"\x00" + srk))],
    )
    assert frames[0] == SaslMechanisms(("PLAIN", "TPM"))
    assert frames[1] == SaslChallenge(b"\x00")
    outcome = frames[2]
    assert isinstance(outcome, SaslOutcome)
    assert outcome.code == SaslCode.AUTH
    assert outcome.additional_data is not None
    assert json.loads(outcome.additional_data)["errorCode"] == 404201
