"""A typed Python client of the DPS service API (api-version 2021-10-01), sync and async.

It depends on httpx and the standard library only::

    from dpsd.client import DpsServiceClient

    with DpsServiceClient.from_connection_string(cs, verify="ca.pem") as client:
        client.enrollments.create_or_update(
            {"registrationId": "dev-1", "attestation": {"type": "symmetricKey"}}
        )
"""

from dpsd.client._client import (
    AsyncDpsServiceClient,
    AsyncEnrollmentOperations,
    AsyncRegistrationOperations,
    DpsServiceClient,
    EnrollmentOperations,
    RegistrationOperations,
)
from dpsd.client._errors import (
    BadRequestError,
    ConflictError,
    DpsError,
    NotFoundError,
    PayloadTooLargeError,
    PreconditionFailedError,
    UnauthorizedError,
    UnexpectedStatusError,
)
from dpsd.client._models import (
    AttestationMechanism,
    BulkEnrollmentOperationResult,
    BulkMode,
    DeviceRegistrationState,
    EnrollmentGroup,
    IndividualEnrollment,
    Record,
)

__all__ = [
    "AsyncDpsServiceClient",
    "AsyncEnrollmentOperations",
    "AsyncRegistrationOperations",
    "AttestationMechanism",
    "BadRequestError",
    "BulkEnrollmentOperationResult",
    "BulkMode",
    "ConflictError",
    "DeviceRegistrationState",
    "DpsError",
    "DpsServiceClient",
    "EnrollmentGroup",
    "EnrollmentOperations",
    "IndividualEnrollment",
    "NotFoundError",
    "PayloadTooLargeError",
    "PreconditionFailedError",
    "Record",
    "RegistrationOperations",
    "UnauthorizedError",
    "UnexpectedStatusError",
]
