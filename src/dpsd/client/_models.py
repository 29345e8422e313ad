"""The records the service API exchanges, as plain dicts in the wire's camelCase.

The server validates records; the client passes them through as they are, so these are
aliases that name what a dict holds rather than schemas. The field names are the REST
specification's (api-version 2021-10-01).
"""

from __future__ import annotations

from typing import Any, Literal, TypeAlias

IndividualEnrollment: TypeAlias = dict[str, Any]
"""``{"registrationId", "attestation", "deviceId"?, "iotHubs"?, "etag"?, ...}``"""

EnrollmentGroup: TypeAlias = dict[str, Any]
"""``{"enrollmentGroupId", "attestation", "iotHubs"?, "etag"?, ...}``"""

AttestationMechanism: TypeAlias = dict[str, Any]
"""``{"type", "symmetricKey"? | "x509"? | "tpm"?}``, with the keys."""

DeviceRegistrationState: TypeAlias = dict[str, Any]
"""``{"registrationId", "status", "assignedHub"?, "deviceId"?, "etag", ...}``"""

BulkEnrollmentOperationResult: TypeAlias = dict[str, Any]
"""``{"isSuccessful": bool, "errors": [{"registrationId" | "enrollmentGroupId",
"errorCode": int, "errorStatus": str}]}``"""

BulkMode: TypeAlias = Literal["create", "update", "updateIfMatchETag", "delete"]
"""``update`` writes whatever is there; ``updateIfMatchETag`` checks each record's etag."""

Record: TypeAlias = dict[str, Any]
"""An individual enrollment or an enrollment group: the operations on both are the same."""
