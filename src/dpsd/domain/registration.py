"""Device registration states: what happened when a device last provisioned itself."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class RegistrationStatus(enum.StrEnum):
    UNASSIGNED = "unassigned"
    ASSIGNING = "assigning"
    ASSIGNED = "assigned"
    FAILED = "failed"
    DISABLED = "disabled"


class AssignedDeviceSubstatus(enum.StrEnum):
    INITIAL_ASSIGNMENT = "initialAssignment"
    DEVICE_DATA_MIGRATED = "deviceDataMigrated"
    DEVICE_DATA_RESET = "deviceDataReset"
    REPROVISIONED_TO_INITIAL_ASSIGNMENT = "reprovisionedToInitialAssignment"


@dataclass(frozen=True, slots=True)
class DeviceRegistrationState:
    registration_id: str
    status: RegistrationStatus
    etag: str
    created: datetime
    last_updated: datetime
    assigned_hub: str | None = None
    device_id: str | None = None
    substatus: AssignedDeviceSubstatus | None = None
    error_code: int | None = None
    error_message: str | None = None
    payload: dict[str, Any] | None = None
    enrollment_group_id: str | None = None
