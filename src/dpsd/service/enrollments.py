"""Use cases for individual enrollments: create or update, read, delete, query, bulk."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, replace
from datetime import datetime

from dpsd.domain.attestation import (
    GENERATED_SYMMETRIC_KEY_BYTES,
    AttestationMechanism,
    AttestationType,
    X509Attestation,
    check_consistent,
    check_tpm,
    complete_certificates,
    complete_symmetric_key,
)
from dpsd.domain.enrollment import (
    IndividualEnrollment,
    IndividualEnrollmentDraft,
    check_device_id,
    check_settings,
)
from dpsd.domain.errors import DomainError, InvalidAttestation, InvalidQuery, ValidationError
from dpsd.domain.etag import WILDCARD, new_etag, normalize_if_match
from dpsd.domain.ids import id_key, validate_registration_id
from dpsd.domain.query import ENROLLMENT_QUERY_FIELDS, parse_query
from dpsd.service.errors import (
    BadRequest,
    EnrollmentAlreadyExists,
    EnrollmentNotFound,
    PreconditionFailed,
    ServiceError,
)
from dpsd.service.ports import Clock, EnrollmentRepository, Entropy, RegistrationStateRepository

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
MAX_BULK_ITEMS = 10
_WILDCARD_RETRIES = 5
_CONTINUATION_PREFIX = "e1:"


class BulkMode(enum.StrEnum):
    CREATE = "create"
    UPDATE = "update"
    UPDATE_IF_MATCH_ETAG = "updateIfMatchETag"
    DELETE = "delete"

    @classmethod
    def parse(cls, text: str) -> BulkMode:
        for mode in cls:
            if mode.value.lower() == text.lower():
                return mode
        raise ValidationError(
            f"bulk mode {text!r} is not one of {', '.join(mode.value for mode in cls)}"
        )


@dataclass(frozen=True, slots=True)
class Page:
    items: list[IndividualEnrollment]
    continuation: str | None
    page_size: int


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

    async def create_or_update(
        self, path_id: str, draft: IndividualEnrollmentDraft, if_match: str | None
    ) -> IndividualEnrollment:
        """PUT /enrollments/{id}: create without If-Match, otherwise update at that etag."""
        _check_draft(path_id, draft)
        if if_match is None:
            return await self._create(draft)
        wanted = normalize_if_match(if_match)
        for _ in range(_WILDCARD_RETRIES):
            current = await self.enrollments.get(path_id)
            if current is None:
                if wanted != WILDCARD:
                    raise PreconditionFailed(path_id)
                try:
                    return await self._create(draft)
                except EnrollmentAlreadyExists:
                    continue
            if wanted not in (WILDCARD, current.etag):
                raise PreconditionFailed(path_id)
            enrollment = self._build(draft, current, created=current.created, now=self.clock.now())
            if await self.enrollments.replace(enrollment, expected_etag=current.etag):
                return enrollment
            if wanted != WILDCARD:
                raise PreconditionFailed(path_id)
        raise PreconditionFailed(path_id)

    async def _create(self, draft: IndividualEnrollmentDraft) -> IndividualEnrollment:
        now = self.clock.now()
        enrollment = self._build(draft, None, created=now, now=now)
        if not await self.enrollments.add(enrollment):
            raise EnrollmentAlreadyExists(draft.registration_id)
        return enrollment

    def _build(
        self,
        draft: IndividualEnrollmentDraft,
        stored: IndividualEnrollment | None,
        *,
        created: datetime,
        now: datetime,
    ) -> IndividualEnrollment:
        attestation = self._complete_attestation(
            draft.settings.attestation, stored.settings.attestation if stored else None
        )
        return IndividualEnrollment(
            registration_id=draft.registration_id,
            settings=replace(draft.settings, attestation=attestation),
            etag=new_etag(self.entropy.random_bytes(16)),
            created=created,
            last_updated=now,
            device_id=draft.device_id,
            optional_device_information=draft.optional_device_information,
        )

    def _complete_attestation(
        self, given: AttestationMechanism, stored: AttestationMechanism | None
    ) -> AttestationMechanism:
        same_kind = stored if stored is not None and stored.type == given.type else None
        match given.type:
            case AttestationType.SYMMETRIC_KEY:
                keys = complete_symmetric_key(
                    given.symmetric_key,
                    same_kind.symmetric_key if same_kind else None,
                    self.entropy.random_bytes(GENERATED_SYMMETRIC_KEY_BYTES),
                    self.entropy.random_bytes(GENERATED_SYMMETRIC_KEY_BYTES),
                )
                return replace(given, symmetric_key=keys)
            case AttestationType.X509:
                assert given.x509 is not None
                stored_x509 = same_kind.x509 if same_kind else None
                return replace(given, x509=_complete_x509(given.x509, stored_x509))
            case AttestationType.TPM:
                assert given.tpm is not None
                check_tpm(given.tpm)
                return given
            case AttestationType.NONE:
                return given

    async def get(self, registration_id: str) -> IndividualEnrollment:
        """GET /enrollments/{id}, with the device's registration state when there is one."""
        enrollment = await self._require(registration_id)
        state = await self.registration_states.get(registration_id)
        return replace(enrollment, registration_state=state)

    async def attestation_mechanism(self, registration_id: str) -> AttestationMechanism:
        return (await self._require(registration_id)).settings.attestation

    async def delete(self, registration_id: str, if_match: str | None) -> None:
        validate_registration_id(registration_id, what="id")
        wanted = normalize_if_match(if_match) if if_match is not None else WILDCARD
        expected = None if wanted == WILDCARD else wanted
        if await self.enrollments.delete(registration_id, expected_etag=expected):
            return
        if expected is not None and await self.enrollments.get(registration_id) is not None:
            raise PreconditionFailed(registration_id)
        raise EnrollmentNotFound(registration_id)

    async def query(self, text: str, continuation: str | None, max_items: int | None) -> Page:
        query = parse_query(text, ENROLLMENT_QUERY_FIELDS)
        if query.source not in (None, "enrollments"):
            raise InvalidQuery(f"enrollment queries read FROM enrollments, not {query.source!r}")
        page_size = _page_size(max_items)
        after = _decode_continuation(continuation) if continuation else None
        rows = await self.enrollments.query(query.where, after=after, limit=page_size + 1)
        items = rows[:page_size]
        more = len(rows) > page_size
        token = _encode_continuation(id_key(items[-1].registration_id)) if more else None
        return Page(items=items, continuation=token, page_size=page_size)

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


def _check_draft(path_id: str, draft: IndividualEnrollmentDraft) -> None:
    validate_registration_id(path_id, what="id in the path")
    validate_registration_id(draft.registration_id)
    if id_key(path_id) != id_key(draft.registration_id):
        raise ValidationError(
            f"registrationId {draft.registration_id!r} in the body does not match "
            f"the id {path_id!r} in the path"
        )
    if draft.device_id is not None:
        check_device_id(draft.device_id)
    check_consistent(draft.settings.attestation)
    check_settings(draft.settings)


def _complete_x509(given: X509Attestation, stored: X509Attestation | None) -> X509Attestation:
    if given.ca_references is not None:
        raise InvalidAttestation(
            "individual enrollments take x509.clientCertificates or x509.signingCertificates; "
            "caReferences belong to enrollment groups"
        )
    if (given.client_certificates is None) == (given.signing_certificates is None):
        raise InvalidAttestation(
            "x509 takes exactly one of clientCertificates and signingCertificates"
        )
    if given.client_certificates is not None:
        return X509Attestation(
            client_certificates=complete_certificates(
                given.client_certificates,
                stored.client_certificates if stored else None,
                field="clientCertificates",
            )
        )
    assert given.signing_certificates is not None
    return X509Attestation(
        signing_certificates=complete_certificates(
            given.signing_certificates,
            stored.signing_certificates if stored else None,
            field="signingCertificates",
        )
    )


def _page_size(max_items: int | None) -> int:
    if max_items is None or max_items <= 0:
        return DEFAULT_PAGE_SIZE
    return min(max_items, MAX_PAGE_SIZE)


def _encode_continuation(last_key: str) -> str:
    return base64.urlsafe_b64encode((_CONTINUATION_PREFIX + last_key).encode()).decode()


def _decode_continuation(token: str) -> str:
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeError) as error:
        raise BadRequest("x-ms-continuation is not a token this service issued") from error
    if not text.startswith(_CONTINUATION_PREFIX):
        raise BadRequest("x-ms-continuation is not a token this service issued")
    return text[len(_CONTINUATION_PREFIX) :]
