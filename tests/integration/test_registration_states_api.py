"""Device registration states over HTTP: read, delete, and list by enrollment group."""

from __future__ import annotations

from datetime import UTC, datetime

from dpsd.domain.etag import new_etag
from dpsd.domain.registration import (
    AssignedDeviceSubstatus,
    DeviceRegistrationState,
    RegistrationStatus,
)
from tests.conftest import API, ServiceApi
from tests.integration.test_enrollments_api import TIMESTAMP, assert_dps_error


def state(registration_id: str, group: str | None = None) -> DeviceRegistrationState:
    moment = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    return DeviceRegistrationState(
        registration_id=registration_id,
        status=RegistrationStatus.ASSIGNED,
        etag=new_etag(registration_id.encode().ljust(16, b"_")[:16]),
        created=moment,
        last_updated=moment,
        assigned_hub="hub-1.example",
        device_id=registration_id,
        substatus=AssignedDeviceSubstatus.INITIAL_ASSIGNMENT,
        payload={"firmware": "1.2"},
        enrollment_group_id=group,
    )


async def test_get_and_delete_a_registration_state(service_api: ServiceApi) -> None:
    await service_api.runtime.registration_states.put(state("dev-1"))
    response = await service_api.get("/registrations/dev-1")
    assert response.status_code == 200
    body = response.json()
    assert body["registrationId"] == "dev-1"
    assert body["status"] == "assigned"
    assert body["substatus"] == "initialAssignment"
    assert body["assignedHub"] == "hub-1.example"
    assert body["payload"] == {"firmware": "1.2"}
    assert TIMESTAMP.match(body["createdDateTimeUtc"])
    assert_dps_error(
        await service_api.delete("/registrations/dev-1", **{"If-Match": "stale"}), 412, 412002
    )
    assert (
        await service_api.delete("/registrations/dev-1", **{"If-Match": body["etag"]})
    ).status_code == 204
    assert_dps_error(await service_api.get("/registrations/dev-1"), 404, 404202, "dev-1")
    assert_dps_error(await service_api.delete("/registrations/dev-1"), 404, 404202)


async def test_an_enrollment_shows_and_takes_its_registration_state(
    service_api: ServiceApi,
) -> None:
    body = {"registrationId": "dev-1", "attestation": {"type": "symmetricKey"}}
    await service_api.put("/enrollments/dev-1", body)
    await service_api.runtime.registration_states.put(state("dev-1"))
    shown = (await service_api.get("/enrollments/dev-1")).json()
    assert shown["registrationState"]["status"] == "assigned"
    assert (await service_api.delete("/enrollments/dev-1")).status_code == 204
    assert (await service_api.get("/registrations/dev-1")).status_code == 404


async def test_registration_states_of_a_group(service_api: ServiceApi) -> None:
    for n in range(5):
        await service_api.runtime.registration_states.put(
            state(f"dev-{n}", "fleet" if n != 2 else "other")
        )
    group = {"enrollmentGroupId": "fleet", "attestation": {"type": "symmetricKey"}}
    await service_api.put("/enrollmentGroups/fleet", group)
    seen: list[str] = []
    continuation = None
    for body in (None, {"query": "SELECT *"}, None):
        headers = {"x-ms-max-item-count": "2"}
        if continuation:
            headers["x-ms-continuation"] = continuation
        page = await service_api.post("/registrations/fleet/query", body, **headers)
        assert page.status_code == 200, page.text
        assert page.headers["x-ms-item-type"] == "DeviceRegistration"
        seen += [item["registrationId"] for item in page.json()]
        continuation = page.headers.get("x-ms-continuation")
        if continuation is None:
            break
    assert seen == ["dev-0", "dev-1", "dev-3", "dev-4"]
    assert (await service_api.delete("/enrollmentGroups/fleet")).status_code == 204
    kept = await service_api.post("/registrations/FLEET/query")
    assert len(kept.json()) == 4


async def test_registration_rights(service_api: ServiceApi) -> None:
    await service_api.runtime.registration_states.put(state("dev-1"))
    reader = service_api.auth("registrationstatusread")
    client = service_api.client
    assert (await client.get("/registrations/dev-1" + API, headers=reader)).status_code == 200
    denied = await client.delete("/registrations/dev-1" + API, headers=reader)
    assert_dps_error(denied, 401, 401002, "RegistrationStatusWrite")
    enrollments_only = service_api.auth("enrollmentread")
    assert_dps_error(
        await client.get("/registrations/dev-1" + API, headers=enrollments_only), 401, 401002
    )
    writer = service_api.auth("registrationstatuswrite")
    assert (await client.delete("/registrations/dev-1" + API, headers=writer)).status_code == 204
