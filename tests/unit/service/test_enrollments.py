"""Use cases for individual enrollments, on the in-memory repositories."""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    SymmetricKeyAttestation,
    TpmAttestation,
    X509Attestation,
    X509CAReferences,
    X509Certificates,
    X509CertificateWithInfo,
)
from dpsd.domain.enrollment import (
    AllocationPolicy,
    EnrollmentSettings,
    IndividualEnrollment,
    IndividualEnrollmentDraft,
    ProvisioningStatus,
)
from dpsd.domain.errors import (
    InvalidAttestation,
    InvalidCertificate,
    InvalidQuery,
    InvalidRegistrationId,
    ValidationError,
)
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import LinkedHub
from dpsd.domain.ids import id_key
from dpsd.domain.registration import DeviceRegistrationState, RegistrationStatus
from dpsd.domain.x509 import certificate_info, to_pem
from dpsd.service.enrollments import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    BulkMode,
    EnrollmentService,
)
from dpsd.service.errors import (
    BadRequest,
    EnrollmentAlreadyExists,
    EnrollmentNotFound,
    PreconditionFailed,
)
from dpsd.storage.memory import (
    InMemoryEnrollmentRepository,
    InMemoryHubRepository,
    InMemoryRegistrationStateRepository,
)
from tests.unit.support import FAST, Issued, issue, name

START = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


@dataclass
class FakeClock:
    """A clock that stands still until a test moves it."""

    moment: datetime = START

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: int = 1) -> None:
        self.moment += timedelta(seconds=seconds)


@dataclass
class FakeEntropy:
    """Deterministic, never-repeating bytes; remembers what was asked for."""

    requests: list[int] = field(default_factory=list)

    def random_bytes(self, count: int) -> bytes:
        self.requests.append(count)
        return hashlib.shake_256(len(self.requests).to_bytes(8, "big")).digest(count)


@dataclass
class World:
    service: EnrollmentService
    enrollments: InMemoryEnrollmentRepository
    states: InMemoryRegistrationStateRepository
    clock: FakeClock
    entropy: FakeEntropy


def make_world() -> World:
    enrollments = InMemoryEnrollmentRepository()
    states = InMemoryRegistrationStateRepository()
    clock = FakeClock()
    entropy = FakeEntropy()
    service = EnrollmentService(enrollments, states, clock, entropy, InMemoryHubRepository())
    return World(service, enrollments, states, clock, entropy)


@pytest.fixture
def world() -> World:
    return make_world()


@pytest.fixture
def service(world: World) -> EnrollmentService:
    return world.service


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


KEY_A = b64(b"a" * 32)
KEY_B = b64(b"b" * 32)


def draft(
    registration_id: str = "dev-1",
    *,
    attestation: AttestationMechanism | None = None,
    device_id: str | None = None,
    **settings: object,
) -> IndividualEnrollmentDraft:
    mechanism = attestation or AttestationMechanism(AttestationType.SYMMETRIC_KEY)
    return IndividualEnrollmentDraft(
        registration_id=registration_id,
        settings=EnrollmentSettings(attestation=mechanism, **settings),  # type: ignore[arg-type]
        device_id=device_id,
    )


def with_keys(primary: str | None, secondary: str | None) -> AttestationMechanism:
    return AttestationMechanism(
        AttestationType.SYMMETRIC_KEY,
        symmetric_key=SymmetricKeyAttestation(primary_key=primary, secondary_key=secondary),
    )


def keys_of(enrollment: IndividualEnrollment) -> SymmetricKeyAttestation:
    keys = enrollment.settings.attestation.symmetric_key
    assert keys is not None
    return keys


# --- create and update ---------------------------------------------------------------------


async def test_create_without_if_match(world: World) -> None:
    created = await world.service.create_or_update("dev-1", draft(), None)
    assert created.registration_id == "dev-1"
    assert created.created == created.last_updated == START
    assert created.registration_state is None
    assert created.etag
    assert await world.service.get("dev-1") == created


async def test_second_create_is_refused(service: EnrollmentService) -> None:
    first = await service.create_or_update("dev-1", draft(), None)
    with pytest.raises(EnrollmentAlreadyExists) as raised:
        await service.create_or_update("dev-1", draft(), None)
    assert raised.value.registration_id == "dev-1"
    assert await service.get("dev-1") == first


@pytest.mark.parametrize(
    "if_match",
    [
        pytest.param(lambda etag: etag, id="bare"),
        pytest.param(lambda etag: "*", id="wildcard"),
        pytest.param(lambda etag: '"*"', id="quoted wildcard"),
        pytest.param(lambda etag: f'"{etag}"', id="quoted"),
        pytest.param(lambda etag: f'W/"{etag}"', id="weak"),
        pytest.param(lambda etag: f"  {etag} ", id="blanks"),
    ],
)
async def test_update(world: World, if_match: Callable[[str], str]) -> None:
    created = await world.service.create_or_update("dev-1", draft(), None)
    world.clock.advance(60)
    header = if_match(created.etag)
    updated = await world.service.create_or_update(
        "dev-1", draft(provisioning_status=ProvisioningStatus.DISABLED), header
    )
    assert updated.etag != created.etag
    assert updated.created == START
    assert updated.last_updated == START + timedelta(seconds=60)
    assert updated.settings.provisioning_status == ProvisioningStatus.DISABLED
    assert await world.service.get("dev-1") == updated


async def test_stale_etag_is_refused(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", draft(), None)
    updated = await service.create_or_update("dev-1", draft(device_id="one"), created.etag)
    for stale in (created.etag, f'"{created.etag}"', "nonsense", ""):
        with pytest.raises(PreconditionFailed):
            await service.create_or_update("dev-1", draft(device_id="two"), stale)
    assert await service.get("dev-1") == updated


async def test_if_match_etag_on_a_missing_record_is_refused(service: EnrollmentService) -> None:
    with pytest.raises(PreconditionFailed):
        await service.create_or_update("dev-1", draft(), new_etag(bytes(16)))
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-1")


@pytest.mark.parametrize("wildcard", ["*", '"*"'])
async def test_if_match_wildcard_on_a_missing_record_creates(
    service: EnrollmentService, wildcard: str
) -> None:
    created = await service.create_or_update("dev-1", draft(), wildcard)
    assert created.created == created.last_updated == START
    assert await service.get("dev-1") == created


async def test_keys_are_generated_when_omitted(world: World) -> None:
    for registration_id, mechanism in (
        ("dev-1", AttestationMechanism(AttestationType.SYMMETRIC_KEY)),
        ("dev-2", with_keys(None, None)),
    ):
        created = await world.service.create_or_update(
            registration_id, draft(registration_id, attestation=mechanism), None
        )
        keys = keys_of(created)
        assert keys.primary_key is not None
        assert keys.secondary_key is not None
        assert len(base64.b64decode(keys.primary_key)) == 64
        assert len(base64.b64decode(keys.secondary_key)) == 64
        assert keys.primary_key != keys.secondary_key
        stored = await world.service.attestation_mechanism(registration_id)
        assert stored.symmetric_key == keys
    assert keys_of(await world.service.get("dev-1")) != keys_of(await world.service.get("dev-2"))
    assert 64 in world.entropy.requests


async def test_keys_given_are_kept(service: EnrollmentService) -> None:
    created = await service.create_or_update(
        "dev-1", draft(attestation=with_keys(KEY_A, KEY_B)), None
    )
    assert keys_of(created) == SymmetricKeyAttestation(primary_key=KEY_A, secondary_key=KEY_B)


async def test_one_key_given_the_other_generated(service: EnrollmentService) -> None:
    created = await service.create_or_update(
        "dev-1", draft(attestation=with_keys(KEY_A, None)), None
    )
    keys = keys_of(created)
    assert keys.primary_key == KEY_A
    assert keys.secondary_key is not None
    assert len(base64.b64decode(keys.secondary_key)) == 64


async def test_keys_are_kept_on_update_when_omitted(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", draft(), None)
    updated = await service.create_or_update("dev-1", draft(device_id="d"), created.etag)
    assert keys_of(updated) == keys_of(created)
    again = await service.create_or_update("dev-1", draft(attestation=with_keys(None, KEY_B)), "*")
    assert keys_of(again) == replace(keys_of(created), secondary_key=KEY_B)
    replaced = await service.create_or_update(
        "dev-1", draft(attestation=with_keys(KEY_A, KEY_B)), "*"
    )
    assert keys_of(replaced) == SymmetricKeyAttestation(primary_key=KEY_A, secondary_key=KEY_B)


async def test_keys_are_not_reused_across_a_change_of_type(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", draft(), None)
    tpm = AttestationMechanism(AttestationType.TPM, tpm=TpmAttestation(b64(b"ek")))
    as_tpm = await service.create_or_update("dev-1", draft(attestation=tpm), "*")
    assert as_tpm.settings.attestation == tpm
    back = await service.create_or_update("dev-1", draft(), "*")
    assert keys_of(back) != keys_of(created)


@pytest.mark.parametrize(
    "mechanism",
    [
        with_keys(b64(bytes(15)), None),
        with_keys(KEY_A, b64(bytes(65))),
        with_keys("not base64!", None),
        AttestationMechanism(AttestationType.NONE, symmetric_key=SymmetricKeyAttestation()),
        AttestationMechanism(AttestationType.TPM),
        AttestationMechanism(AttestationType.TPM, tpm=TpmAttestation("")),
        AttestationMechanism(AttestationType.X509),
        AttestationMechanism(
            AttestationType.X509,
            x509=X509Attestation(ca_references=X509CAReferences(primary="root")),
        ),
        AttestationMechanism(AttestationType.X509, x509=X509Attestation()),
    ],
)
async def test_bad_attestation_is_refused_and_nothing_stored(
    service: EnrollmentService, mechanism: AttestationMechanism
) -> None:
    with pytest.raises(InvalidAttestation):
        await service.create_or_update("dev-1", draft(attestation=mechanism), None)
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-1")


async def test_path_and_body_ids_must_match(service: EnrollmentService) -> None:
    with pytest.raises(ValidationError) as raised:
        await service.create_or_update("dev-1", draft("dev-2"), None)
    assert "'dev-1'" in raised.value.message
    assert "'dev-2'" in raised.value.message


async def test_ids_must_be_valid(service: EnrollmentService) -> None:
    with pytest.raises(InvalidRegistrationId, match="path"):
        await service.create_or_update("bad id", draft("bad id"), None)
    with pytest.raises(InvalidRegistrationId, match="registrationId"):
        await service.create_or_update("dev-1", draft("dev-1!"), None)
    for call in (service.get("-x"), service.delete("-x", None), service.attestation_mechanism("")):
        with pytest.raises(InvalidRegistrationId):
            await call


async def test_other_fields_are_validated(service: EnrollmentService) -> None:
    with pytest.raises(ValidationError, match="deviceId"):
        await service.create_or_update("dev-1", draft(device_id="has space"), None)
    with pytest.raises(ValidationError, match="customAllocationDefinition"):
        await service.create_or_update(
            "dev-1", draft(allocation_policy=AllocationPolicy.CUSTOM), None
        )


async def test_ids_are_case_insensitive(service: EnrollmentService) -> None:
    created = await service.create_or_update("Dev-1", draft("Dev-1"), None)
    fetched = await service.get("dev-1")
    assert fetched.registration_id == "Dev-1"
    assert fetched == created
    assert await service.get("DEV-1") == created
    with pytest.raises(EnrollmentAlreadyExists):
        await service.create_or_update("dev-1", draft("dev-1"), None)
    updated = await service.create_or_update("dev-1", draft("DEV-1"), created.etag)
    assert (await service.get("Dev-1")).etag == updated.etag
    await service.delete("dEV-1", updated.etag)
    with pytest.raises(EnrollmentNotFound):
        await service.get("Dev-1")


# --- x509 ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate() -> Issued:
    return issue(name("dev-1"), serial=42)


def x509_mechanism(
    entry: X509CertificateWithInfo, *, signing: bool = False
) -> AttestationMechanism:
    certificates = X509Certificates(primary=entry)
    x509 = (
        X509Attestation(signing_certificates=certificates)
        if signing
        else X509Attestation(client_certificates=certificates)
    )
    return AttestationMechanism(AttestationType.X509, x509=x509)


@pytest.mark.parametrize("signing", [False, True])
async def test_x509_info_is_computed_and_the_certificate_kept_on_echo(
    service: EnrollmentService, certificate: Issued, signing: bool
) -> None:
    sent = x509_mechanism(
        X509CertificateWithInfo(certificate=b64(certificate.der)), signing=signing
    )
    created = await service.create_or_update("dev-1", draft(attestation=sent), None)
    expected = X509CertificateWithInfo(
        certificate=to_pem(certificate.certificate), info=certificate_info(certificate.certificate)
    )
    assert created.settings.attestation == x509_mechanism(expected, signing=signing)

    # Clients PUT back what GET showed: only the info. The stored certificate stays.
    echoed = created.settings.attestation.without_secrets()
    updated = await service.create_or_update("dev-1", draft(attestation=echoed), created.etag)
    assert updated.settings.attestation == created.settings.attestation


async def test_x509_takes_exactly_one_kind_of_certificates(
    service: EnrollmentService, certificate: Issued
) -> None:
    entry = X509CertificateWithInfo(certificate=certificate.pem)
    both = AttestationMechanism(
        AttestationType.X509,
        x509=X509Attestation(
            client_certificates=X509Certificates(primary=entry),
            signing_certificates=X509Certificates(primary=entry),
        ),
    )
    with pytest.raises(InvalidAttestation, match="exactly one"):
        await service.create_or_update("dev-1", draft(attestation=both), None)
    garbage = x509_mechanism(X509CertificateWithInfo(certificate="garbage!"))
    with pytest.raises(InvalidCertificate):
        await service.create_or_update("dev-1", draft(attestation=garbage), None)


# --- get, attestation mechanism, delete ----------------------------------------------------


async def test_get_missing(service: EnrollmentService) -> None:
    with pytest.raises(EnrollmentNotFound) as raised:
        await service.get("dev-1")
    assert raised.value.registration_id == "dev-1"
    with pytest.raises(EnrollmentNotFound):
        await service.attestation_mechanism("dev-1")


async def test_get_includes_the_registration_state(world: World) -> None:
    created = await world.service.create_or_update("Dev-1", draft("Dev-1"), None)
    assert (await world.service.get("dev-1")).registration_state is None
    state = DeviceRegistrationState(
        registration_id="dev-1",
        status=RegistrationStatus.ASSIGNED,
        etag=new_etag(bytes(16)),
        created=START,
        last_updated=START,
        assigned_hub="hub.example",
        device_id="dev-1",
    )
    await world.states.put(state)
    fetched = await world.service.get("DEV-1")
    assert fetched.registration_state == state
    assert replace(fetched, registration_state=None) == created
    stored = await world.enrollments.get("dev-1")
    assert stored is not None
    assert stored.registration_state is None  # the state is joined on read, not stored


async def test_delete_without_if_match(service: EnrollmentService) -> None:
    await service.create_or_update("dev-1", draft(), None)
    await service.delete("dev-1", None)
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-1")


@pytest.mark.parametrize(
    "if_match",
    [
        pytest.param(lambda etag: etag, id="bare"),
        pytest.param(lambda etag: "*", id="wildcard"),
        pytest.param(lambda etag: f'"{etag}"', id="quoted"),
        pytest.param(lambda etag: f'W/"{etag}"', id="weak"),
    ],
)
async def test_delete_with_if_match(
    service: EnrollmentService, if_match: Callable[[str], str]
) -> None:
    created = await service.create_or_update("dev-1", draft(), None)
    await service.delete("dev-1", if_match(created.etag))
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-1")


async def test_delete_with_a_stale_etag_is_refused(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", draft(), None)
    updated = await service.create_or_update("dev-1", draft(), created.etag)
    with pytest.raises(PreconditionFailed):
        await service.delete("dev-1", created.etag)
    assert await service.get("dev-1") == updated


@pytest.mark.parametrize("if_match", [None, "*", new_etag(bytes(16))])
async def test_delete_missing(service: EnrollmentService, if_match: str | None) -> None:
    with pytest.raises(EnrollmentNotFound):
        await service.delete("dev-1", if_match)


# --- query ---------------------------------------------------------------------------------


async def create_all(service: EnrollmentService, ids: list[str], **settings: Any) -> None:
    for registration_id in ids:
        await service.create_or_update(registration_id, draft(registration_id, **settings), None)


async def read_all(
    service: EnrollmentService, text: str, page_size: int
) -> list[list[IndividualEnrollment]]:
    pages: list[list[IndividualEnrollment]] = []
    continuation: str | None = None
    while True:
        page = await service.query(text, continuation, page_size)
        assert page.page_size == page_size
        pages.append(page.items)
        assert len(pages) <= 100, "paging does not end"
        if page.continuation is None:
            return pages
        assert page.continuation.strip()
        continuation = page.continuation


ids_strategy = st.lists(
    st.text(alphabet="abcXYZ019", min_size=1, max_size=4).map(lambda text: f"d-{text}"),
    max_size=12,
    unique_by=id_key,
)


@FAST
@given(ids=ids_strategy, page_size=st.integers(min_value=1, max_value=5))
async def test_paging_covers_every_record_exactly_once(ids: list[str], page_size: int) -> None:
    service = make_world().service
    await create_all(service, ids)
    pages = await read_all(service, "SELECT * FROM enrollments", page_size)
    seen = [item.registration_id for page in pages for item in page]
    assert seen == sorted(ids, key=id_key)
    assert len(pages) == max(1, math.ceil(len(ids) / page_size))
    assert all(len(page) == page_size for page in pages[:-1])
    assert 0 < len(pages[-1]) <= page_size or not ids


@pytest.mark.parametrize("page_size", [1, 2, 3, 4, 5])
async def test_paging_with_a_filter(service: EnrollmentService, page_size: int) -> None:
    await create_all(service, [f"on-{index}" for index in range(4)])
    await create_all(
        service,
        [f"off-{index}" for index in range(5)],
        provisioning_status=ProvisioningStatus.DISABLED,
    )
    pages = await read_all(service, "SELECT * WHERE provisioningStatus = 'disabled'", page_size)
    seen = [item.registration_id for page in pages for item in page]
    assert seen == [f"off-{index}" for index in range(5)]


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("registrationId = 'B-2'", ["b-2"]),
        ("c.deviceId = null", ["a-1", "b-2"]),
        ("deviceId != null", ["c-3"]),
        ("deviceId != 'dc'", []),  # a missing value compares false either way
        ("NOT deviceId = 'dc'", ["a-1", "b-2"]),
        ("deviceId != 'x'", ["c-3"]),
        ("capabilities.iotEdge = false AND attestation.type = 'tpm'", []),
        ("capabilities.iotEdge = false AND NOT allocationPolicy = null", ["b-2"]),
        ("deviceId = 'dc' OR registrationId = 'a-1'", ["a-1", "c-3"]),
        ("allocationPolicy = 'static'", ["b-2"]),
    ],
)
async def test_query_filters(
    service: EnrollmentService, condition: str, expected: list[str]
) -> None:
    await service.hubs.add(LinkedHub(host_name="h.example", etag="e"))
    await create_all(service, ["a-1"])
    await create_all(
        service, ["b-2"], allocation_policy=AllocationPolicy.STATIC, iot_hubs=("h.example",)
    )
    await service.create_or_update("c-3", draft("c-3", device_id="dc"), None)
    page = await service.query(f"SELECT * WHERE {condition}", None, None)
    assert [item.registration_id for item in page.items] == expected


async def test_query_page_sizes(service: EnrollmentService) -> None:
    for asked, used in ((None, DEFAULT_PAGE_SIZE), (0, DEFAULT_PAGE_SIZE), (-3, DEFAULT_PAGE_SIZE)):
        assert (await service.query("SELECT *", None, asked)).page_size == used
    assert (await service.query("SELECT *", None, 10**6)).page_size == MAX_PAGE_SIZE
    assert (await service.query("SELECT *", None, 7)).page_size == 7


async def test_empty_query_result(service: EnrollmentService) -> None:
    page = await service.query("SELECT *", None, 5)
    assert page.items == []
    assert page.continuation is None


@pytest.mark.parametrize(
    "text", ["SELECT * FROM enrollmentGroups", "DROP TABLE", "SELECT * WHERE x = 'y'"]
)
async def test_bad_queries_are_refused(service: EnrollmentService, text: str) -> None:
    with pytest.raises(InvalidQuery):
        await service.query(text, None, None)


@pytest.mark.parametrize(
    "continuation",
    [
        "garbage",
        "!!!",
        "é",
        "e1:dev-1",  # not encoded
        base64.urlsafe_b64encode(b"x1:dev-1").decode(),
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),
        "abc",  # bad padding
    ],
)
async def test_garbage_continuation_is_a_bad_request(
    service: EnrollmentService, continuation: str
) -> None:
    await create_all(service, ["dev-1", "dev-2"])
    with pytest.raises(BadRequest, match="x-ms-continuation"):
        await service.query("SELECT *", continuation, 1)


# --- bulk ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "mode"),
    [
        ("create", BulkMode.CREATE),
        ("CREATE", BulkMode.CREATE),
        ("update", BulkMode.UPDATE),
        ("updateIfMatchETag", BulkMode.UPDATE_IF_MATCH_ETAG),
        ("updateIfMatchEtag", BulkMode.UPDATE_IF_MATCH_ETAG),  # Node's spelling
        ("Delete", BulkMode.DELETE),
    ],
)
def test_bulk_modes_match_case_insensitively(text: str, mode: BulkMode) -> None:
    assert BulkMode.parse(text) == mode


@pytest.mark.parametrize("text", ["", "upsert", "update-if-match-etag"])
def test_unknown_bulk_mode_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="bulk mode"):
        BulkMode.parse(text)


async def test_bulk_takes_one_to_ten_items(service: EnrollmentService) -> None:
    drafts = [draft(f"dev-{index}") for index in range(11)]
    with pytest.raises(ValidationError, match="at most 10"):
        await service.run_bulk_operation(BulkMode.CREATE, drafts, [None] * 11)
    with pytest.raises(ValidationError, match="at least one"):
        await service.run_bulk_operation(BulkMode.CREATE, [], [])
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-0")  # nothing was written
    assert await service.run_bulk_operation(BulkMode.CREATE, drafts[:10], [None] * 10) == []
    assert len((await service.query("SELECT *", None, None)).items) == 10


async def test_bulk_create_reports_each_failure(service: EnrollmentService) -> None:
    await service.create_or_update("dev-2", draft("dev-2"), None)
    drafts = [
        draft("dev-1"),
        draft("DEV-2"),
        draft("dev-3", attestation=with_keys(b64(bytes(8)), None)),
        draft("bad id"),
        draft("dev-5"),
    ]
    failures = await service.run_bulk_operation(BulkMode.CREATE, drafts, [None] * 5)
    assert [(failure.registration_id, type(failure.error)) for failure in failures] == [
        ("DEV-2", EnrollmentAlreadyExists),
        ("dev-3", InvalidAttestation),
        ("bad id", InvalidRegistrationId),
    ]
    for registration_id in ("dev-1", "dev-5"):
        assert (await service.get(registration_id)).registration_id == registration_id
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-3")


async def test_bulk_update_overwrites_or_creates(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", draft("dev-1"), None)
    drafts = [draft("dev-1", device_id="x"), draft("dev-2")]
    assert await service.run_bulk_operation(BulkMode.UPDATE, drafts, [None, None]) == []
    updated = await service.get("dev-1")
    assert updated.device_id == "x"
    assert updated.etag != created.etag
    assert keys_of(updated) == keys_of(created)
    await service.get("dev-2")


async def test_bulk_update_if_match_etag(service: EnrollmentService) -> None:
    one = await service.create_or_update("dev-1", draft("dev-1"), None)
    two = await service.create_or_update("dev-2", draft("dev-2"), None)
    three = await service.create_or_update("dev-3", draft("dev-3"), None)
    disabled = ProvisioningStatus.DISABLED
    drafts = [
        draft(item.registration_id, provisioning_status=disabled) for item in (one, two, three)
    ]
    drafts.append(draft("dev-4", provisioning_status=disabled))
    failures = await service.run_bulk_operation(
        BulkMode.UPDATE_IF_MATCH_ETAG, drafts, [one.etag, None, "stale", None]
    )
    assert [(failure.registration_id, type(failure.error)) for failure in failures] == [
        ("dev-2", ValidationError),
        ("dev-3", PreconditionFailed),
        ("dev-4", ValidationError),
    ]
    assert "etag" in failures[0].error.message
    assert (await service.get("dev-1")).settings.provisioning_status == ProvisioningStatus.DISABLED
    assert await service.get("dev-2") == two
    assert await service.get("dev-3") == three
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-4")


async def test_bulk_delete(service: EnrollmentService) -> None:
    await create_all(service, ["dev-1", "dev-3"])
    failures = await service.run_bulk_operation(
        BulkMode.DELETE, [draft("dev-1"), draft("dev-2"), draft("DEV-3")], [None, None, None]
    )
    assert [(failure.registration_id, type(failure.error)) for failure in failures] == [
        ("dev-2", EnrollmentNotFound)
    ]
    assert (await service.query("SELECT *", None, None)).items == []


async def test_enrollments_name_only_linked_hubs(service: EnrollmentService) -> None:
    with pytest.raises(ValidationError, match=r"'elsewhere\.example' is not linked"):
        await service.create_or_update(
            "d-1", draft("d-1", iot_hub_host_name="elsewhere.example"), None
        )
    assert await service.enrollments.get("d-1") is None


# --- updates that need nothing of the stored record but its creation time -------------------


def keyed(registration_id: str = "dev-1", **settings: object) -> IndividualEnrollmentDraft:
    return draft(registration_id, attestation=with_keys(KEY_A, KEY_B), **settings)


class CountingEnrollments(InMemoryEnrollmentRepository):
    """Counts reads, so that a test sees which updates went without one."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    async def get(self, record_id: str) -> IndividualEnrollment | None:
        self.reads += 1
        return await super().get(record_id)


@pytest.mark.parametrize("header", ["etag", "*", '"*"', '"etag"', 'W/"etag"'])
async def test_an_update_with_both_keys_writes_without_reading_first(
    world: World, header: str
) -> None:
    counting = CountingEnrollments()
    service = replace(world.service, enrollments=counting)
    created = await service.create_or_update("dev-1", keyed(), None)
    world.clock.advance(60)
    counting.reads = 0
    updated = await service.create_or_update(
        "DEV-1",
        keyed(provisioning_status=ProvisioningStatus.DISABLED),
        header.replace("etag", created.etag),
    )
    assert counting.reads == 0
    assert updated.created == START
    assert updated.last_updated == START + timedelta(seconds=60)
    assert updated.etag != created.etag
    assert updated.settings.attestation == with_keys(KEY_A, KEY_B)
    assert await service.get("dev-1") == updated


async def test_an_unread_update_honours_the_etag(service: EnrollmentService) -> None:
    created = await service.create_or_update("dev-1", keyed(), None)
    with pytest.raises(PreconditionFailed):
        await service.create_or_update("dev-1", keyed(device_id="two"), "stale")
    with pytest.raises(PreconditionFailed):
        await service.create_or_update("dev-2", keyed("dev-2"), created.etag)
    assert await service.get("dev-1") == created
    with pytest.raises(EnrollmentNotFound):
        await service.get("dev-2")


async def test_an_unread_update_under_a_wildcard_creates_a_missing_record(
    service: EnrollmentService,
) -> None:
    created = await service.create_or_update("dev-1", keyed(), "*")
    assert created.created == created.last_updated == START
    assert await service.get("dev-1") == created


async def test_a_stale_etag_is_reported_before_a_bad_key(service: EnrollmentService) -> None:
    await service.create_or_update("dev-1", keyed(), None)
    bad = draft(attestation=with_keys("not base64!", KEY_B))
    with pytest.raises(PreconditionFailed):
        await service.create_or_update("dev-1", bad, "stale")
    with pytest.raises(InvalidAttestation):
        await service.create_or_update("dev-1", bad, "*")
