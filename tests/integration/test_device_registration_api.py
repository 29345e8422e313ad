"""Device registration over HTTP, in-process: attestation, allocation, registration state."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from dpsd.domain.device_auth import derive_device_key
from tests.conftest import API, ServiceApi, sas_token
from tests.integration.test_enrollments_api import assert_dps_error

DEVICE_API = "?api-version=2019-03-31"
KEY = base64.b64encode(b"d" * 32).decode()
GROUP_KEY = base64.b64encode(b"g" * 64).decode()


def device_token(scope: str, registration_id: str, key: str, **kwargs: Any) -> str:
    return sas_token(f"{scope}/registrations/{registration_id}", "registration", key, **kwargs)


async def register(
    service_api: ServiceApi,
    registration_id: str,
    key: str,
    *,
    scope: str | None = None,
    body: Any = None,
) -> httpx.Response:
    scope = scope or service_api.runtime.id_scope
    headers = {"Authorization": device_token(service_api.runtime.id_scope, registration_id, key)}
    return await service_api.client.put(
        f"/{scope}/registrations/{registration_id}/register{DEVICE_API}",
        json=body if body is not None else {"registrationId": registration_id},
        headers=headers,
    )


async def poll(
    service_api: ServiceApi, registration_id: str, key: str, operation_id: str
) -> httpx.Response:
    scope = service_api.runtime.id_scope
    headers = {"Authorization": device_token(scope, registration_id, key)}
    return await service_api.client.get(
        f"/{scope}/registrations/{registration_id}/operations/{operation_id}{DEVICE_API}",
        headers=headers,
    )


async def provision(service_api: ServiceApi, registration_id: str, key: str) -> dict[str, Any]:
    started = await register(service_api, registration_id, key)
    assert started.status_code == 202, started.text
    assert started.json()["status"] == "assigning"
    assert started.headers["retry-after"] == "3"
    result = await poll(service_api, registration_id, key, started.json()["operationId"])
    assert result.status_code == 200, result.text
    outcome: dict[str, Any] = result.json()
    assert outcome["operationId"] == started.json()["operationId"]
    return outcome


async def enroll(service_api: ServiceApi, registration_id: str, **extra: Any) -> None:
    body = {
        "registrationId": registration_id,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
        },
        **extra,
    }
    response = await service_api.put(f"/enrollments/{registration_id}", body)
    assert response.status_code == 200, response.text


async def test_an_individual_enrollment_provisions_its_device(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll(service_api, "dev-1", deviceId="thermostat-1", initialTwin={"tags": {"floor": 3}})
    outcome = await provision(service_api, "dev-1", KEY)
    state = outcome["registrationState"]
    assert outcome["status"] == "assigned"
    assert state["assignedHub"] == "hub-a.example"
    assert state["deviceId"] == "thermostat-1"
    assert state["substatus"] == "initialAssignment"
    assert state["status"] == "assigned"
    recorded = (await service_api.get("/registrations/dev-1")).json()
    assert recorded["assignedHub"] == "hub-a.example"
    assert recorded["etag"] == state["etag"]
    assert (await service_api.get("/enrollments/dev-1")).json()["registrationState"][
        "status"
    ] == "assigned"


async def enroll_group(service_api: ServiceApi, group_id: str, key: str = GROUP_KEY) -> None:
    """A symmetric-key enrollment group whose devices sign with keys derived from ``key``."""
    group = {
        "enrollmentGroupId": group_id,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": key, "secondaryKey": key},
        },
    }
    response = await service_api.put(f"/enrollmentGroups/{group_id}", group)
    assert response.status_code == 200, response.text


async def test_a_group_provisions_devices_with_derived_keys(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll_group(service_api, "fleet")
    outcome = await provision(service_api, "sensor-7", derive_device_key(GROUP_KEY, "sensor-7"))
    assert outcome["registrationState"]["symmetricKey"] == {"enrollmentGroupId": "fleet"}
    assert outcome["registrationState"]["deviceId"] == "sensor-7"
    listed = await service_api.post("/registrations/fleet/query")
    assert [item["registrationId"] for item in listed.json()] == ["sensor-7"]
    refused = await register(service_api, "sensor-8", GROUP_KEY)
    assert_dps_error(refused, 401, 401002)


async def test_a_group_device_may_sign_with_either_derived_key(service_api: ServiceApi) -> None:
    """The key derived from the group's primary key, or from its secondary key (the
    secondary's derivation is tried only when the primary's did not sign)."""
    await service_api.runtime.hubs.link("hub-a.example")
    secondary = base64.b64encode(b"s" * 64).decode()
    group = {
        "enrollmentGroupId": "pair",
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": GROUP_KEY, "secondaryKey": secondary},
        },
    }
    assert (await service_api.put("/enrollmentGroups/pair", group)).status_code == 200
    for device, key in (("by-primary", GROUP_KEY), ("by-secondary", secondary)):
        outcome = await provision(service_api, device, derive_device_key(key, device))
        assert outcome["status"] == "assigned"
    refused = await register(service_api, "by-neither", derive_device_key(KEY, "by-neither"))
    assert_dps_error(refused, 401, 401002)


async def test_allocation_follows_the_enrollment(service_api: ServiceApi) -> None:
    for name in ("hub-a.example", "hub-b.example", "hub-c.example"):
        await service_api.runtime.hubs.link(name)
    await enroll(service_api, "pinned", allocationPolicy="static", iotHubs=["hub-c.example"])
    assert (await provision(service_api, "pinned", KEY))["registrationState"][
        "assignedHub"
    ] == "hub-c.example"
    await enroll(service_api, "spread", iotHubs=["hub-a.example", "hub-b.example"])
    assigned = (await provision(service_api, "spread", KEY))["registrationState"]["assignedHub"]
    assert assigned in ("hub-a.example", "hub-b.example")
    assert (await provision(service_api, "spread", KEY))["registrationState"][
        "assignedHub"
    ] == assigned


async def test_reprovisioning_substatus(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await service_api.runtime.hubs.link("hub-b.example")
    await enroll(service_api, "mover", allocationPolicy="static", iotHubs=["hub-a.example"])
    assert (await provision(service_api, "mover", KEY))["registrationState"][
        "substatus"
    ] == "initialAssignment"
    current = (await service_api.get("/enrollments/mover")).json()
    moved = {
        **current,
        "iotHubs": ["hub-b.example"],
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": False},
    }
    await service_api.put("/enrollments/mover", moved, **{"If-Match": current["etag"]})
    state = (await provision(service_api, "mover", KEY))["registrationState"]
    assert (state["assignedHub"], state["substatus"]) == ("hub-b.example", "deviceDataReset")
    current = (await service_api.get("/enrollments/mover")).json()
    back = {
        **current,
        "iotHubs": ["hub-a.example"],
        "reprovisionPolicy": {"updateHubAssignment": True, "migrateDeviceData": True},
    }
    await service_api.put("/enrollments/mover", back, **{"If-Match": current["etag"]})
    state = (await provision(service_api, "mover", KEY))["registrationState"]
    assert (state["assignedHub"], state["substatus"]) == (
        "hub-a.example",
        "reprovisionedToInitialAssignment",
    )
    current = (await service_api.get("/enrollments/mover")).json()
    sticky = {
        **current,
        "iotHubs": ["hub-b.example"],
        "reprovisionPolicy": {"updateHubAssignment": False, "migrateDeviceData": True},
    }
    await service_api.put("/enrollments/mover", sticky, **{"If-Match": current["etag"]})
    assert (await provision(service_api, "mover", KEY))["registrationState"][
        "assignedHub"
    ] == "hub-a.example"


async def test_disabled_and_unplaceable_devices(service_api: ServiceApi) -> None:
    await enroll(service_api, "nowhere")
    failed = await provision(service_api, "nowhere", KEY)
    assert failed["status"] == "failed"
    assert failed["registrationState"]["errorCode"] == 400208
    assert "no linked IoT hub" in failed["registrationState"]["errorMessage"]
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll(service_api, "off", provisioningStatus="disabled")
    disabled = await provision(service_api, "off", KEY)
    assert disabled["status"] == "disabled"
    assert disabled["registrationState"]["status"] == "disabled"


async def test_device_errors(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll(service_api, "dev-1")
    scope = service_api.runtime.id_scope
    path = f"/{scope}/registrations/dev-1/register{DEVICE_API}"
    client = service_api.client
    cases = {
        "no credential": {},
        "wrong key": {"Authorization": device_token(scope, "dev-1", GROUP_KEY)},
        "expired": {"Authorization": device_token(scope, "dev-1", KEY, ttl=-10)},
        "another device's token": {"Authorization": device_token(scope, "dev-2", KEY)},
        "service policy name": {
            "Authorization": sas_token(
                f"{scope}/registrations/dev-1", "provisioningserviceowner", KEY
            )
        },
    }
    for case, headers in cases.items():
        response = await client.put(path, json={"registrationId": "dev-1"}, headers=headers)
        assert response.status_code == 401, case
        assert_dps_error(response, 401, 401002)
    assert_dps_error(await register(service_api, "nobody", KEY), 401, 401002, "No enrollment")
    assert_dps_error(
        await register(service_api, "dev-1", KEY, scope="0ne00000000"), 401, 401002, "ID scope"
    )
    mismatch = await register(service_api, "dev-1", KEY, body={"registrationId": "dev-2"})
    assert_dps_error(mismatch, 400, 400004, "does not match")
    tpm = await register(
        service_api,
        "dev-1",
        KEY,
        body={"registrationId": "dev-1", "tpm": {"endorsementKey": "AAAA"}},
    )
    assert_dps_error(tpm, 400, 400004, "TPM")
    assert_dps_error(await poll(service_api, "dev-1", KEY, "4.0.missing"), 404, 404205)
    raw = {"Authorization": device_token(scope, "dev-1", KEY, encode=False)}
    assert (
        await client.put(path, json={"registrationId": "dev-1"}, headers=raw)
    ).status_code == 202
    unkeyed = sas_token(f"{scope}/registrations/dev-1", None, KEY)
    assert (
        await client.put(path, content=b"", headers={"Authorization": unkeyed})
    ).status_code == 202


async def test_status_lookup(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll(service_api, "dev-1")
    scope = service_api.runtime.id_scope
    headers = {"Authorization": device_token(scope, "dev-1", KEY)}
    path = f"/{scope}/registrations/dev-1{DEVICE_API}"
    assert_dps_error(await service_api.client.post(path, json={}, headers=headers), 404, 404202)
    await provision(service_api, "dev-1", KEY)
    found = await service_api.client.post(path, json={"registrationId": "dev-1"}, headers=headers)
    assert found.status_code == 200
    assert found.json()["assignedHub"] == "hub-a.example"


async def test_a_settled_operation_lives_with_the_state_it_left(service_api: ServiceApi) -> None:
    """A registration settled within its register is one write: the state, its operation
    kept with it. Polls find the operation as long as that state stands."""
    await service_api.runtime.hubs.link("hub-a.example")
    await enroll(service_api, "dev-1")
    first = (await register(service_api, "dev-1", KEY)).json()["operationId"]
    assert await service_api.runtime.devices.operations.get(first) is None  # nothing apart
    assert (await poll(service_api, "dev-1", KEY, first)).json()["status"] == "assigned"

    second = (await register(service_api, "dev-1", KEY)).json()["operationId"]
    assert (await poll(service_api, "dev-1", KEY, second)).json()["status"] == "assigned"
    # The state the first operation left is gone: so is the first operation.
    assert_dps_error(await poll(service_api, "dev-1", KEY, first), 404, 404205)

    deleted = await service_api.client.delete(
        f"/registrations/dev-1{API}", headers=service_api.auth()
    )
    assert deleted.status_code == 204, deleted.text
    assert_dps_error(await poll(service_api, "dev-1", KEY, second), 404, 404205)
