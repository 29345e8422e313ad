"""Handlers of the service API (api-version 2021-10-01): individual enrollments and
enrollment groups, two kinds of one shape (RecordKind) served by ProvisioningRecords, and
device registration states; each through http.records (the record, plus its own actions)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from dpsd.domain.attestation import AttestationMechanism, AttestationType
from dpsd.domain.enrollment import IndividualEnrollment, IndividualEnrollmentDraft
from dpsd.domain.enrollment_group import EnrollmentGroup, EnrollmentGroupDraft
from dpsd.domain.errors import DomainError, ValidationError
from dpsd.domain.sas import AccessRights
from dpsd.http.bodies import read_json
from dpsd.http.errors import InvalidHeader, status_and_code
from dpsd.http.exchange import HttpRequest, HttpResponse, json_response
from dpsd.http.records import Delete, Params, Read, RecordHandlers, Write
from dpsd.http.routing import Route
from dpsd.service.enrollment_groups import BulkGroupFailure
from dpsd.service.enrollments import BulkItemFailure
from dpsd.service.errors import ServiceError
from dpsd.service.records import BulkMode, Page
from dpsd.service.registration_states import RegistrationStateService
from dpsd.wire import (
    AttestationWire,
    BulkEnrollmentGroupOperationWire,
    BulkEnrollmentOperationWire,
    BulkErrorWire,
    BulkGroupErrorWire,
    BulkGroupResultWire,
    BulkResultWire,
    Disclosure,
    EnrollmentGroupWire,
    IndividualEnrollmentWire,
    QuerySpecificationWire,
    attestation_to_wire,
    enrollment_to_draft,
    enrollment_to_wire,
    group_to_draft,
    group_to_wire,
    registration_state_to_wire,
)

W = TypeVar("W", IndividualEnrollmentWire, EnrollmentGroupWire)
D = TypeVar("D")
Rec = TypeVar("Rec")
F = TypeVar("F")
F_co = TypeVar("F_co", covariant=True)


def _max_item_count(request: HttpRequest) -> int | None:
    value = request.headers.get("x-ms-max-item-count")
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidHeader(f"x-ms-max-item-count must be an integer, not {value!r}") from None


def _continuation(request: HttpRequest) -> str | None:
    return request.headers.get("x-ms-continuation") or None


def _page_response(
    items: Sequence[object], item_type: str, page_size: int, continuation: str | None
) -> HttpResponse:
    """A query page: a bare JSON array; the continuation header only when more follow."""
    headers = {"x-ms-item-type": item_type, "x-ms-max-item-count": str(page_size)}
    if continuation is not None:
        headers["x-ms-continuation"] = continuation
    return json_response(items, headers=headers)


async def _query_text(request: HttpRequest) -> str:
    specification = await read_json(request, QuerySpecificationWire)
    if specification.query is None:
        raise ValidationError("The query specification needs a 'query'")
    return specification.query


def _bulk_items(mode: str | None, items: list[W] | None, what: str) -> tuple[BulkMode, list[W]]:
    if not mode:
        raise ValidationError("The bulk operation needs a 'mode'")
    if items is None:
        raise ValidationError(f"The bulk operation needs '{what}'")
    parsed = BulkMode.parse(mode)
    if parsed == BulkMode.DELETE:
        # Deleting needs nothing but the id.
        deletable = AttestationWire(type=AttestationType.NONE)
        items = [
            item
            if item.attestation is not None
            else msgspec.structs.replace(item, attestation=deletable)
            for item in items
        ]
    return parsed, items


def bulk_drafts(items: list[W], to_draft: Callable[[W], D], what: str) -> list[D]:
    """The items of a bulk operation as drafts; an item that is none refuses the whole
    request, naming it (``dpsd import --dry-run`` reads records so too)."""
    drafts = []
    for index, item in enumerate(items):
        try:
            drafts.append(to_draft(item))
        except DomainError as error:
            raise ValidationError(f"{what}[{index}]: {error.message}") from error
    return drafts


INCLUDE_SECRETS_HEADER = "x-dpsd-include-secrets"


def _wants_secrets(request: HttpRequest) -> bool:
    """The export extension of query: records with keys and certificates."""
    return request.headers.get(INCLUDE_SECRETS_HEADER, "").strip().lower() == "true"


def _query_right(request: HttpRequest) -> AccessRights:
    """Keys come with the right to write enrollments, as for attestationmechanism."""
    if _wants_secrets(request):
        return AccessRights.ENROLLMENT_READ | AccessRights.ENROLLMENT_WRITE
    return AccessRights.ENROLLMENT_READ


def _query_disclosure(request: HttpRequest) -> Disclosure:
    return Disclosure.ALL if _wants_secrets(request) else Disclosure.PUBLIC


class ProvisioningService(Protocol[D, Rec, F_co]):
    """The use cases of one kind of DPS record (EnrollmentService, EnrollmentGroupService)."""

    async def create_or_update(self, path_id: str, draft: D, if_match: str | None, /) -> Rec: ...

    async def get(self, record_id: str, /) -> Rec: ...

    async def delete(self, record_id: str, if_match: str | None, /) -> None: ...

    async def attestation_mechanism(self, record_id: str, /) -> AttestationMechanism: ...

    async def query(
        self, text: str, continuation: str | None, max_items: int | None, /
    ) -> Page[Rec]: ...

    async def run_bulk_operation(
        self, mode: BulkMode, drafts: list[D], etags: list[str | None], /
    ) -> Sequence[F_co]: ...


class BulkOperation(Protocol):
    @property
    def mode(self) -> str | None: ...


Op = TypeVar("Op", bound=BulkOperation)


@dataclass(frozen=True, slots=True)
class BulkShape(Generic[Op, W, F]):
    """A kind's bulk operation on the wire: the body's model, its items (named ``field``
    on the wire), and the result body made of the items that failed."""

    operation: type[Op]
    items: Callable[[Op], list[W] | None]
    field: str
    result: Callable[[Sequence[F]], object]


@dataclass(frozen=True, slots=True)
class RecordKind(Generic[W, D, Rec, F]):
    """What differs between individual enrollments and enrollment groups at the edge."""

    segment: str
    item_type: str
    """The ``x-ms-item-type`` of query pages."""
    wire: type[W]
    to_draft: Callable[[W], D]
    to_wire: Callable[[Rec, Disclosure], object]
    bulk: BulkShape[Any, W, F]


class ProvisioningRecords(Generic[W, D, Rec, F]):
    """One kind of DPS record served through http.records: the record at ``/{segment}/{id}``,
    with its query, its bulk operation and its attestation mechanism as actions."""

    __slots__ = ("_kind", "_service")

    def __init__(
        self, kind: RecordKind[W, D, Rec, F], service: ProvisioningService[D, Rec, F]
    ) -> None:
        self._kind: RecordKind[W, D, Rec, F] = kind
        self._service: ProvisioningService[D, Rec, F] = service

    def routes(self) -> list[Route]:
        read, write = AccessRights.ENROLLMENT_READ, AccessRights.ENROLLMENT_WRITE
        segment = self._kind.segment
        attestation = Read(self._attestation_mechanism, attestation_to_wire)
        return RecordHandlers(
            segment,
            read,
            write,
            get=Read(self._get, self._public),
            put=Write(self._kind.wire, self._put, self._with_keys),
            delete=Delete(self._delete),
            actions=(
                Route("POST", (segment, "query"), self.query, _query_right),
                Route("POST", (segment,), self.bulk, write),
                # It returns the keys, so reading it takes the right to write enrollments.
                Route("POST", (segment, "{id}", "attestationmechanism"), attestation.handle, write),
            ),
        ).routes()

    def _get(self, params: Params) -> Awaitable[Rec]:
        return self._service.get(params["id"])

    def _put(self, params: Params, body: W, if_match: str | None) -> Awaitable[Rec]:
        return self._service.create_or_update(params["id"], self._kind.to_draft(body), if_match)

    def _delete(self, params: Params, if_match: str | None) -> Awaitable[None]:
        return self._service.delete(params["id"], if_match)

    def _attestation_mechanism(self, params: Params) -> Awaitable[AttestationMechanism]:
        return self._service.attestation_mechanism(params["id"])

    def _public(self, record: Rec) -> object:
        return self._kind.to_wire(record, Disclosure.PUBLIC)

    def _with_keys(self, record: Rec) -> object:
        return self._kind.to_wire(record, Disclosure.KEYS)

    async def query(self, request: HttpRequest, params: Params) -> HttpResponse:
        text = await _query_text(request)
        page = await self._service.query(text, _continuation(request), _max_item_count(request))
        disclosure = _query_disclosure(request)
        items = [self._kind.to_wire(item, disclosure) for item in page.items]
        return _page_response(items, self._kind.item_type, page.page_size, page.continuation)

    async def bulk(self, request: HttpRequest, params: Params) -> HttpResponse:
        shape = self._kind.bulk
        operation = await read_json(request, shape.operation)
        mode, items = _bulk_items(operation.mode, shape.items(operation), shape.field)
        drafts = bulk_drafts(items, self._kind.to_draft, shape.field)
        failures = await self._service.run_bulk_operation(mode, drafts, [i.etag for i in items])
        return json_response(shape.result(failures))


def _code_and_message(error: DomainError | ServiceError) -> tuple[int, str]:
    return status_and_code(error)[1], error.message


def _enrollments_result(failures: Sequence[BulkItemFailure]) -> BulkResultWire:
    errors = [
        BulkErrorWire(failure.registration_id, *_code_and_message(failure.error))
        for failure in failures
    ]
    return BulkResultWire(is_successful=not errors, errors=errors)


def _groups_result(failures: Sequence[BulkGroupFailure]) -> BulkGroupResultWire:
    errors = [
        BulkGroupErrorWire(failure.enrollment_group_id, *_code_and_message(failure.error))
        for failure in failures
    ]
    return BulkGroupResultWire(is_successful=not errors, errors=errors)


_ENROLLMENTS_BULK: BulkShape[
    BulkEnrollmentOperationWire, IndividualEnrollmentWire, BulkItemFailure
] = BulkShape(
    BulkEnrollmentOperationWire,
    lambda operation: operation.enrollments,
    "enrollments",
    _enrollments_result,
)

_GROUPS_BULK: BulkShape[BulkEnrollmentGroupOperationWire, EnrollmentGroupWire, BulkGroupFailure] = (
    BulkShape(
        BulkEnrollmentGroupOperationWire,
        lambda operation: operation.enrollment_groups,
        "enrollmentGroups",
        _groups_result,
    )
)

ENROLLMENTS: RecordKind[
    IndividualEnrollmentWire, IndividualEnrollmentDraft, IndividualEnrollment, BulkItemFailure
] = RecordKind(
    segment="enrollments",
    item_type="Enrollment",
    wire=IndividualEnrollmentWire,
    to_draft=enrollment_to_draft,
    to_wire=enrollment_to_wire,
    bulk=_ENROLLMENTS_BULK,
)

ENROLLMENT_GROUPS: RecordKind[
    EnrollmentGroupWire, EnrollmentGroupDraft, EnrollmentGroup, BulkGroupFailure
] = RecordKind(
    segment="enrollmentgroups",
    item_type="EnrollmentGroup",
    wire=EnrollmentGroupWire,
    to_draft=group_to_draft,
    to_wire=group_to_wire,
    bulk=_GROUPS_BULK,
)


class RegistrationStateHandlers:
    def __init__(self, service: RegistrationStateService) -> None:
        self._service = service

    def routes(self) -> list[Route]:
        read = AccessRights.REGISTRATION_STATUS_READ
        write = AccessRights.REGISTRATION_STATUS_WRITE
        states = self._service
        return RecordHandlers(
            "registrations",
            read,
            write,
            get=Read(lambda params: states.get(params["id"]), registration_state_to_wire),
            delete=Delete(lambda params, if_match: states.delete(params["id"], if_match)),
            actions=(Route("POST", ("registrations", "{id}", "query"), self.query, read),),
        ).routes()

    async def query(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        # The spec sends no body; Node and C# send a query specification. Both mean "all".
        page = await self._service.query(
            params["id"], _continuation(request), _max_item_count(request)
        )
        items = [registration_state_to_wire(item) for item in page.items]
        return _page_response(items, "DeviceRegistration", page.page_size, page.continuation)
