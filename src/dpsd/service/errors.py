"""Errors raised by the use cases. Each carries the data the edge needs to report it.

ServiceError
├── Unauthorized             no valid credential, or a credential without the right
├── DeviceUnauthorized       a device did not prove who it is
├── NotFound
│   └── EnrollmentNotFound
├── EnrollmentAlreadyExists  create without If-Match on an existing record
├── PreconditionFailed       If-Match does not name the current etag
├── StillReferenced          a delete of something records still name
├── BadRequest               a request the service cannot act on (bad paging token, ...)
├── StorageUnavailable       the store cannot serve now (full disk, lock, lost connection):
│                            the request may be retried; raised by the storage adapters
└── Throttled                a device request refused by a load limit: retry after so long
"""

from __future__ import annotations

import enum


class ServiceError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Unauthorized(ServiceError):
    pass


class DeviceUnauthorized(ServiceError):
    """The device did not prove who it is; the message says what was wrong."""


class NotFound(ServiceError):
    pass


class EnrollmentNotFound(NotFound):
    def __init__(self, registration_id: str) -> None:
        super().__init__(f"Enrollment with registration id {registration_id!r} was not found")
        self.registration_id = registration_id


class EnrollmentGroupNotFound(NotFound):
    def __init__(self, enrollment_group_id: str) -> None:
        super().__init__(f"Enrollment group {enrollment_group_id!r} was not found")
        self.enrollment_group_id = enrollment_group_id


class RegistrationStateNotFound(NotFound):
    def __init__(self, registration_id: str) -> None:
        super().__init__(f"No registration state for registration id {registration_id!r}")
        self.registration_id = registration_id


class CertificateNotFound(NotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"CA certificate {name!r} was not found")
        self.name = name


class AlreadyExists(ServiceError):
    pass


class EnrollmentGroupAlreadyExists(AlreadyExists):
    def __init__(self, enrollment_group_id: str) -> None:
        super().__init__(
            f"Enrollment group {enrollment_group_id!r} already exists; to update it, send "
            "If-Match with its etag (or '*')"
        )
        self.enrollment_group_id = enrollment_group_id


class CertificateAlreadyExists(AlreadyExists):
    def __init__(self, name: str) -> None:
        super().__init__(f"CA certificate {name!r} already exists")
        self.name = name


class EnrollmentAlreadyExists(AlreadyExists):
    def __init__(self, registration_id: str) -> None:
        super().__init__(
            f"Enrollment {registration_id!r} already exists; to update it, send If-Match "
            "with its etag (or '*')"
        )
        self.registration_id = registration_id


class PreconditionFailed(ServiceError):
    def __init__(self, record_id: str) -> None:
        super().__init__(f"The etag in If-Match does not match the current etag of {record_id!r}")
        self.record_id = record_id


class BadRequest(ServiceError):
    pass


class StillReferenced(ServiceError):
    """A CA certificate or an IoT hub that records still name, refused a delete."""


class StorageFault(enum.StrEnum):
    """Why the store cannot serve, in the words of the log line that reports it."""

    FULL_DISK = "full disk"
    READ_ONLY = "read-only database"
    LOCK_TIMEOUT = "lock timeout"
    CONNECTION_LOST = "lost database connection"
    IO_ERROR = "disk I/O error"
    OUT_OF_RESOURCES = "database out of resources"


class StorageUnavailable(ServiceError):
    """The store could not run a statement, for a reason that may pass (or that an operator
    can fix): the request may be retried, after ``retry_after`` seconds. ``detail`` is the
    database's own words, for the log; the message names only the fault."""

    retry_after = 5

    def __init__(self, fault: StorageFault, detail: str) -> None:
        super().__init__(
            f"dpsd's store is unavailable ({fault}); retry after {self.retry_after} seconds"
        )
        self.fault = fault
        self.detail = detail


class ThrottleLimit(enum.StrEnum):
    """Which limit refused a device request, as logs and metrics name it."""

    IN_FLIGHT = "in_flight"
    REGISTRATION_RATE = "registration_rate"
    DEVICE_POLL_RATE = "device_poll_rate"


_THROTTLE_REASONS = {
    ThrottleLimit.IN_FLIGHT: "too many registrations are in progress",
    ThrottleLimit.REGISTRATION_RATE: "the service's registration rate is reached",
    ThrottleLimit.DEVICE_POLL_RATE: "the device's poll rate is reached",
}


class Throttled(ServiceError):
    """A device request refused by one of dpsd's load limits (dpsd.service.throttling):
    nothing was done, and the device may retry after ``retry_after`` seconds."""

    def __init__(self, limit: ThrottleLimit, retry_after: int) -> None:
        super().__init__(
            f"Operations are being throttled by the service ({_THROTTLE_REASONS[limit]}); "
            f"retry after {retry_after} seconds"
        )
        self.limit = limit
        self.retry_after = retry_after
