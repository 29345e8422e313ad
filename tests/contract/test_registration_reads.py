"""The contract for the reads of a device registration that span kinds of record, on every
store: the in-memory reference, SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from dpsd.domain.attestation import AttestationType
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.hub import LinkedHub
from dpsd.domain.registration import DeviceRegistrationState, RegistrationStatus
from dpsd.storage import memory, sql
from dpsd.storage.executor import create_executor
from tests.contract.databases import sql_database
from tests.factories import MOMENT, enrollment, x509_enrollment

SYMMETRIC = AttestationType.SYMMETRIC_KEY
X509 = AttestationType.X509


@dataclass
class Stores:
    reads: Any
    enrollments: Any
    groups: Any
    states: Any
    hubs: Any


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    if request.param == "memory":
        hubs = memory.InMemoryHubRepository()
        enrollments = memory.InMemoryEnrollmentRepository(hubs)
        groups = memory.InMemoryEnrollmentGroupRepository(hubs)
        states = memory.InMemoryRegistrationStateRepository()
        reads = memory.InMemoryRegistrationReads(enrollments, groups, states, hubs)
        yield Stores(reads, enrollments, groups, states, hubs)
        return
    async with sql_database(request, tmp_path) as (url, engine):
        executor = create_executor(url, engine)
        try:
            yield Stores(
                sql.SqlRegistrationReads(executor),
                sql.SqlEnrollmentRepository(executor),
                sql.SqlEnrollmentGroupRepository(executor),
                sql.SqlRegistrationStateRepository(executor),
                sql.SqlHubRepository(executor),
            )
        finally:
            await executor.close()


def group(group_id: str, attestation: AttestationType = SYMMETRIC) -> EnrollmentGroup:
    source = enrollment(group_id) if attestation == SYMMETRIC else x509_enrollment(group_id)
    return EnrollmentGroup(group_id, source.settings, source.etag, MOMENT, MOMENT)


def state(registration_id: str) -> DeviceRegistrationState:
    return DeviceRegistrationState(
        registration_id=registration_id,
        status=RegistrationStatus.ASSIGNED,
        etag="state-etag",
        created=MOMENT,
        last_updated=MOMENT,
        assigned_hub="hub-a.example",
        device_id=registration_id,
    )


async def test_without_an_enrollment_the_groups_of_the_attestation_by_id(stores: Stores) -> None:
    for record in (group("fleet-b"), group("Fleet-A"), group("certs", X509), group("fleet-c")):
        assert await stores.groups.add(record)
    found, groups = await stores.reads.enrollment_or_groups("device-1", SYMMETRIC, 1000)
    assert found is None
    assert [g.enrollment_group_id for g in groups] == ["Fleet-A", "fleet-b", "fleet-c"]
    assert groups[0] == await stores.groups.get("fleet-a")
    _, first_two = await stores.reads.enrollment_or_groups("device-1", SYMMETRIC, 2)
    assert [g.enrollment_group_id for g in first_two] == ["Fleet-A", "fleet-b"]
    _, x509 = await stores.reads.enrollment_or_groups("device-1", X509, 1000)
    assert [g.enrollment_group_id for g in x509] == ["certs"]


async def test_an_enrollment_of_the_device_comes_alone(stores: Stores) -> None:
    await stores.groups.add(group("fleet-a"))
    own = enrollment("Device-1")
    assert await stores.enrollments.add(own)
    assert await stores.reads.enrollment_or_groups("DEVICE-1", SYMMETRIC, 1000) == (own, [])
    # whatever its attestation: the caller says whether it matches
    assert await stores.reads.enrollment_or_groups("device-1", X509, 1000) == (own, [])
    assert await stores.reads.enrollment_or_groups("device-2", X509, 1000) == (None, [])


async def test_the_state_and_every_linked_hub(stores: Stores) -> None:
    assert await stores.reads.state_and_hubs("device-1") == (None, [])
    hubs = [LinkedHub(host_name=name, etag="e") for name in ("hub-b.example", "Hub-A.example")]
    for hub in hubs:
        assert await stores.hubs.add(hub)
    assert await stores.reads.state_and_hubs("device-1") == (None, hubs[::-1])
    first = state("Device-1")
    await stores.states.put(first)
    await stores.states.put(state("device-2"))
    assert await stores.reads.state_and_hubs("device-1") == (first, hubs[::-1])
    for hub in hubs:
        assert await stores.hubs.delete(hub.host_name, expected_etag=None)
    moved = replace(first, assigned_hub="hub-b.example")
    await stores.states.put(moved)
    assert await stores.reads.state_and_hubs("DEVICE-1") == (moved, [])
