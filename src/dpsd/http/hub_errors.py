"""Every error of a built-in IoT hub to the wire, in one place: HTTP status, IoT Hub error
name, and IoT Hub's classic error body, which every service client parses.

The body is ``{"Message": "ErrorCode:{Name};{text}", "ExceptionMessage": "Tracking ID:
{32 hex}-G:0-TimeStamp:{MM/dd/yyyy HH:mm:ss}"}`` and the name is repeated in the
``iothub-errorcode`` header. The table is looked up along the exception's MRO, so a base
class covers its subtree; names and statuses follow IoT Hub's where it has one
(docs/iot-hub.md §4.6).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from dpsd.domain.errors import DomainError, InvalidToken, ValidationError
from dpsd.domain.json_depth import JsonTooDeep
from dpsd.http.errors import (
    HttpError,
    InvalidApiVersion,
    InvalidHeader,
    MalformedBody,
    MethodNotAllowed,
    PayloadTooLarge,
    RouteNotFound,
    UnsupportedMediaType,
    advice_headers,
    unexpected,
)
from dpsd.http.exchange import HttpResponse, json_response
from dpsd.hub_wire import HubErrorWire
from dpsd.service.errors import (
    AlreadyExists,
    BadRequest,
    NotFound,
    PreconditionFailed,
    ServiceError,
    StorageUnavailable,
    Unauthorized,
)
from dpsd.service.hub_registry import HubDeviceAlreadyExists, HubDeviceNotFound, HubNotServed

ERROR_CODE_HEADER = "iothub-errorcode"
SERVER_ERROR = (500, "ServerError")
SERVER_ERROR_TEXT = "The IoT hub failed to handle the request; the tracking id identifies it"


class MissingBody(HttpError):
    """A request that needs a JSON body came without one."""


HUB_ERROR_TABLE: dict[type[Exception], tuple[int, str]] = {
    HubDeviceNotFound: (404, "DeviceNotFound"),
    HubNotServed: (404, "IotHubNotFound"),
    HubDeviceAlreadyExists: (409, "DeviceAlreadyExists"),
    MissingBody: (400, "ArgumentNull"),
    MalformedBody: (400, "IotHubFormatError"),
    JsonTooDeep: (400, "IotHubFormatError"),
    UnsupportedMediaType: (400, "IotHubFormatError"),
    InvalidApiVersion: (400, "InvalidProtocolVersion"),
    InvalidHeader: (400, "ArgumentInvalid"),
    ValidationError: (400, "ArgumentInvalid"),
    BadRequest: (400, "ArgumentInvalid"),
    InvalidToken: (401, "IotHubUnauthorizedAccess"),
    Unauthorized: (401, "IotHubUnauthorizedAccess"),
    NotFound: (404, "DeviceNotFound"),
    RouteNotFound: (404, "ResourceNotFound"),
    MethodNotAllowed: (405, "MethodNotAllowed"),
    AlreadyExists: (409, "DeviceAlreadyExists"),
    PreconditionFailed: (412, "PreconditionFailed"),
    PayloadTooLarge: (413, "MessageTooLarge"),
    StorageUnavailable: (503, "ServiceUnavailable"),
    DomainError: (400, "ArgumentInvalid"),
    ServiceError: (400, "ArgumentInvalid"),
    HttpError: (400, "ArgumentInvalid"),
}


def status_and_name(error: Exception) -> tuple[int, str]:
    for cls in type(error).__mro__:
        if cls in HUB_ERROR_TABLE:
            return HUB_ERROR_TABLE[cls]
    return SERVER_ERROR


def new_tracking_id() -> str:
    return os.urandom(16).hex()


def error_body(name: str, text: str, tracking_id: str, now: datetime) -> HubErrorWire:
    """``text`` loses its semicolons: clients cut ``Message`` at the first one after the
    name."""
    moment = now.astimezone(UTC).strftime("%m/%d/%Y %H:%M:%S")
    return HubErrorWire(
        message=f"ErrorCode:{name};{text.replace(';', ',')}",
        exception_message=f"Tracking ID:{tracking_id}-G:0-TimeStamp:{moment}",
    )


def error_response(error: Exception, tracking_id: str, now: datetime) -> HttpResponse:
    """The response for ``error``; a failure of dpsd itself says nothing of its cause."""
    status, name = status_and_name(error)
    text = SERVER_ERROR_TEXT if unexpected(error, status) else _text_of(error, name)
    headers = {ERROR_CODE_HEADER: name, **advice_headers(error)}
    return json_response(error_body(name, text, tracking_id, now), status, headers)


def _text_of(error: Exception, name: str) -> str:
    return getattr(error, "message", None) or name
