"""Handlers of the service API: individual enrollments (api-version 2021-10-01)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import msgspec

from dpsd.domain.attestation import AttestationType
from dpsd.domain.errors import DomainError, ValidationError
from dpsd.domain.sas import AccessRights
from dpsd.http.errors import (
    InvalidHeader,
    PayloadTooLarge,
    UnsupportedMediaType,
    describe_decode_error,
    status_and_code,
)
from dpsd.http.exchange import HttpRequest, HttpResponse, empty_response, json_response
from dpsd.http.routing import Route
from dpsd.service.enrollment_groups import EnrollmentGroupService
from dpsd.service.enrollments import EnrollmentService
from dpsd.service.records import BulkMode
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

MAX_BODY_BYTES = 96 * 1024
_EMPTY_BODY = "The request needs a JSON body"
T = TypeVar("T")
W = TypeVar("W", IndividualEnrollmentWire, EnrollmentGroupWire)
D = TypeVar("D")


async def read_json(request: HttpRequest, model: type[T]) -> T:
    """The body decoded as ``model``; at most 96 KB, as the real service allows."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"The request body must be application/json, not {media_type!r}")
    body = await request.body(MAX_BODY_BYTES)
    if body is None:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    if not body:
        raise ValidationError(_EMPTY_BODY)
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.DecodeError as error:
        raise describe_decode_error(error) from error


async def read_optional_json(request: HttpRequest, model: type[T]) -> T | None:
    """Like read_json, but an empty body is None (device clients differ in what they send)."""
    declared = request.headers.get("content-length", "")
    if declared == "0":
        return None
    try:
        return await read_json(request, model)
    except ValidationError as error:
        if error.message == _EMPTY_BODY:
            return None
        raise


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


def _drafts(items: list[W], to_draft: Callable[[W], D], what: str) -> list[D]:
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


class EnrollmentHandlers:
    def __init__(self, service: EnrollmentService) -> None:
        self._service = service

    def routes(self) -> list[Route]:
        read, write = AccessRights.ENROLLMENT_READ, AccessRights.ENROLLMENT_WRITE
        return [
            Route("POST", ("enrollments", "query"), self.query, _query_right),
            Route("POST", ("enrollments",), self.bulk, write),
            Route("GET", ("enrollments", "{id}"), self.get, read),
            Route("PUT", ("enrollments", "{id}"), self.put, write),
            Route("DELETE", ("enrollments", "{id}"), self.delete, write),
            # It returns the keys, so reading it takes the right to write enrollments.
            Route("POST", ("enrollments", "{id}", "attestationmechanism"), self.attestation, write),
        ]

    async def put(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        wire = await read_json(request, IndividualEnrollmentWire)
        enrollment = await self._service.create_or_update(
            params["id"], enrollment_to_draft(wire), request.headers.get("if-match")
        )
        return json_response(enrollment_to_wire(enrollment, Disclosure.KEYS))

    async def get(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        enrollment = await self._service.get(params["id"])
        return json_response(enrollment_to_wire(enrollment, Disclosure.PUBLIC))

    async def delete(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._service.delete(params["id"], request.headers.get("if-match"))
        return empty_response(204)

    async def attestation(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        mechanism = await self._service.attestation_mechanism(params["id"])
        return json_response(attestation_to_wire(mechanism))

    async def query(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        text = await _query_text(request)
        page = await self._service.query(text, _continuation(request), _max_item_count(request))
        disclosure = _query_disclosure(request)
        items = [enrollment_to_wire(item, disclosure) for item in page.items]
        return _page_response(items, "Enrollment", page.page_size, page.continuation)

    async def bulk(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        operation = await read_json(request, BulkEnrollmentOperationWire)
        mode, items = _bulk_items(operation.mode, operation.enrollments, "enrollments")
        drafts = _drafts(items, enrollment_to_draft, "enrollments")
        failures = await self._service.run_bulk_operation(mode, drafts, [i.etag for i in items])
        errors = [
            BulkErrorWire(
                failure.registration_id, status_and_code(failure.error)[1], failure.error.message
            )
            for failure in failures
        ]
        return json_response(BulkResultWire(is_successful=not errors, errors=errors))


class EnrollmentGroupHandlers:
    def __init__(self, service: EnrollmentGroupService) -> None:
        self._service = service

    def routes(self) -> list[Route]:
        read, write = AccessRights.ENROLLMENT_READ, AccessRights.ENROLLMENT_WRITE
        return [
            Route("POST", ("enrollmentgroups", "query"), self.query, _query_right),
            Route("POST", ("enrollmentgroups",), self.bulk, write),
            Route("GET", ("enrollmentgroups", "{id}"), self.get, read),
            Route("PUT", ("enrollmentgroups", "{id}"), self.put, write),
            Route("DELETE", ("enrollmentgroups", "{id}"), self.delete, write),
            Route(
                "POST",
                ("enrollmentgroups", "{id}", "attestationmechanism"),
                self.attestation,
                write,
            ),
        ]

    async def put(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        wire = await read_json(request, EnrollmentGroupWire)
        group = await self._service.create_or_update(
            params["id"], group_to_draft(wire), request.headers.get("if-match")
        )
        return json_response(group_to_wire(group, Disclosure.KEYS))

    async def get(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        return json_response(
            group_to_wire(await self._service.get(params["id"]), Disclosure.PUBLIC)
        )

    async def delete(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._service.delete(params["id"], request.headers.get("if-match"))
        return empty_response(204)

    async def attestation(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        mechanism = await self._service.attestation_mechanism(params["id"])
        return json_response(attestation_to_wire(mechanism))

    async def query(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        text = await _query_text(request)
        page = await self._service.query(text, _continuation(request), _max_item_count(request))
        disclosure = _query_disclosure(request)
        items = [group_to_wire(item, disclosure) for item in page.items]
        return _page_response(items, "EnrollmentGroup", page.page_size, page.continuation)

    async def bulk(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        operation = await read_json(request, BulkEnrollmentGroupOperationWire)
        mode, items = _bulk_items(operation.mode, operation.enrollment_groups, "enrollmentGroups")
        drafts = _drafts(items, group_to_draft, "enrollmentGroups")
        failures = await self._service.run_bulk_operation(mode, drafts, [i.etag for i in items])
        errors = [
            BulkGroupErrorWire(
                failure.enrollment_group_id,
                status_and_code(failure.error)[1],
                failure.error.message,
            )
            for failure in failures
        ]
        return json_response(BulkGroupResultWire(is_successful=not errors, errors=errors))


class RegistrationStateHandlers:
    def __init__(self, service: RegistrationStateService) -> None:
        self._service = service

    def routes(self) -> list[Route]:
        read = AccessRights.REGISTRATION_STATUS_READ
        write = AccessRights.REGISTRATION_STATUS_WRITE
        return [
            Route("POST", ("registrations", "{id}", "query"), self.query, read),
            Route("GET", ("registrations", "{id}"), self.get, read),
            Route("DELETE", ("registrations", "{id}"), self.delete, write),
        ]

    async def get(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        return json_response(registration_state_to_wire(await self._service.get(params["id"])))

    async def delete(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        await self._service.delete(params["id"], request.headers.get("if-match"))
        return empty_response(204)

    async def query(self, request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        # The spec sends no body; Node and C# send a query specification. Both mean "all".
        page = await self._service.query(
            params["id"], _continuation(request), _max_item_count(request)
        )
        items = [registration_state_to_wire(item) for item in page.items]
        return _page_response(items, "DeviceRegistration", page.page_size, page.continuation)
