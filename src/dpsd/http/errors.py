"""Every error to the wire, in one place: HTTP status, DPS error code, DPS error body.

The table is looked up along the exception's MRO, so a base class covers its subtree.
The codes follow the real service where it is known (docs/compatibility.md lists them).
"""

from __future__ import annotations

from datetime import datetime
from http import HTTPStatus

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
from dpsd.domain.timestamps import format_timestamp
from dpsd.service.device_registration import (
    OperationNotFound,
    RegistrationNotFound,
)
from dpsd.service.errors import (
    AlreadyExists,
    BadRequest,
    DeviceUnauthorized,
    EnrollmentAlreadyExists,
    EnrollmentGroupAlreadyExists,
    EnrollmentGroupNotFound,
    EnrollmentNotFound,
    NotFound,
    PreconditionFailed,
    RegistrationStateNotFound,
    ServiceError,
    StorageUnavailable,
    Throttled,
    Unauthorized,
)
from dpsd.wire import ErrorDetailsWire

ERROR_CODE_HEADER = "x-ms-error-code"
REQUEST_ID_HEADER = b"x-ms-request-id"


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


class MalformedRequest(HttpError):
    """Bytes the HTTP server cannot read as an HTTP/1.1 request."""


class RequestHeadTooLarge(HttpError):
    pass


class RequestHeadTimeout(HttpError):
    pass


ERROR_TABLE: dict[type[Exception], tuple[int, int]] = {
    DeviceUnauthorized: (401, 401002),
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
    MalformedRequest: (400, 400004),
    RequestHeadTimeout: (408, 408000),
    RequestHeadTooLarge: (431, 431000),
    StorageUnavailable: (503, 503000),
    Throttled: (429, 429001),
    DomainError: (400, 400004),
    ServiceError: (400, 400004),
    HttpError: (400, 400004),
}

INTERNAL_ERROR = (500, 500000)
_encoder = msgspec.json.Encoder()


def status_and_code(error: Exception) -> tuple[int, int]:
    for cls in type(error).__mro__:
        if cls in ERROR_TABLE:
            return ERROR_TABLE[cls]
    return INTERNAL_ERROR


def unexpected(error: Exception, status: int) -> bool:
    """Whether ``error`` is a failure of dpsd itself: logged with its traceback, its cause
    kept from the client. A store that cannot serve now is not one (its fault is logged
    where it is found, and the client is told to retry)."""
    return status >= 500 and not isinstance(error, StorageUnavailable)


def advice_headers(error: Exception) -> dict[str, str]:
    """What an error's answer tells the client besides its code: the methods a path
    allows, when to try again."""
    if isinstance(error, MethodNotAllowed):
        return {"allow": ", ".join(error.allowed)}
    if isinstance(error, StorageUnavailable | Throttled):
        return {"retry-after": str(error.retry_after)}
    return {}


def message_of(error: Exception) -> str:
    return getattr(error, "message", None) or "The service failed to handle the request"


def error_details(code: int, message: str, tracking_id: str, now: datetime) -> ErrorDetailsWire:
    """The DPS error body."""
    return ErrorDetailsWire(
        error_code=code,
        tracking_id=tracking_id,
        message=message,
        timestamp_utc=format_timestamp(now),
        info={},
    )


def closing_response(
    error: HttpError, tracking_id: str, now: datetime, server_headers: list[tuple[bytes, bytes]]
) -> bytes:
    """A whole HTTP/1.1 response refusing a request before any application has seen it
    (a head too large, too slow, or not HTTP), after which the connection closes: the DPS
    error body and headers an application's error response has, and ``server_headers``
    (the server's own, such as ``date``)."""
    status, code = status_and_code(error)
    body = _encoder.encode(error_details(code, error.message, tracking_id, now))
    headers = [
        *server_headers,
        (b"content-type", b"application/json; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        (ERROR_CODE_HEADER.encode(), str(code).encode()),
        (REQUEST_ID_HEADER, tracking_id.encode()),
        (b"connection", b"close"),
    ]
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}".encode()]
    lines += [name + b": " + value for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def describe_decode_error(error: msgspec.DecodeError) -> MalformedBody:
    """msgspec's messages name the offending JSON path (``at `$.attestation.type```)."""
    text = str(error)
    if isinstance(error, msgspec.ValidationError):
        return MalformedBody(f"The request body does not match the schema: {text}")
    return MalformedBody(f"The request body is not valid JSON: {text}")
