"""dpsd.client's async client against the real service API, in-process (no sockets)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from dpsd.client import (
    AsyncDpsServiceClient,
    BadRequestError,
    ConflictError,
    DpsError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    UnauthorizedError,
)
from tests.conftest import ServiceApi
from tests.integration.test_registration_states_api import state

KEY_16 = base64.b64encode(b"k" * 16).decode()


def symmetric(registration_id: str, **extra: Any) -> dict[str, Any]:
    return {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **extra}


def group(group_id: str, **extra: Any) -> dict[str, Any]:
    return {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}, **extra}


def connect(
    service_api: ServiceApi, policy: str = "provisioningserviceowner"
) -> AsyncDpsServiceClient:
    transport = httpx.ASGITransport(app=service_api.runtime.asgi_app)
    return AsyncDpsServiceClient.from_connection_string(
        service_api.runtime.connection_string(443, "localhost", policy), transport=transport
    )


@pytest.fixture
async def client(service_api: ServiceApi) -> AsyncIterator[AsyncDpsServiceClient]:
    async with connect(service_api) as client:
        yield client


async def collect(items: AsyncIterator[dict[str, Any]]) -> list[dict[str, Any]]:
    return [item async for item in items]


async def test_enrollment_crud_with_etags(client: AsyncDpsServiceClient) -> None:
    created = await client.enrollments.create_or_update(symmetric("dev-1"))
    assert created["provisioningStatus"] == "enabled"
    keys = created["attestation"]["symmetricKey"]
    shown = await client.enrollments.get("dev-1")
    assert shown["attestation"] == {"type": "symmetricKey"}
    assert await client.enrollments.attestation_mechanism("dev-1") == {
        "type": "symmetricKey",
        "symmetricKey": keys,
    }
    updated = await client.enrollments.create_or_update(
        {**shown, "deviceId": "renamed"}, if_match=shown["etag"]
    )
    assert updated["deviceId"] == "renamed"
    assert updated["etag"] != shown["etag"]
    anyway = await client.enrollments.create_or_update(symmetric("dev-1"), if_match="*")
    assert anyway["createdDateTimeUtc"] == created["createdDateTimeUtc"]
    with pytest.raises(PreconditionFailedError) as stale:
        await client.enrollments.delete("dev-1", if_match=created["etag"])
    assert (stale.value.status_code, stale.value.error_code) == (412, 412002)
    await client.enrollments.delete("dev-1", if_match=anyway["etag"])
    with pytest.raises(NotFoundError):
        await client.enrollments.get("dev-1")


async def test_errors_carry_the_dps_error_body(client: AsyncDpsServiceClient) -> None:
    await client.enrollments.create_or_update(symmetric("dev-1"))
    with pytest.raises(ConflictError) as conflict:
        await client.enrollments.create_or_update(symmetric("dev-1"))
    assert conflict.value.error_code == 409201
    with pytest.raises(NotFoundError) as missing:
        await client.enrollments.get("ghost")
    error = missing.value
    assert (error.status_code, error.error_code) == (404, 404201)
    assert error.tracking_id
    assert "'ghost'" in error.message
    assert str(error) == f"404201 {error.message} (tracking id {error.tracking_id})"
    with pytest.raises(NotFoundError):
        await client.enrollments.attestation_mechanism("ghost")
    with pytest.raises(NotFoundError):
        await client.enrollments.delete("ghost")
    with pytest.raises(BadRequestError) as bad:
        await client.enrollments.create_or_update(symmetric("bad id!"))
    assert bad.value.error_code == 400004
    huge = symmetric("dev-2", initialTwin={"tags": {"blob": "x" * 100_000}})
    with pytest.raises(PayloadTooLargeError) as too_large:
        await client.enrollments.create_or_update(huge)
    assert too_large.value.error_code == 413001
    with pytest.raises(PreconditionFailedError):
        await client.enrollments.create_or_update(symmetric("dev-3"), if_match="no-such-etag")
    with pytest.raises(ValueError, match="registrationId"):
        await client.enrollments.create_or_update({"attestation": {"type": "symmetricKey"}})


async def test_ids_are_escaped_in_paths(client: AsyncDpsServiceClient) -> None:
    for odd in ("a/b", "a?b", "a#b"):  # one path segment each, refused as an invalid id
        with pytest.raises(BadRequestError, match=re.escape(f"'{odd}' is invalid")):
            await client.enrollments.get(odd)
    await client.enrollments.create_or_update(symmetric("dev:1.a_b"))
    assert (await client.enrollments.get("DEV:1.A_B"))["registrationId"] == "dev:1.a_b"


async def test_every_request_is_signed_for_the_policy(service_api: ServiceApi) -> None:
    async with connect(service_api, "enrollmentread") as reader:
        assert await collect(reader.enrollments.query()) == []
        with pytest.raises(UnauthorizedError) as denied:
            await reader.enrollments.create_or_update(symmetric("dev-1"))
    assert denied.value.error_code == 401002
    assert isinstance(denied.value, DpsError)
    wrong_key = base64.b64encode(b"w" * 32).decode()
    async with AsyncDpsServiceClient(
        "localhost",
        "provisioningserviceowner",
        wrong_key,
        transport=httpx.ASGITransport(app=service_api.runtime.asgi_app),
    ) as forged:
        with pytest.raises(UnauthorizedError):
            await forged.enrollments.get("dev-1")


async def test_query_pages_transparently(client: AsyncDpsServiceClient) -> None:
    for n in range(7):
        await client.enrollments.create_or_update(symmetric(f"dev-{n}", deviceId=f"d{n % 2}"))
    everything = await collect(client.enrollments.query(page_size=3))
    assert [item["registrationId"] for item in everything] == [f"dev-{n}" for n in range(7)]
    assert all(item["attestation"] == {"type": "symmetricKey"} for item in everything)
    odd = client.enrollments.query("SELECT * FROM enrollments WHERE deviceId = 'd1'", page_size=1)
    assert [item["registrationId"] async for item in odd] == ["dev-1", "dev-3", "dev-5"]
    assert len(await collect(client.enrollments.query())) == 7
    with pytest.raises(BadRequestError):
        await collect(client.enrollments.query("SELECT * FROM nowhere"))
    with pytest.raises(ValueError, match="page_size"):
        client.enrollments.query(page_size=0)


async def test_query_pages_are_fetched_as_iterated(service_api: ServiceApi) -> None:
    seen: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        seen.append(request)

    async with connect(service_api) as client:
        for n in range(7):
            await client.enrollments.create_or_update(symmetric(f"dev-{n}"))
        client._http.event_hooks["request"].append(record)
        pages = client.enrollments.query(page_size=3)
        assert [await anext(pages) for _ in range(3)] != []
        assert len(seen) == 1
        rest = [item async for item in pages]
    assert len(rest) == 4
    assert [r.headers.get("x-ms-continuation") is None for r in seen] == [True, False, False]
    assert {r.headers["x-ms-max-item-count"] for r in seen} == {"3"}
    assert all(r.url.params["api-version"] == "2021-10-01" for r in seen)


async def test_enrollment_groups(client: AsyncDpsServiceClient) -> None:
    created = await client.enrollment_groups.create_or_update(group("fleet"))
    with pytest.raises(ConflictError) as conflict:
        await client.enrollment_groups.create_or_update(group("fleet"))
    assert conflict.value.error_code == 409204
    shown = await client.enrollment_groups.get("fleet")
    assert shown["etag"] == created["etag"]
    mechanism = await client.enrollment_groups.attestation_mechanism("fleet")
    assert mechanism["symmetricKey"] == created["attestation"]["symmetricKey"]
    updated = await client.enrollment_groups.create_or_update(
        {**shown, "provisioningStatus": "disabled"}, if_match=shown["etag"]
    )
    assert updated["provisioningStatus"] == "disabled"
    with pytest.raises(PreconditionFailedError):
        await client.enrollment_groups.create_or_update(shown, if_match=shown["etag"])
    for n in range(4):
        await client.enrollment_groups.create_or_update(group(f"more-{n}"))
    listed = client.enrollment_groups.query("SELECT * FROM enrollmentGroups", page_size=2)
    assert [item["enrollmentGroupId"] async for item in listed] == [
        "fleet",
        "more-0",
        "more-1",
        "more-2",
        "more-3",
    ]
    await client.enrollment_groups.delete("fleet", if_match=updated["etag"])
    with pytest.raises(NotFoundError) as missing:
        await client.enrollment_groups.get("fleet")
    assert missing.value.error_code == 404204


async def test_bulk_operations(client: AsyncDpsServiceClient) -> None:
    records = [symmetric(f"bulk-{n}") for n in range(3)]
    assert await client.enrollments.run_bulk_operation("create", records) == {
        "isSuccessful": True,
        "errors": [],
    }
    again = await client.enrollments.run_bulk_operation("create", records[:1])
    assert again["isSuccessful"] is False
    assert [(e["registrationId"], e["errorCode"]) for e in again["errors"]] == [("bulk-0", 409201)]
    current = await client.enrollments.get("bulk-1")
    keys = {"primaryKey": KEY_16, "secondaryKey": KEY_16}
    changed = {**current, "attestation": {"type": "symmetricKey", "symmetricKey": keys}}
    matched = await client.enrollments.run_bulk_operation("updateIfMatchETag", [changed])
    assert matched["isSuccessful"] is True
    assert (await client.enrollments.attestation_mechanism("bulk-1"))["symmetricKey"] == keys
    deleted = await client.enrollments.run_bulk_operation(
        "delete", [{"registrationId": "bulk-0"}, {"registrationId": "bulk-2"}]
    )
    assert deleted["isSuccessful"] is True
    assert [e["registrationId"] async for e in client.enrollments.query()] == ["bulk-1"]
    with pytest.raises(BadRequestError):
        await client.enrollments.run_bulk_operation(
            "create", [symmetric(f"many-{n}") for n in range(11)]
        )
    with pytest.raises(ValueError, match="mode"):
        await client.enrollments.run_bulk_operation("upsert", records)  # type: ignore[arg-type]
    groups = await client.enrollment_groups.run_bulk_operation(
        "create", [group("g-1"), group("g-2")]
    )
    assert groups == {"isSuccessful": True, "errors": []}
    assert [g["enrollmentGroupId"] async for g in client.enrollment_groups.query()] == [
        "g-1",
        "g-2",
    ]


async def test_registration_states(service_api: ServiceApi, client: AsyncDpsServiceClient) -> None:
    for n in range(5):
        await service_api.runtime.registration_states.put(
            state(f"dev-{n}", "fleet" if n != 2 else "other")
        )
    shown = await client.registrations.get("dev-1")
    assert shown["status"] == "assigned"
    assert shown["assignedHub"] == "hub-1.example"
    listed = client.registrations.query("fleet", page_size=2)
    assert [item["registrationId"] async for item in listed] == ["dev-0", "dev-1", "dev-3", "dev-4"]
    assert len(await collect(client.registrations.query("FLEET"))) == 4
    assert await collect(client.registrations.query("nobody")) == []
    with pytest.raises(PreconditionFailedError):
        await client.registrations.delete("dev-1", if_match="stale")
    await client.registrations.delete("dev-1", if_match=shown["etag"])
    await client.registrations.delete("dev-3")
    with pytest.raises(NotFoundError) as missing:
        await client.registrations.get("dev-1")
    assert missing.value.error_code == 404202
    assert [item["registrationId"] async for item in client.registrations.query("fleet")] == [
        "dev-0",
        "dev-4",
    ]
