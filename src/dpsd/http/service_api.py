"""Handlers of the service API: individual enrollments (api-version 2021-10-01)."""

from __future__ import annotations

from typing import TypeVar

import msgspec
from starlette.requests import Request
from starlette.responses import Response

from dpsd.domain.attestation import AttestationType
from dpsd.domain.errors import DomainError, ValidationError
from dpsd.domain.sas import AccessRights
from dpsd.http.app import json_response
from dpsd.http.errors import (
    InvalidHeader,
    PayloadTooLarge,
    UnsupportedMediaType,
    describe_decode_error,
    status_and_code,
)
from dpsd.http.routing import Route
from dpsd.http.schemas import (
    AttestationWire,
    BulkEnrollmentOperationWire,
    BulkErrorWire,
    BulkResultWire,
    IndividualEnrollmentWire,
    QuerySpecificationWire,
    attestation_to_wire,
    enrollment_to_draft,
    enrollment_to_wire,
)
from dpsd.service.enrollments import BulkMode, EnrollmentService

MAX_BODY_BYTES = 96 * 1024
T = TypeVar("T")


async def read_json(request: Request, model: type[T]) -> T:
    """The body decoded as ``model``; at most 96 KB, as the real service allows."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    content_type = request.headers.get("content-type", "application/json")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"The request body must be application/json, not {media_type!r}")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLarge(f"The request body is larger than {MAX_BODY_BYTES} bytes")
    if not body:
        raise ValidationError("The request needs a JSON body")
    try:
        return msgspec.json.decode(bytes(body), type=model)
    except msgspec.DecodeError as error:
        raise describe_decode_error(error) from error


def _max_item_count(request: Request) -> int | None:
    value = request.headers.get("x-ms-max-item-count")
    if value is None or value.strip() == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidHeader(f"x-ms-max-item-count must be an integer, not {value!r}") from None


class EnrollmentHandlers:
    def __init__(self, service: EnrollmentService) -> None:
        self._service = service

    def routes(self) -> list[Route]:
        read, write = AccessRights.ENROLLMENT_READ, AccessRights.ENROLLMENT_WRITE
        return [
            Route("POST", ("enrollments", "query"), self.query, read),
            Route("POST", ("enrollments",), self.bulk, write),
            Route("GET", ("enrollments", "{id}"), self.get, read),
            Route("PUT", ("enrollments", "{id}"), self.put, write),
            Route("DELETE", ("enrollments", "{id}"), self.delete, write),
            # It returns the keys, so reading it takes the right to write enrollments.
            Route("POST", ("enrollments", "{id}", "attestationmechanism"), self.attestation, write),
        ]

    async def put(self, request: Request, params: dict[str, str]) -> Response:
        wire = await read_json(request, IndividualEnrollmentWire)
        enrollment = await self._service.create_or_update(
            params["id"], enrollment_to_draft(wire), request.headers.get("if-match")
        )
        return json_response(enrollment_to_wire(enrollment, secrets=True))

    async def get(self, request: Request, params: dict[str, str]) -> Response:
        enrollment = await self._service.get(params["id"])
        return json_response(enrollment_to_wire(enrollment, secrets=False))

    async def delete(self, request: Request, params: dict[str, str]) -> Response:
        await self._service.delete(params["id"], request.headers.get("if-match"))
        return Response(status_code=204)

    async def attestation(self, request: Request, params: dict[str, str]) -> Response:
        mechanism = await self._service.attestation_mechanism(params["id"])
        return json_response(attestation_to_wire(mechanism))

    async def query(self, request: Request, params: dict[str, str]) -> Response:
        specification = await read_json(request, QuerySpecificationWire)
        if specification.query is None:
            raise ValidationError("The query specification needs a 'query'")
        page = await self._service.query(
            specification.query,
            request.headers.get("x-ms-continuation") or None,
            _max_item_count(request),
        )
        headers = {"x-ms-item-type": "Enrollment", "x-ms-max-item-count": str(page.page_size)}
        if page.continuation is not None:
            headers["x-ms-continuation"] = page.continuation
        items = [enrollment_to_wire(item, secrets=False) for item in page.items]
        return json_response(items, headers=headers)

    async def bulk(self, request: Request, params: dict[str, str]) -> Response:
        operation = await read_json(request, BulkEnrollmentOperationWire)
        if not operation.mode:
            raise ValidationError("The bulk operation needs a 'mode'")
        if operation.enrollments is None:
            raise ValidationError("The bulk operation needs 'enrollments'")
        mode = BulkMode.parse(operation.mode)
        drafts, etags, errors = [], [], []
        for index, wire in enumerate(operation.enrollments):
            if mode == BulkMode.DELETE and wire.attestation is None:
                # Deleting needs nothing but the id.
                wire = msgspec.structs.replace(
                    wire, attestation=AttestationWire(type=AttestationType.NONE)
                )
            try:
                drafts.append(enrollment_to_draft(wire))
            except DomainError as error:
                raise ValidationError(f"enrollments[{index}]: {error.message}") from error
            etags.append(wire.etag)
        for failure in await self._service.run_bulk_operation(mode, drafts, etags):
            _, code = status_and_code(failure.error)
            errors.append(BulkErrorWire(failure.registration_id, code, failure.error.message))
        return json_response(BulkResultWire(is_successful=not errors, errors=errors))
