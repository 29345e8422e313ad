"""Use cases for individual enrollments: create or update, read, delete, query, bulk."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dpsd.domain.attestation import AttestationMechanism, check_consistent, completes_alone
from dpsd.domain.enrollment import (
    IndividualEnrollment,
    IndividualEnrollmentDraft,
    check_device_id,
    check_settings,
)
from dpsd.domain.errors import DomainError, InvalidAttestation, InvalidQuery, ValidationError
from dpsd.domain.etag import WILDCARD, new_etag
from dpsd.domain.ids import id_key, validate_registration_id
from dpsd.domain.query import ENROLLMENT_QUERY_FIELDS, parse_query
from dpsd.service import records
from dpsd.service.attestation import complete_attestation
from dpsd.service.errors import EnrollmentAlreadyExists, EnrollmentNotFound, ServiceError
from dpsd.service.ports import (
    Clock,
    EnrollmentRepository,
    Entropy,
    HubRepository,
    NoTrust,
    RegistrationStateRepository,
    TrustedCertificates,
)
from dpsd.service.records import (
    DEFAULT_PAGE_SIZE,
    MAX_BULK_ITEMS,
    MAX_PAGE_SIZE,
    BulkMode,
    Page,
)
from dpsd.service.references import dangling_hubs, named_hubs
from dpsd.service.x509_trust import attestation_certificates

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_BULK_ITEMS",
    "MAX_PAGE_SIZE",
    "BulkItemFailure",
    "BulkMode",
    "EnrollmentService",
    "Page",
]

_PAGING_KIND = "e1"


@dataclass(frozen=True, slots=True)
class BulkItemFailure:
    registration_id: str
    error: DomainError | ServiceError


@dataclass(frozen=True, slots=True)
class EnrollmentService:
    enrollments: EnrollmentRepository
    registration_states: RegistrationStateRepository
    clock: Clock
    entropy: Entropy
    hubs: HubRepository
    trust: TrustedCertificates = field(default_factory=NoTrust)

    async def create_or_update(
        self, path_id: str, draft: IndividualEnrollmentDraft, if_match: str | None
    ) -> IndividualEnrollment:
        """PUT /enrollments/{id}: create without If-Match, otherwise update at that etag."""
        check_draft(path_id, draft)

        def build(stored: IndividualEnrollment | None) -> IndividualEnrollment:
            now = self.clock.now()
            attestation = complete_attestation(
                draft.settings.attestation,
                stored.settings.attestation if stored else None,
                self.entropy,
            )
            settings = draft.settings
            if attestation is not settings.attestation:
                settings = replace(settings, attestation=attestation)
            return IndividualEnrollment(
                registration_id=draft.registration_id,
                settings=settings,
                etag=new_etag(self.entropy.random_bytes(16)),
                created=stored.created if stored else now,
                last_updated=now,
                device_id=draft.device_id,
                optional_device_information=draft.optional_device_information,
            )

        written = None
        if if_match is None or completes_alone(draft.settings.attestation):
            hubs = named_hubs(draft.settings)
            written = await records.write_unread(
                self.enrollments, if_match, build, hubs, _already_exists
            )
        if written is None:
            dangling = await dangling_hubs(self.hubs, draft.settings)
            await dangling.refuse_new(self.enrollments.get, path_id, if_match)
            written = await records.create_or_update(
                self.enrollments,
                path_id,
                if_match,
                dangling.guard(build),
                lambda: EnrollmentAlreadyExists(draft.registration_id),
            )
        self.trust.trust(attestation_certificates(written.settings.attestation))
        return written

    async def get(self, registration_id: str) -> IndividualEnrollment:
        """GET /enrollments/{id}, with the device's registration state when there is one."""
        enrollment = await self._require(registration_id)
        state = await self.registration_states.get(registration_id)
        return replace(enrollment, registration_state=state)

    async def attestation_mechanism(self, registration_id: str) -> AttestationMechanism:
        return (await self._require(registration_id)).settings.attestation

    async def delete(self, registration_id: str, if_match: str | None) -> None:
        """The device's registration state goes with its individual enrollment."""
        validate_registration_id(registration_id, what="id")
        await records.delete(
            self.enrollments,
            registration_id,
            if_match,
            lambda: EnrollmentNotFound(registration_id),
        )
        await self.registration_states.delete(registration_id, expected_etag=None)

    async def query(
        self, text: str, continuation: str | None, max_items: int | None
    ) -> Page[IndividualEnrollment]:
        query = parse_query(text, ENROLLMENT_QUERY_FIELDS)
        if query.source not in (None, "enrollments"):
            raise InvalidQuery(f"enrollment queries read FROM enrollments, not {query.source!r}")
        return await records.read_page(
            _PAGING_KIND,
            continuation,
            max_items,
            lambda after, limit: self.enrollments.query(query.where, after=after, limit=limit),
            lambda item: id_key(item.registration_id),
        )

    async def run_bulk_operation(
        self, mode: BulkMode, drafts: list[IndividualEnrollmentDraft], etags: list[str | None]
    ) -> list[BulkItemFailure]:
        """POST /enrollments: each item succeeds or fails on its own."""
        if not drafts:
            raise ValidationError("a bulk operation needs at least one enrollment")
        if len(drafts) > MAX_BULK_ITEMS:
            raise ValidationError(
                f"a bulk operation takes at most {MAX_BULK_ITEMS} enrollments; got {len(drafts)}"
            )
        failures: list[BulkItemFailure] = []
        for draft, etag in zip(drafts, etags, strict=True):
            try:
                await self._bulk_item(mode, draft, etag)
            except (DomainError, ServiceError) as error:
                failures.append(BulkItemFailure(draft.registration_id, error))
        return failures

    async def _bulk_item(
        self, mode: BulkMode, draft: IndividualEnrollmentDraft, etag: str | None
    ) -> None:
        match mode:
            case BulkMode.CREATE:
                await self.create_or_update(draft.registration_id, draft, None)
            case BulkMode.UPDATE:
                await self.create_or_update(draft.registration_id, draft, WILDCARD)
            case BulkMode.UPDATE_IF_MATCH_ETAG:
                if not etag:
                    raise ValidationError("mode updateIfMatchETag needs each enrollment's etag")
                await self.create_or_update(draft.registration_id, draft, etag)
            case BulkMode.DELETE:
                await self.delete(draft.registration_id, None)

    async def _require(self, registration_id: str) -> IndividualEnrollment:
        validate_registration_id(registration_id, what="id")
        enrollment = await self.enrollments.get(registration_id)
        if enrollment is None:
            raise EnrollmentNotFound(registration_id)
        return enrollment


def _already_exists(enrollment: IndividualEnrollment) -> EnrollmentAlreadyExists:
    return EnrollmentAlreadyExists(enrollment.registration_id)


def check_draft(path_id: str, draft: IndividualEnrollmentDraft) -> None:
    """What the service checks of an individual enrollment before it reads the store (also what
    ``dpsd import --dry-run`` checks of each record)."""
    validate_registration_id(path_id, what="id in the path")
    validate_registration_id(draft.registration_id)
    if id_key(path_id) != id_key(draft.registration_id):
        raise ValidationError(
            f"registrationId {draft.registration_id!r} in the body does not match "
            f"the id {path_id!r} in the path"
        )
    if draft.device_id is not None:
        check_device_id(draft.device_id)
    attestation = draft.settings.attestation
    check_consistent(attestation)
    x509 = attestation.x509
    if x509 is not None:
        if x509.ca_references is not None:
            raise InvalidAttestation(
                "individual enrollments take x509.clientCertificates or "
                "x509.signingCertificates; caReferences belong to enrollment groups"
            )
        if (x509.client_certificates is None) == (x509.signing_certificates is None):
            raise InvalidAttestation(
                "x509 takes exactly one of clientCertificates and signingCertificates"
            )
    check_settings(draft.settings)
