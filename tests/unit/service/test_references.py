"""Referential integrity on the in-memory stores: unlinking a hub or deleting a CA certificate
that records name is refused (or forced, saying what is left), and a record left dangling can
still be updated as long as the update makes no dangling reference anew."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    X509Attestation,
    X509CAReferences,
)
from dpsd.domain.enrollment import EnrollmentSettings, ProvisioningStatus
from dpsd.domain.enrollment_group import EnrollmentGroupDraft
from dpsd.domain.errors import InvalidAttestation, ValidationError
from dpsd.service.certificates import CertificateService
from dpsd.service.enrollment_groups import EnrollmentGroupService
from dpsd.service.enrollments import EnrollmentService
from dpsd.service.errors import CertificateNotFound, PreconditionFailed, StillReferenced
from dpsd.service.hubs import HubNotFound, HubService
from dpsd.service.references import Dangling, Referrers, hub_not_linked
from dpsd.storage.memory import (
    InMemoryCertificateRepository,
    InMemoryEnrollmentGroupRepository,
    InMemoryEnrollmentRepository,
    InMemoryHubRepository,
    InMemoryRegistrationStateRepository,
)
from tests.unit.service.test_enrollments import KEY_A, KEY_B, FakeClock, FakeEntropy, draft
from tests.unit.service.test_enrollments import with_keys as keys
from tests.unit.support import issue, name

HUB = "hub1.example.net"
OTHER_HUB = "hub2.example.net"


@dataclass
class World:
    hubs: HubService
    certificates: CertificateService
    enrollments: EnrollmentService
    groups: EnrollmentGroupService


@pytest.fixture
async def world() -> World:
    hub_store = InMemoryHubRepository()
    enrollment_store = InMemoryEnrollmentRepository(hub_store)
    group_store = InMemoryEnrollmentGroupRepository(hub_store)
    certificate_store = InMemoryCertificateRepository()
    clock, entropy = FakeClock(), FakeEntropy()
    world = World(
        HubService(hub_store, entropy, enrollment_store, group_store),
        CertificateService(certificate_store, group_store, clock, entropy),
        EnrollmentService(
            enrollment_store, InMemoryRegistrationStateRepository(), clock, entropy, hub_store
        ),
        EnrollmentGroupService(group_store, certificate_store, clock, entropy, hub_store),
    )
    for host_name in (HUB, OTHER_HUB):
        await world.hubs.link(host_name)
    for ca_name in ("root", "other-root"):
        ca = issue(name(ca_name), serial=1, ca=True)
        await world.certificates.add(ca_name, ca.pem, verified=True)
    return world


def symmetric_group(group_id: str, **settings: object) -> EnrollmentGroupDraft:
    return EnrollmentGroupDraft(
        group_id,
        EnrollmentSettings(attestation=keys(KEY_A, KEY_B), **settings),  # type: ignore[arg-type]
    )


def x509_group(group_id: str, ca_name: str, **settings: object) -> EnrollmentGroupDraft:
    references = X509CAReferences(primary=ca_name)
    attestation = AttestationMechanism(
        AttestationType.X509, x509=X509Attestation(ca_references=references)
    )
    return EnrollmentGroupDraft(
        group_id,
        EnrollmentSettings(attestation=attestation, **settings),  # type: ignore[arg-type]
    )


async def enroll_naming(world: World, count: int, host_name: str = HUB) -> None:
    for index in range(count):
        registration_id = f"dev-{index:02}"
        named = draft(registration_id, iot_hubs=(host_name,))
        await world.enrollments.create_or_update(registration_id, named, None)


# --- unlinking a hub -------------------------------------------------------------------------


async def test_unlinking_a_hub_that_records_name_is_refused_and_names_them(world: World) -> None:
    await enroll_naming(world, 7, HUB.upper())
    await world.groups.create_or_update(
        "fleet", symmetric_group("fleet", iot_hub_host_name=HUB), None
    )
    with pytest.raises(StillReferenced) as refused:
        await world.hubs.unlink(HUB)
    assert refused.value.message == (
        f"IoT hub '{HUB}' is still named by 7 enrollments (dev-00, dev-01, dev-02, dev-03, "
        "dev-04, ...) and 1 enrollment group (fleet): change their iotHubs, or delete them, first "
        f"(or dpsd hub remove {HUB} --force)"
    )
    assert await world.hubs.get(HUB)


async def test_a_forced_unlink_says_what_still_names_the_hub(world: World) -> None:
    await enroll_naming(world, 2)
    left = await world.hubs.unlink(HUB, force=True)
    assert left == (Referrers("enrollment", 2, ("dev-00", "dev-01")),)
    with pytest.raises(HubNotFound):
        await world.hubs.get(HUB)


async def test_a_hub_no_record_names_is_unlinked(world: World) -> None:
    await enroll_naming(world, 2, OTHER_HUB)
    assert await world.hubs.unlink(HUB) == ()
    with pytest.raises(HubNotFound):
        await world.hubs.unlink(HUB, force=True)


# --- deleting a CA certificate ---------------------------------------------------------------


async def test_deleting_a_referenced_ca_certificate_is_refused(world: World) -> None:
    await world.groups.create_or_update("line-3", x509_group("line-3", "ROOT"), None)
    await world.groups.create_or_update("line-4", x509_group("line-4", "other-root"), None)
    with pytest.raises(StillReferenced) as refused:
        await world.certificates.delete("root")
    assert refused.value.message == (
        "CA certificate 'root' is still referenced by 1 enrollment group (line-3): point their "
        "caReferences at another CA certificate, or delete them, first "
        "(or dpsd certificate delete root --force)"
    )
    assert await world.certificates.get("root")


async def test_a_forced_delete_says_what_still_references_the_ca(world: World) -> None:
    await world.groups.create_or_update("line-3", x509_group("line-3", "root"), None)
    left = await world.certificates.delete("root", force=True)
    assert left == (Referrers("enrollment group", 1, ("line-3",)),)
    with pytest.raises(CertificateNotFound):
        await world.certificates.get("root")
    assert await world.certificates.delete("other-root") == ()


# --- records left dangling can be fixed or disabled ------------------------------------------


DISABLED = ProvisioningStatus.DISABLED


@pytest.mark.parametrize("attestation", ["generated keys", "both keys"])
async def test_an_enrollment_naming_an_unlinked_hub_can_still_be_disabled(
    world: World, attestation: str
) -> None:
    mechanism = keys(KEY_A, KEY_B) if attestation == "both keys" else None
    named = draft("dev-1", attestation=mechanism, iot_hubs=(HUB, OTHER_HUB))
    created = await world.enrollments.create_or_update("dev-1", named, None)
    await world.hubs.unlink(HUB, force=True)
    disabled = draft(
        "dev-1", attestation=mechanism, iot_hubs=(HUB, OTHER_HUB), provisioning_status=DISABLED
    )
    for if_match in (created.etag, "*"):
        updated = await world.enrollments.create_or_update("dev-1", disabled, if_match)
        assert updated.settings.provisioning_status is DISABLED
    fixed = await world.enrollments.create_or_update("dev-1", draft("dev-1"), "*")
    assert fixed.settings.iot_hubs is None


async def test_an_update_may_not_name_an_unlinked_hub_anew(world: World) -> None:
    created = await world.enrollments.create_or_update(
        "dev-1", draft("dev-1", iot_hubs=(HUB,)), None
    )
    await world.hubs.unlink(HUB, force=True)
    await world.hubs.unlink(OTHER_HUB)
    anew = draft("dev-1", iot_hubs=(HUB, OTHER_HUB))
    for if_match in ("*", created.etag, "stale"):
        with pytest.raises(ValidationError, match=r"'hub2\.example\.net' is not linked"):
            await world.enrollments.create_or_update("dev-1", anew, if_match)
    # A create makes every reference anew.
    with pytest.raises(ValidationError, match=r"'hub1\.example\.net' is not linked"):
        await world.enrollments.create_or_update("dev-1", anew, None)
    with pytest.raises(ValidationError, match=r"'hub1\.example\.net' is not linked"):
        await world.enrollments.create_or_update("dev-2", draft("dev-2", iot_hubs=(HUB,)), None)
    # A reference it keeps does not pass an etag that does not match.
    with pytest.raises(PreconditionFailed):
        await world.enrollments.create_or_update("dev-1", draft("dev-1", iot_hubs=(HUB,)), "stale")


async def test_a_group_naming_an_unlinked_hub_can_still_be_disabled(world: World) -> None:
    created = await world.groups.create_or_update(
        "fleet", symmetric_group("fleet", iot_hubs=(HUB,)), None
    )
    await world.hubs.unlink(HUB, force=True)
    disabled = symmetric_group("fleet", iot_hubs=(HUB,), provisioning_status=DISABLED)
    updated = await world.groups.create_or_update("fleet", disabled, created.etag)
    assert updated.settings.provisioning_status is DISABLED
    with pytest.raises(ValidationError, match="is not linked"):
        await world.groups.create_or_update(
            "other", symmetric_group("other", iot_hubs=(HUB,)), None
        )


async def test_a_group_whose_ca_certificate_is_gone_can_still_be_fixed(world: World) -> None:
    created = await world.groups.create_or_update("line-3", x509_group("line-3", "root"), None)
    await world.certificates.delete("root", force=True)
    disabled = x509_group("line-3", "ROOT", provisioning_status=DISABLED)
    updated = await world.groups.create_or_update("line-3", disabled, created.etag)
    assert updated.settings.provisioning_status is DISABLED
    again = await world.groups.create_or_update("line-3", x509_group("line-3", "root"), "*")
    assert again.settings.provisioning_status is ProvisioningStatus.ENABLED
    fixed = await world.groups.create_or_update("line-3", x509_group("line-3", "other-root"), "*")
    assert fixed.settings.attestation.x509 == X509Attestation(
        ca_references=X509CAReferences(primary="other-root")
    )
    with pytest.raises(InvalidAttestation, match="'root', which is not a CA certificate"):
        await world.groups.create_or_update("line-3", x509_group("line-3", "root"), "*")
    with pytest.raises(InvalidAttestation, match="'root', which is not a CA certificate"):
        await world.groups.create_or_update("line-4", x509_group("line-4", "root"), None)


async def test_a_group_may_not_reference_an_unverified_ca_anew(world: World) -> None:
    created = await world.groups.create_or_update("line-3", x509_group("line-3", "root"), None)
    unverified = issue(name("unverified"), serial=2, ca=True)
    await world.certificates.add("unverified", unverified.pem, verified=False)
    for if_match in (None, created.etag):
        with pytest.raises(InvalidAttestation, match="'unverified', which is not verified"):
            await world.groups.create_or_update(
                "line-3", x509_group("line-3", "unverified"), if_match
            )


def test_a_guarded_build_checks_the_record_it_is_given() -> None:
    """The stored record may change between the check and the write: the write is made at
    the etag of the record its build was given, and the build checks that one."""
    dangling = Dangling(((("hub", HUB), hub_not_linked(HUB)),))
    naming = draft("dev-1", iot_hubs=(HUB,))
    build = dangling.guard(lambda stored: naming)
    assert build(naming) is naming
    with pytest.raises(ValidationError, match="is not linked"):
        build(draft("dev-1"))
    with pytest.raises(ValidationError, match="is not linked"):
        build(None)
