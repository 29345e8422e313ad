"""dpsd.client's sync client against a real ``dpsd serve``: over HTTPS trusting the dpsd CA,
and over the plain HTTP endpoint."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from dpsd.client import (
    ConflictError,
    DpsServiceClient,
    NotFoundError,
    PreconditionFailedError,
    UnauthorizedError,
)
from tests.conftest import sas_token
from tests.e2e.process import POLL_INTERVAL

pytestmark = pytest.mark.e2e

REGISTRATION_TIMEOUT = 30.0


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def symmetric(registration_id: str, **extra: Any) -> dict[str, Any]:
    return {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **extra}


def over_http(info: dict[str, Any]) -> str:
    """The connection string with HostName pointing at the plain HTTP endpoint."""
    parts = dict(part.split("=", 1) for part in info["serviceConnectionString"].split(";"))
    parts["HostName"] = info["endpoints"]["http"]
    return ";".join(f"{name}={value}" for name, value in parts.items())


@pytest.fixture(scope="module", params=["https", "http"])
def client(request: pytest.FixtureRequest, dpsd_info: dict[str, Any]) -> Iterator[DpsServiceClient]:
    if request.param == "https":
        connection_string = dpsd_info["serviceConnectionString"]
        assert not connection_string.startswith("HostName=http")
    else:
        connection_string = over_http(dpsd_info)
        assert "HostName=http://localhost:" in connection_string
    with DpsServiceClient.from_connection_string(
        connection_string, verify=dpsd_info["caCertificatePath"]
    ) as client:
        yield client


def test_enrollment_lifecycle(client: DpsServiceClient) -> None:
    device = new_id("dev")
    created = client.enrollments.create_or_update(symmetric(device))
    keys = created["attestation"]["symmetricKey"]
    with pytest.raises(ConflictError) as conflict:
        client.enrollments.create_or_update(symmetric(device))
    assert conflict.value.error_code == 409201
    shown = client.enrollments.get(device)
    assert shown["attestation"] == {"type": "symmetricKey"}
    assert client.enrollments.attestation_mechanism(device)["symmetricKey"] == keys
    updated = client.enrollments.create_or_update(
        {**shown, "deviceId": "renamed"}, if_match=shown["etag"]
    )
    assert updated["deviceId"] == "renamed"
    with pytest.raises(PreconditionFailedError):
        client.enrollments.delete(device, if_match=shown["etag"])
    client.enrollments.delete(device, if_match=updated["etag"])
    with pytest.raises(NotFoundError) as missing:
        client.enrollments.get(device)
    assert missing.value.error_code == 404201
    assert f"'{device}'" in str(missing.value)


def test_query_and_bulk(client: DpsServiceClient) -> None:
    tag = uuid.uuid4().hex[:8]
    records = [symmetric(f"q-{tag}-{n}", deviceId=f"dev-{tag}") for n in range(7)]
    for start in (0, 5):  # at most 10 per bulk call; two calls show it is repeatable
        result = client.enrollments.run_bulk_operation("create", records[start : start + 5])
        assert result == {"isSuccessful": True, "errors": []}
    selected = client.enrollments.query(
        f"SELECT * FROM enrollments WHERE deviceId = 'dev-{tag}'", page_size=3
    )
    assert [item["registrationId"] for item in selected] == [r["registrationId"] for r in records]
    deleted = client.enrollments.run_bulk_operation(
        "delete", [{"registrationId": r["registrationId"]} for r in records]
    )
    assert deleted["isSuccessful"] is True
    again = client.enrollments.query(f"SELECT * WHERE deviceId = 'dev-{tag}'", page_size=3)
    assert list(again) == []


def test_groups_and_registration_states(
    client: DpsServiceClient, dpsd_info: dict[str, Any]
) -> None:
    group_id = new_id("fleet")
    group = {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}}
    created = client.enrollment_groups.create_or_update(group)
    assert [g["enrollmentGroupId"] for g in client.enrollment_groups.query(page_size=1)].count(
        group_id
    ) == 1
    group_key = created["attestation"]["symmetricKey"]["primaryKey"]
    devices = sorted(new_id("device") for _ in range(3))
    for device in devices:
        register(dpsd_info, device, group_key)
    states = list(client.registrations.query(group_id, page_size=2))
    assert [s["registrationId"] for s in states] == devices
    shown = client.registrations.get(devices[0])
    assert shown["registrationId"] == devices[0]
    client.registrations.delete(devices[0], if_match=shown["etag"])
    with pytest.raises(NotFoundError) as missing:
        client.registrations.get(devices[0])
    assert missing.value.error_code == 404202
    assert [s["registrationId"] for s in client.registrations.query(group_id)] == devices[1:]
    client.enrollment_groups.delete(group_id)
    with pytest.raises(NotFoundError):
        client.enrollment_groups.get(group_id)


def test_a_wrong_key_is_refused(dpsd_info: dict[str, Any]) -> None:
    wrong = base64.b64encode(b"w" * 32).decode()
    parts = dict(part.split("=", 1) for part in over_http(dpsd_info).split(";"))
    forged = DpsServiceClient(parts["HostName"], parts["SharedAccessKeyName"], wrong)
    with forged, pytest.raises(UnauthorizedError) as refused:
        forged.enrollments.get("anyone")
    assert refused.value.error_code == 401002


def register(info: dict[str, Any], registration_id: str, group_key: str) -> None:
    """Register a device of a symmetric-key group over the device API, as a device SDK
    does, and wait (bounded) until dpsd has recorded its registration state. No hub is
    linked, so the registration fails; the state is recorded all the same."""
    device_key = hmac.new(
        base64.b64decode(group_key), registration_id.encode(), hashlib.sha256
    ).digest()
    scope = info["idScope"]
    token = sas_token(
        f"{scope}/registrations/{registration_id}",
        "registration",
        base64.b64encode(device_key).decode(),
    )
    base = f"{info['endpoints']['http']}/{scope}/registrations/{registration_id}"
    params = {"api-version": "2021-06-01"}
    headers = {"Authorization": token}
    with httpx.Client(params=params, headers=headers, timeout=10) as device:
        started = device.put(f"{base}/register", json={"registrationId": registration_id})
        assert started.status_code == 202, started.text
        operation = started.json()["operationId"]
        deadline = time.monotonic() + REGISTRATION_TIMEOUT
        while (polled := device.get(f"{base}/operations/{operation}")).status_code == 202:
            assert time.monotonic() < deadline, f"{registration_id} still assigning"
            time.sleep(POLL_INTERVAL)  # poll interval, not a wait for readiness
        assert polled.json()["status"] in ("assigned", "failed"), polled.text
