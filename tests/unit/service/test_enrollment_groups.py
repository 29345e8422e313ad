"""PUT of enrollment groups on the in-memory repositories: the one-statement path (no read
of the stored group) and the order in which the general path reports what went wrong."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from dpsd.domain.attestation import AttestationMechanism, AttestationType
from dpsd.domain.enrollment import EnrollmentSettings, ProvisioningStatus
from dpsd.domain.enrollment_group import EnrollmentGroup, EnrollmentGroupDraft
from dpsd.domain.errors import InvalidAttestation, ValidationError
from dpsd.domain.hub import LinkedHub
from dpsd.service.enrollment_groups import MAX_GROUPS_PER_ATTESTATION, EnrollmentGroupService
from dpsd.service.errors import EnrollmentGroupAlreadyExists, PreconditionFailed
from dpsd.storage.memory import (
    InMemoryCertificateRepository,
    InMemoryEnrollmentGroupRepository,
    InMemoryHubRepository,
)
from tests.unit.service.test_enrollments import (
    KEY_A,
    KEY_B,
    START,
    FakeClock,
    FakeEntropy,
    with_keys,
)

HUB = "hub-a.example"


class CountingGroups(InMemoryEnrollmentGroupRepository):
    """Counts reads of one group, so that a test sees which writes went without one."""

    def __init__(self, hubs: InMemoryHubRepository) -> None:
        super().__init__(hubs)
        self.reads = 0

    async def get(self, record_id: str) -> EnrollmentGroup | None:
        self.reads += 1
        return await super().get(record_id)


@dataclass
class World:
    service: EnrollmentGroupService
    groups: CountingGroups
    clock: FakeClock


@pytest.fixture
async def world() -> World:
    hubs = InMemoryHubRepository()
    await hubs.add(LinkedHub(host_name=HUB, etag="e"))
    groups = CountingGroups(hubs)
    clock = FakeClock()
    service = EnrollmentGroupService(
        groups, InMemoryCertificateRepository(), clock, FakeEntropy(), hubs
    )
    return World(service, groups, clock)


def draft(
    group_id: str = "fleet-a",
    attestation: AttestationMechanism | None = None,
    **settings: object,
) -> EnrollmentGroupDraft:
    mechanism = attestation or with_keys(KEY_A, KEY_B)
    return EnrollmentGroupDraft(
        group_id,
        EnrollmentSettings(attestation=mechanism, **settings),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("header", ["etag", "*"])
async def test_an_update_with_both_keys_writes_without_reading_first(
    world: World, header: str
) -> None:
    created = await world.service.create_or_update("fleet-a", draft(iot_hub_host_name=HUB), None)
    world.clock.advance(60)
    world.groups.reads = 0
    disabled = draft(provisioning_status=ProvisioningStatus.DISABLED)
    updated = await world.service.create_or_update(
        "FLEET-A", disabled, header.replace("etag", created.etag)
    )
    assert world.groups.reads == 0
    assert updated.created == START
    assert updated.last_updated == START + timedelta(seconds=60)
    assert updated.etag != created.etag
    assert await world.service.get("fleet-a") == updated


async def test_an_update_that_keeps_the_stored_keys_reads_them(world: World) -> None:
    created = await world.service.create_or_update("fleet-a", draft(), None)
    keyless = draft(attestation=AttestationMechanism(AttestationType.SYMMETRIC_KEY))
    updated = await world.service.create_or_update("fleet-a", keyless, created.etag)
    assert world.groups.reads > 0
    assert updated.settings.attestation == created.settings.attestation


async def test_a_second_create_is_refused(world: World) -> None:
    first = await world.service.create_or_update("fleet-a", draft(), None)
    with pytest.raises(EnrollmentGroupAlreadyExists):
        await world.service.create_or_update("Fleet-A", draft("Fleet-A"), None)
    assert await world.service.get("fleet-a") == first


async def test_an_unlinked_hub_is_reported_before_a_precondition(world: World) -> None:
    created = await world.service.create_or_update("fleet-a", draft(), None)
    elsewhere = draft(iot_hub_host_name="elsewhere.example")
    for if_match in (None, "*", "stale", created.etag):
        with pytest.raises(ValidationError, match=r"'elsewhere\.example' is not linked"):
            await world.service.create_or_update("fleet-a", elsewhere, if_match)
    with pytest.raises(PreconditionFailed):
        await world.service.create_or_update("fleet-a", draft(), "stale")
    assert await world.service.get("fleet-a") == created


async def test_a_stale_etag_is_reported_before_a_bad_key(world: World) -> None:
    await world.service.create_or_update("fleet-a", draft(), None)
    bad = draft(attestation=with_keys("not base64!", KEY_B))
    with pytest.raises(PreconditionFailed):
        await world.service.create_or_update("fleet-a", bad, "stale")
    with pytest.raises(InvalidAttestation):
        await world.service.create_or_update("fleet-a", bad, "*")


async def test_the_group_limit_holds_and_comes_after_an_unlinked_hub(world: World) -> None:
    for index in range(MAX_GROUPS_PER_ATTESTATION):
        await world.service.create_or_update(f"g-{index:03}", draft(f"g-{index:03}"), None)
    with pytest.raises(ValidationError, match=r"'elsewhere\.example' is not linked"):
        await world.service.create_or_update(
            "one-more", draft("one-more", iot_hub_host_name="elsewhere.example"), None
        )
    for if_match in (None, "*"):
        with pytest.raises(ValidationError, match="100 symmetric-key enrollment groups"):
            await world.service.create_or_update("one-more", draft("one-more"), if_match)
    with pytest.raises(EnrollmentGroupAlreadyExists):
        await world.service.create_or_update("g-000", draft("g-000"), None)
    assert await world.service.create_or_update("g-000", draft("g-000"), "*")
