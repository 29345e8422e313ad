"""The contract for groups, hubs, CA certificates and registration operations, on every
store: the in-memory reference, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import LinkedHub
from dpsd.domain.query import ENROLLMENT_GROUP_QUERY_FIELDS, parse_query
from dpsd.domain.registration import RegistrationOperation, RegistrationStatus
from dpsd.domain.x509 import CertificateInfo
from dpsd.storage import memory, sql
from dpsd.storage.executor import create_executor
from tests.contract.databases import sql_database
from tests.contract.test_repositories import check_creation_times_filled, downgrade
from tests.factories import MOMENT, enrollment

INFO = CertificateInfo(
    "CN=ca", "AA", "BB", "CN=ca", "2026-01-01T00:00:00Z", "2027-01-01T00:00:00Z", "1", 3
)


@dataclass
class Stores:
    groups: Any
    hubs: Any
    certificates: Any
    operations: Any
    engine: AsyncEngine | None = None


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "memory":
        hubs = memory.InMemoryHubRepository()
        yield Stores(
            memory.InMemoryEnrollmentGroupRepository(hubs),
            hubs,
            memory.InMemoryCertificateRepository(),
            memory.InMemoryOperationRepository(),
        )
        return
    async with sql_database(request, tmp_path) as (url, engine):
        executor = create_executor(url, engine)
        try:
            yield Stores(
                sql.SqlEnrollmentGroupRepository(executor),
                sql.SqlHubRepository(executor),
                sql.SqlCertificateRepository(executor),
                sql.SqlOperationRepository(executor),
                engine,
            )
        finally:
            await executor.close()


def group(group_id: str) -> EnrollmentGroup:
    source = enrollment(group_id)
    return EnrollmentGroup(group_id, source.settings, source.etag, MOMENT, MOMENT)


async def test_groups(stores: Stores) -> None:
    first = group("Fleet-A")
    assert await stores.groups.add(first)
    assert not await stores.groups.add(group("fleet-a"))
    assert await stores.groups.get("FLEET-A") == first
    updated = replace(first, etag=new_etag(b"9" * 16))
    assert not await stores.groups.replace(updated, expected_etag="stale")
    assert await stores.groups.replace(updated, expected_etag=first.etag)
    await stores.groups.add(group("fleet-b"))
    where = parse_query(
        "SELECT * WHERE attestation.type = 'symmetricKey'", ENROLLMENT_GROUP_QUERY_FIELDS
    ).where
    found = await stores.groups.query(where, after=None, limit=10)
    assert [item.enrollment_group_id for item in found] == ["Fleet-A", "fleet-b"]
    assert await stores.groups.delete("fleet-b", expected_etag=None)


async def test_group_writes_that_name_hubs_happen_only_when_all_are_linked(
    stores: Stores,
) -> None:
    await stores.hubs.add(LinkedHub(host_name="Hub-A.example", etag="e"))
    first = group_naming("Fleet-A", "hub-a.example")
    assert await stores.groups.add_linked(first, hubs=["HUB-A.example", "hub-b.example"]) is None
    assert await stores.groups.get("fleet-a") is None
    assert await stores.groups.add_linked(first, hubs=["HUB-A.example"]) is True
    assert await stores.groups.add_linked(first, hubs=["HUB-A.example"]) is False
    later = MOMENT + timedelta(days=1)
    second = replace(
        group_naming("FLEET-A", "hub-b.example"),
        etag=new_etag(b"2" * 16),
        created=later,
        last_updated=later,
    )
    assert await stores.groups.overwrite(second, expected_etag=None, hubs=["hub-b.example"]) is None
    assert await stores.groups.overwrite(second, expected_etag="stale") is None
    assert await stores.groups.get("fleet-a") == first
    assert await stores.groups.overwrite(second, expected_etag=first.etag) == MOMENT
    assert await stores.groups.get("fleet-a") == replace(second, created=MOMENT)
    third = replace(second, etag=new_etag(b"3" * 16))
    assert await stores.groups.overwrite(third, expected_etag=None, hubs=["hub-a.example"]) == (
        MOMENT
    )
    assert await stores.groups.get("fleet-a") == replace(third, created=MOMENT)
    assert await stores.groups.overwrite(group("absent"), expected_etag=None) is None
    assert await stores.groups.get("absent") is None


async def test_migration_0008_fills_the_creation_time_of_stored_groups(stores: Stores) -> None:
    if stores.engine is None:
        pytest.skip("only SQL stores have a schema")
    await downgrade(stores.engine, "0007")
    records = [group("old-1"), replace(group("old-2"), created=MOMENT - timedelta(days=3))]
    await check_creation_times_filled(stores.engine, stores.groups, sql.ENROLLMENT_GROUPS, records)


def group_naming(group_id: str, hub: str) -> EnrollmentGroup:
    source = group(group_id)
    return replace(source, settings=replace(source.settings, iot_hub_host_name=hub))


async def test_hubs_and_certificates(stores: Stores) -> None:
    hub = LinkedHub("Hub-1.example", "e1", 5, False, "west", None)
    assert await stores.hubs.add(hub)
    assert not await stores.hubs.add(replace(hub, host_name="hub-1.example"))
    assert await stores.hubs.get("hub-1.EXAMPLE") == hub
    assert await stores.hubs.list() == [hub]
    certificate = CACertificate("root", "PEM", INFO, False, "e1", MOMENT, MOMENT, "CODE")
    assert await stores.certificates.add(certificate)
    verified = replace(certificate, is_verified=True, verification_code=None, etag="e2")
    assert await stores.certificates.replace(verified, expected_etag="e1")
    assert await stores.certificates.list() == [verified]


async def test_operations_are_saved_over_and_expire(stores: Stores) -> None:
    now = datetime(2026, 5, 1, 12, tzinfo=UTC)
    started = RegistrationOperation("4.op.1", "dev-1", RegistrationStatus.ASSIGNING, now, now)
    await stores.operations.put(started)
    finished = replace(started, status=RegistrationStatus.ASSIGNED)
    await stores.operations.put(finished)
    assert await stores.operations.get("4.op.1") == finished
    await stores.operations.delete_older_than(now)
    assert await stores.operations.get("4.op.1") == finished
    await stores.operations.delete_older_than(now + timedelta(seconds=1))
    assert await stores.operations.get("4.op.1") is None


async def test_missing_hubs_are_named_in_the_order_given(stores: Stores) -> None:
    for index in range(10):
        assert await stores.hubs.add(LinkedHub(host_name=f"Hub-{index}.example", etag="e"))
    assert await stores.hubs.missing(["hub-1.example", "HUB-2.EXAMPLE"]) == []
    assert await stores.hubs.missing(["hub-1.example", "hub-1.EXAMPLE"]) == []
    asked = [f"hub-{index}.example" for index in range(12)]
    assert await stores.hubs.missing(asked) == ["hub-10.example", "hub-11.example"]
    assert await stores.hubs.missing(["nowhere.example", "hub-3.example"]) == ["nowhere.example"]
