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
    initial_hub: str | None = None


@dataclass(frozen=True, slots=True)
class RegistrationOperation:
    """One register call of a device: ``assigning`` until a hub is chosen, then terminal.

    ``state`` is what the device is told (its registration state, or the failure);
    ``enrollment_group_id`` says which group attested it, if any; ``authentication_key``:
    for a TPM device assigned, the activation blob (base64) of its hub identity's key,
    which only its TPM can open.
    """

    operation_id: str
    registration_id: str
    status: RegistrationStatus
    created: datetime
    last_updated: datetime
    state: DeviceRegistrationState | None = None
    enrollment_group_id: str | None = None
    attestation_type: str | None = None
    authentication_key: str | None = None

    @property
    def etag(self) -> str:
        return self.operation_id

    @property
    def finished(self) -> bool:
        return self.status not in (RegistrationStatus.ASSIGNING, RegistrationStatus.UNASSIGNED)

    def settled(
        self,
        state: DeviceRegistrationState,
        at: datetime,
        authentication_key: str | None = None,
    ) -> RegistrationOperation:
        """This operation ended in ``state`` at ``at``."""
        return RegistrationOperation(
            self.operation_id,
            self.registration_id,
            state.status,
            self.created,
            at,
            state,
            self.enrollment_group_id,
            self.attestation_type,
            authentication_key,
        )
