"""Errors the service answers, as exceptions typed by HTTP status."""

from __future__ import annotations

from typing import Any

import httpx


class DpsError(Exception):
    """An error answer of the service: its HTTP status and the DPS error body
    ``{errorCode, trackingId, message, timestampUtc, info}`` (``error_code`` and
    ``tracking_id`` are None when the body was not a DPS error body)."""

    def __init__(
        self,
        status_code: int,
        error_code: int | None,
        message: str,
        tracking_id: str | None,
    ) -> None:
        super().__init__(status_code, error_code, message, tracking_id)
        self.status_code = status_code
        self.error_code = error_code
        self.message = message
        self.tracking_id = tracking_id

    def __str__(self) -> str:
        code = str(self.error_code) if self.error_code is not None else f"HTTP {self.status_code}"
        tracking = f" (tracking id {self.tracking_id})" if self.tracking_id else ""
        return f"{code} {self.message}{tracking}"


class BadRequestError(DpsError):
    """400: the request or a record breaks a rule."""


class UnauthorizedError(DpsError):
    """401: the token is refused or its policy lacks the right."""


class NotFoundError(DpsError):
    """404: no such enrollment, group or registration state."""


class ConflictError(DpsError):
    """409: a create of a record that already exists (update with ``if_match``)."""


class PreconditionFailedError(DpsError):
    """412: ``if_match`` does not name the record's current etag."""


class PayloadTooLargeError(DpsError):
    """413: the body is over the service's 96 KB limit."""


class UnexpectedStatusError(DpsError):
    """Any other error status (405, 415, 5xx, ...)."""


_BY_STATUS: dict[int, type[DpsError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    404: NotFoundError,
    409: ConflictError,
    412: PreconditionFailedError,
    413: PayloadTooLargeError,
}


def error_from_response(response: httpx.Response) -> DpsError:
    """The exception for an error response, read from its DPS error body when it has one."""
    status = response.status_code
    error_class = _BY_STATUS.get(status, UnexpectedStatusError)
    body: Any
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and "errorCode" in body:
        code = body.get("errorCode")
        tracking = body.get("trackingId") or response.headers.get("x-ms-request-id")
        return error_class(
            status,
            _integer(code),
            str(body.get("message") or response.reason_phrase),
            str(tracking) if tracking else None,
        )
    text = response.text.strip()[:200] if response.content else ""
    return error_class(
        status,
        _integer(response.headers.get("x-ms-error-code")),
        text or response.reason_phrase or "error",
        response.headers.get("x-ms-request-id"),
    )


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
