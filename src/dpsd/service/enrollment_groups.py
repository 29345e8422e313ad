"""Use cases for enrollment groups: create or update, read, delete, query, bulk."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    check_consistent,
    completes_alone,
)
from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment import check_settings
from dpsd.domain.enrollment_group import (
    EnrollmentGroup,
    EnrollmentGroupDraft,
    check_group_attestation,
)
from dpsd.domain.errors import DomainError, InvalidAttestation, InvalidQuery, ValidationError
from dpsd.domain.etag import WILDCARD, new_etag, normalize_if_match
from dpsd.domain.ids import id_key, validate_registration_id
from dpsd.domain.query import ENROLLMENT_GROUP_QUERY_FIELDS, parse_query
from dpsd.service import records
from dpsd.service.attestation import complete_attestation
from dpsd.service.errors import (
    EnrollmentGroupAlreadyExists,
    EnrollmentGroupNotFound,
    ServiceError,
)
from dpsd.service.ports import (
    CertificateRepository,
    Clock,
    EnrollmentGroupRepository,
    Entropy,
    HubRepository,
    NoTrust,
    TrustedCertificates,
)
from dpsd.service.records import BulkMode, Page
from dpsd.service.references import Dangling, Reference, dangling_hubs, named_hubs
from dpsd.service.x509_trust import attestation_certificates

MAX_GROUPS_PER_ATTESTATION = 100
_PAGING_KIND = "g1"


@dataclass(frozen=True, slots=True)
class BulkGroupFailure:
    enrollment_group_id: str
    error: DomainError | ServiceError


@dataclass(frozen=True, slots=True)
class EnrollmentGroupService:
    groups: EnrollmentGroupRepository
    certificates: CertificateRepository
    clock: Clock
    entropy: Entropy
    hubs: HubRepository
    trust: TrustedCertificates = field(default_factory=NoTrust)

    async def create_or_update(
        self, path_id: str, draft: EnrollmentGroupDraft, if_match: str | None
    ) -> EnrollmentGroup:
        """PUT /enrollmentGroups/{id}: the same etag rules as individual enrollments."""
        check_draft(path_id, draft)
        referenced, dangling = await self._ca_references(draft.settings.attestation)

        def build(stored: EnrollmentGroup | None) -> EnrollmentGroup:
            now = self.clock.now()
            attestation = complete_attestation(
                draft.settings.attestation,
                stored.settings.attestation if stored else None,
                self.entropy,
            )
            return EnrollmentGroup(
                enrollment_group_id=draft.enrollment_group_id,
                settings=replace(draft.settings, attestation=attestation),
                etag=new_etag(self.entropy.random_bytes(16)),
                created=stored.created if stored else now,
                last_updated=now,
            )

        written = None
        if not dangling and await self._may_write_unread(draft, if_match):
            hubs = named_hubs(draft.settings)
            written = await records.write_unread(
                self.groups, if_match, build, hubs, _already_exists
            )
        if written is None:
            dangling += await dangling_hubs(self.hubs, draft.settings)
            await dangling.refuse_new(self.groups.get, path_id, if_match)
            if if_match is None or normalize_if_match(if_match) == WILDCARD:
                await self._check_group_limit(draft)
            written = await records.create_or_update(
                self.groups,
                path_id,
                if_match,
                dangling.guard(build),
                lambda: EnrollmentGroupAlreadyExists(draft.enrollment_group_id),
            )
        self.trust.trust([*attestation_certificates(written.settings.attestation), *referenced])
        return written

    async def _may_write_unread(self, draft: EnrollmentGroupDraft, if_match: str | None) -> bool:
        """Whether records.write_unread may try the PUT: a create only within the group
        limit (checked here, since the one statement does not count), an update only when
        it keeps nothing of the stored group (an overwrite never creates, so never passes
        the limit)."""
        if if_match is None:
            return await self._within_group_limit(draft)
        return completes_alone(draft.settings.attestation)

    async def _ca_references(self, attestation: AttestationMechanism) -> tuple[list[str], Dangling]:
        """The referenced CA certificates (PEM) that are registered and verified, and the
        references to any that are not."""
        references = attestation.x509.ca_references if attestation.x509 else None
        if references is None:
            return [], Dangling()
        found: list[str] = []
        problems: list[tuple[Reference, DomainError]] = []
        for slot, name in (("primary", references.primary), ("secondary", references.secondary)):
            if name is None:
                continue
            certificate = await self.certificates.get(name)
            if certificate is not None and certificate.is_verified:
                found.append(certificate.certificate)
            else:
                problems.append((("ca", id_key(name)), _unusable_ca(slot, name, certificate)))
        return found, Dangling(tuple(problems))

    async def _check_group_limit(self, draft: EnrollmentGroupDraft) -> None:
        if not await self._within_group_limit(draft):
            kind = draft.settings.attestation.type
            label = "symmetric-key" if kind == AttestationType.SYMMETRIC_KEY else "X.509"
            raise ValidationError(
                f"the service holds {MAX_GROUPS_PER_ATTESTATION} {label} enrollment groups, "
                "its limit; delete one first"
            )

    async def _within_group_limit(self, draft: EnrollmentGroupDraft) -> bool:
        """Whether writing the group keeps the service within its limit of groups per
        attestation type: it exists already, or fewer than the limit share its type."""
        if await self.groups.get(draft.enrollment_group_id) is not None:
            return True
        kind = draft.settings.attestation.type
        where = parse_query(
            f"SELECT * WHERE attestation.type = '{kind.value}'", ENROLLMENT_GROUP_QUERY_FIELDS
        ).where
        existing = await self.groups.query(where, after=None, limit=MAX_GROUPS_PER_ATTESTATION)
        return len(existing) < MAX_GROUPS_PER_ATTESTATION

    async def get(self, enrollment_group_id: str) -> EnrollmentGroup:
        validate_registration_id(enrollment_group_id, what="id")
        group = await self.groups.get(enrollment_group_id)
        if group is None:
            raise EnrollmentGroupNotFound(enrollment_group_id)
        return group

    async def attestation_mechanism(self, enrollment_group_id: str) -> AttestationMechanism:
        return (await self.get(enrollment_group_id)).settings.attestation

    async def delete(self, enrollment_group_id: str, if_match: str | None) -> None:
        """Registration states of the group's devices stay, as records of what happened."""
        validate_registration_id(enrollment_group_id, what="id")
        await records.delete(
            self.groups,
            enrollment_group_id,
            if_match,
            lambda: EnrollmentGroupNotFound(enrollment_group_id),
        )

    async def query(
        self, text: str, continuation: str | None, max_items: int | None
    ) -> Page[EnrollmentGroup]:
        query = parse_query(text, ENROLLMENT_GROUP_QUERY_FIELDS)
        if query.source not in (None, "enrollmentgroups"):
            raise InvalidQuery(
                f"enrollment group queries read FROM enrollmentGroups, not {query.source!r}"
            )
        return await records.read_page(
            _PAGING_KIND,
            continuation,
            max_items,
            lambda after, limit: self.groups.query(query.where, after=after, limit=limit),
            lambda item: id_key(item.enrollment_group_id),
        )

    async def run_bulk_operation(
        self, mode: BulkMode, drafts: list[EnrollmentGroupDraft], etags: list[str | None]
    ) -> list[BulkGroupFailure]:
        if not drafts:
            raise ValidationError("a bulk operation needs at least one enrollment group")
        if len(drafts) > records.MAX_BULK_ITEMS:
            raise ValidationError(
                f"a bulk operation takes at most {records.MAX_BULK_ITEMS} enrollment groups; "
                f"got {len(drafts)}"
            )
        failures: list[BulkGroupFailure] = []
        for draft, etag in zip(drafts, etags, strict=True):
            try:
                await self._bulk_item(mode, draft, etag)
            except (DomainError, ServiceError) as error:
                failures.append(BulkGroupFailure(draft.enrollment_group_id, error))
        return failures

    async def _bulk_item(
        self, mode: BulkMode, draft: EnrollmentGroupDraft, etag: str | None
    ) -> None:
        match mode:
            case BulkMode.CREATE:
                await self.create_or_update(draft.enrollment_group_id, draft, None)
            case BulkMode.UPDATE:
                await self.create_or_update(draft.enrollment_group_id, draft, WILDCARD)
            case BulkMode.UPDATE_IF_MATCH_ETAG:
                if not etag:
                    raise ValidationError("mode updateIfMatchETag needs each group's etag")
                await self.create_or_update(draft.enrollment_group_id, draft, etag)
            case BulkMode.DELETE:
                await self.delete(draft.enrollment_group_id, None)


def _unusable_ca(slot: str, name: str, certificate: CACertificate | None) -> InvalidAttestation:
    if certificate is None:
        return InvalidAttestation(
            f"x509.caReferences.{slot} names {name!r}, which is not a CA certificate "
            "registered with this service (dpsd certificate list)"
        )
    return InvalidAttestation(
        f"x509.caReferences.{slot} names CA certificate {name!r}, which is not "
        "verified: prove possession of its key first (dpsd certificate verify)"
    )


def _already_exists(group: EnrollmentGroup) -> EnrollmentGroupAlreadyExists:
    return EnrollmentGroupAlreadyExists(group.enrollment_group_id)


def check_draft(path_id: str, draft: EnrollmentGroupDraft) -> None:
    """What the service checks of an enrollment group before it reads the store (also what
    ``dpsd import --dry-run`` checks of each record)."""
    validate_registration_id(path_id, what="id in the path")
    validate_registration_id(draft.enrollment_group_id, what="enrollmentGroupId")
    if id_key(path_id) != id_key(draft.enrollment_group_id):
        raise ValidationError(
            f"enrollmentGroupId {draft.enrollment_group_id!r} in the body does not match "
            f"the id {path_id!r} in the path"
        )
    check_consistent(draft.settings.attestation)
    check_group_attestation(draft.settings.attestation)
    check_settings(draft.settings)
