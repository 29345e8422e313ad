"""In-memory repositories: the reference behaviour of the storage ports, for tests."""

from __future__ import annotations

from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.ids import id_key
from dpsd.domain.query import BooleanOp, Comparison, Condition, Not
from dpsd.domain.registration import DeviceRegistrationState


def _field_value(enrollment: IndividualEnrollment, field: str) -> str | bool | None:
    settings = enrollment.settings
    values: dict[str, str | bool | None] = {
        "registrationId": id_key(enrollment.registration_id),
        "deviceId": enrollment.device_id,
        "provisioningStatus": settings.provisioning_status.value,
        "iotHubHostName": settings.iot_hub_host_name,
        "attestation.type": settings.attestation.type.value,
        "allocationPolicy": settings.allocation_policy.value
        if settings.allocation_policy
        else None,
        "capabilities.iotEdge": settings.capabilities.iot_edge,
    }
    return values[field]


def matches(enrollment: IndividualEnrollment, condition: Condition) -> bool:
    """SQL semantics: a comparison with a missing value is false, either way round."""
    match condition:
        case Comparison(field=field, operator=operator, value=value):
            actual = _field_value(enrollment, field)
            if field == "registrationId" and isinstance(value, str):
                value = id_key(value)
            if value is None:
                return (actual is None) == (operator == "=")
            if actual is None:
                return False
            return (actual == value) == (operator == "=")
        case Not(operand=operand):
            return not matches(enrollment, operand)
        case BooleanOp(operator="and", operands=operands):
            return all(matches(enrollment, operand) for operand in operands)
        case BooleanOp(operands=operands):
            return any(matches(enrollment, operand) for operand in operands)


class InMemoryEnrollmentRepository:
    def __init__(self) -> None:
        self._records: dict[str, IndividualEnrollment] = {}

    async def get(self, registration_id: str) -> IndividualEnrollment | None:
        return self._records.get(id_key(registration_id))

    async def add(self, enrollment: IndividualEnrollment) -> bool:
        key = id_key(enrollment.registration_id)
        if key in self._records:
            return False
        self._records[key] = enrollment
        return True

    async def replace(self, enrollment: IndividualEnrollment, *, expected_etag: str) -> bool:
        key = id_key(enrollment.registration_id)
        current = self._records.get(key)
        if current is None or current.etag != expected_etag:
            return False
        self._records[key] = enrollment
        return True

    async def delete(self, registration_id: str, *, expected_etag: str | None) -> bool:
        key = id_key(registration_id)
        current = self._records.get(key)
        if current is None or (expected_etag is not None and current.etag != expected_etag):
            return False
        del self._records[key]
        return True

    async def query(
        self, where: Condition | None, *, after: str | None, limit: int
    ) -> list[IndividualEnrollment]:
        keys = sorted(key for key in self._records if after is None or key > after)
        found = [self._records[key] for key in keys]
        if where is not None:
            found = [record for record in found if matches(record, where)]
        return found[:limit]


class InMemoryRegistrationStateRepository:
    def __init__(self) -> None:
        self._states: dict[str, DeviceRegistrationState] = {}

    async def get(self, registration_id: str) -> DeviceRegistrationState | None:
        return self._states.get(id_key(registration_id))

    async def put(self, state: DeviceRegistrationState) -> None:
        self._states[id_key(state.registration_id)] = state
