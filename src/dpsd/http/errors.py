"""Every error to the wire, in one place: HTTP status, DPS error code, DPS error body.

The table is looked up along the exception's MRO, so a base class covers its subtree.
The codes follow the real service where it is known (docs/compatibility.md lists them).
"""

from __future__ import annotations

import msgspec

from dpsd.domain.errors import (
    DomainError,
    InvalidAttestation,
    InvalidQuery,
    InvalidRegistrationId,
    InvalidToken,
    ValidationError,
)
from dpsd.domain.json_depth import JsonTooDeep
from dpsd.service.device_registration import (
    DeviceUnauthorized,
    OperationNotFound,
    RegistrationNotFound,
    UnsupportedAttestation,
)
from dpsd.service.errors import (
    AlreadyExists,
    BadRequest,
    EnrollmentAlreadyExists,
    EnrollmentGroupAlreadyExists,
    EnrollmentGroupNotFound,
    EnrollmentNotFound,
    NotFound,
    PreconditionFailed,
    RegistrationStateNotFound,
    ServiceError,
    Unauthorized,
)


class HttpError(Exception):
    """Errors of the HTTP edge itself: routing, headers, body framing."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RouteNotFound(HttpError):
    pass


class MethodNotAllowed(HttpError):
    def __init__(self, message: str, allowed: list[str]) -> None:
        super().__init__(message)
        self.allowed = allowed


class InvalidApiVersion(HttpError):
    pass


class MalformedBody(HttpError):
    pass


class InvalidHeader(HttpError):
    pass


class PayloadTooLarge(HttpError):
    pass


class UnsupportedMediaType(HttpError):
    pass


ERROR_TABLE: dict[type[Exception], tuple[int, int]] = {
    DeviceUnauthorized: (401, 401002),
    UnsupportedAttestation: (400, 400004),
    OperationNotFound: (404, 404205),
    RegistrationNotFound: (404, 404202),
    InvalidApiVersion: (400, 400001),
    InvalidRegistrationId: (400, 400004),
    InvalidAttestation: (400, 400004),
    InvalidQuery: (400, 400004),
    ValidationError: (400, 400004),
    InvalidHeader: (400, 400004),
    BadRequest: (400, 400004),
    MalformedBody: (400, 400006),
    JsonTooDeep: (400, 400006),
    InvalidToken: (401, 401002),
    Unauthorized: (401, 401002),
    EnrollmentNotFound: (404, 404201),
    RegistrationStateNotFound: (404, 404202),
    EnrollmentGroupNotFound: (404, 404204),
    NotFound: (404, 404000),
    RouteNotFound: (404, 404000),
    MethodNotAllowed: (405, 405000),
    EnrollmentAlreadyExists: (409, 409201),
    EnrollmentGroupAlreadyExists: (409, 409204),
    AlreadyExists: (409, 409000),
    PreconditionFailed: (412, 412002),
    PayloadTooLarge: (413, 413001),
    UnsupportedMediaType: (415, 415001),
    DomainError: (400, 400004),
    ServiceError: (400, 400004),
    HttpError: (400, 400004),
}

INTERNAL_ERROR = (500, 500000)


def status_and_code(error: Exception) -> tuple[int, int]:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL_ERROR


def message_of(error: Exception) -> str:
    return getattr(error, "message", None) or "The service failed to handle the request"


def describe_decode_error(error: msgspec.DecodeError) -> MalformedBody:
    """msgspec's messages name the offending JSON path (``at `$.attestation.type```)."""
    text = str(error)
    if isinstance(error, msgspec.ValidationError):
        return MalformedBody(f"The request body does not match the schema: {text}")
    return MalformedBody(f"The request body is not valid JSON: {text}")
