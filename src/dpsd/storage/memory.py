"""In-memory repositories: the reference behaviour of the storage ports, for tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from dpsd.domain.attestation import AttestationType
from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment import EnrollmentSettings, IndividualEnrollment
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.hub import LinkedHub
from dpsd.domain.hub_device import HubDevice
from dpsd.domain.ids import id_key
from dpsd.domain.query import BooleanOp, Comparison, Condition, Not
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.tpm_keys import TpmChallenge, TpmHubKey
from dpsd.service.records import Dated
from dpsd.service.references import Settled, named_hubs

FieldValue = str | bool | None
_ID_FIELDS = frozenset({"registrationId", "enrollmentGroupId"})


class Versioned(Protocol):
    @property
    def etag(self) -> str: ...


class Linked(Dated, Settled, Protocol):
    """A record with enrollment settings, which name IoT hubs."""


R = TypeVar("R", bound=Versioned)
D = TypeVar("D", bound=Linked)


def _settings_fields(settings: EnrollmentSettings) -> dict[str, FieldValue]:
    return {
        "provisioningStatus": settings.provisioning_status.value,
        "iotHubHostName": settings.iot_hub_host_name,
        "attestation.type": settings.attestation.type.value,
        "allocationPolicy": settings.allocation_policy.value
        if settings.allocation_policy
        else None,
        "capabilities.iotEdge": settings.capabilities.iot_edge,
    }


def enrollment_fields(record: IndividualEnrollment) -> dict[str, FieldValue]:
    return {
        "registrationId": id_key(record.registration_id),
        "deviceId": record.device_id,
        **_settings_fields(record.settings),
    }


def group_fields(record: EnrollmentGroup) -> dict[str, FieldValue]:
    return {
        "enrollmentGroupId": id_key(record.enrollment_group_id),
        **_settings_fields(record.settings),
    }


def matches(fields: dict[str, FieldValue], condition: Condition) -> bool:
    """SQL semantics: a comparison with a missing value is false, either way round."""
    match condition:
        case Comparison(field=field, operator=operator, value=value):
            actual = fields[field]
            if field in _ID_FIELDS and isinstance(value, str):
                value = id_key(value)
            if value is None:
                return (actual is None) == (operator == "=")
            if actual is None:
                return False
            return (actual == value) == (operator == "=")
        case Not(operand=operand):
            return not matches(fields, operand)
        case BooleanOp(operator="and", operands=operands):
            return all(matches(fields, operand) for operand in operands)
        case BooleanOp(operands=operands):
            return any(matches(fields, operand) for operand in operands)


class InMemoryDocumentRepository(Generic[R]):
    def __init__(
        self,
        record_id: Callable[[R], str],
        fields: Callable[[R], dict[str, FieldValue]] = lambda _record: {},
    ) -> None:
        self._records: dict[str, R] = {}
        self._record_id = record_id
        self._fields = fields

    async def get(self, record_id: str) -> R | None:
        return self._records.get(id_key(record_id))

    async def add(self, record: R) -> bool:
        key = id_key(self._record_id(record))
        if key in self._records:
            return False
        self._records[key] = record
        return True

    async def replace(self, record: R, *, expected_etag: str) -> bool:
        key = id_key(self._record_id(record))
        current = self._records.get(key)
        if current is None or current.etag != expected_etag:
            return False
        self._records[key] = record
        return True

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool:
        key = id_key(record_id)
        current = self._records.get(key)
        if current is None or (expected_etag is not None and current.etag != expected_etag):
            return False
        del self._records[key]
        return True

    async def put(self, record: R) -> None:
        """Insert, or replace whatever is stored under the record's id."""
        self._records[id_key(self._record_id(record))] = record

    async def query(self, where: Condition | None, *, after: str | None, limit: int) -> list[R]:
        return self._select(
            lambda record: where is None or matches(self._fields(record), where), after, limit
        )

    def _select(self, keep: Callable[[R], bool], after: str | None, limit: int) -> list[R]:
        keys = sorted(key for key in self._records if after is None or key > after)
        return [self._records[key] for key in keys if keep(self._records[key])][:limit]


class InMemoryLinkedRepository(InMemoryDocumentRepository[D]):
    """Records that name IoT hubs. ``hubs``: where linked hubs are looked up; without it,
    no hub counts as linked."""

    def __init__(
        self,
        record_id: Callable[[D], str],
        fields: Callable[[D], dict[str, FieldValue]],
        hubs: InMemoryHubRepository | None,
    ) -> None:
        super().__init__(record_id, fields)
        self._hubs = hubs

    async def _linked(self, hubs: Sequence[str]) -> bool:
        if not hubs:
            return True
        return self._hubs is not None and not await self._hubs.missing(hubs)

    async def add_linked(self, record: D, *, hubs: Sequence[str]) -> bool | None:
        if not await self._linked(hubs):
            return None
        return await self.add(record)

    async def overwrite(
        self, record: D, *, expected_etag: str | None, hubs: Sequence[str] = ()
    ) -> datetime | None:
        key = id_key(self._record_id(record))
        current = self._records.get(key)
        if current is None or (expected_etag is not None and current.etag != expected_etag):
            return None
        if not await self._linked(hubs):
            return None
        self._records[key] = replace(record, created=current.created)
        return current.created

    async def naming_hub(self, host_name: str, *, after: str | None, limit: int) -> list[D]:
        """Exactly the records that name the hub."""
        key = id_key(host_name)

        def names_it(record: D) -> bool:
            return key in map(id_key, named_hubs(record.settings))

        return self._select(names_it, after, limit)


class InMemoryEnrollmentRepository(InMemoryLinkedRepository[IndividualEnrollment]):
    def __init__(self, hubs: InMemoryHubRepository | None = None) -> None:
        super().__init__(lambda record: record.registration_id, enrollment_fields, hubs)


class InMemoryEnrollmentGroupRepository(InMemoryLinkedRepository[EnrollmentGroup]):
    def __init__(self, hubs: InMemoryHubRepository | None = None) -> None:
        super().__init__(lambda record: record.enrollment_group_id, group_fields, hubs)


class InMemoryCertificateRepository(InMemoryDocumentRepository[CACertificate]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.name)

    async def list(self) -> list[CACertificate]:
        return self._select(lambda _record: True, None, len(self._records))


class InMemoryHubRepository(InMemoryDocumentRepository[LinkedHub]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.host_name)

    async def missing(self, host_names: Sequence[str]) -> list[str]:
        return [name for name in host_names if id_key(name) not in self._records]

    async def list(self) -> list[LinkedHub]:
        return self._select(lambda _record: True, None, len(self._records))


class InMemoryOperationRepository(InMemoryDocumentRepository[RegistrationOperation]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.operation_id)

    async def save(self, operation: RegistrationOperation) -> None:
        await self.put(operation)

    async def delete_older_than(self, moment: datetime) -> None:
        for key in [key for key, record in self._records.items() if record.created < moment]:
            del self._records[key]


class InMemoryRegistrationStateRepository(InMemoryDocumentRepository[DeviceRegistrationState]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.registration_id)
        self._operations: dict[str, RegistrationOperation] = {}  # what left each state

    async def add(self, record: DeviceRegistrationState) -> bool:
        added = await super().add(record)
        if added:
            self._operations.pop(id_key(record.registration_id), None)
        return added

    async def replace(self, record: DeviceRegistrationState, *, expected_etag: str) -> bool:
        replaced = await super().replace(record, expected_etag=expected_etag)
        if replaced:
            self._operations.pop(id_key(record.registration_id), None)
        return replaced

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool:
        deleted = await super().delete(record_id, expected_etag=expected_etag)
        if deleted:
            self._operations.pop(id_key(record_id), None)
        return deleted

    async def put(self, record: DeviceRegistrationState) -> None:
        await super().put(record)
        self._operations.pop(id_key(record.registration_id), None)

    async def record_finished(self, operation: RegistrationOperation) -> None:
        state = operation.state
        assert state is not None
        assert state.registration_id == operation.registration_id
        await super().put(state)
        self._operations[id_key(state.registration_id)] = operation

    async def finished_operation(
        self, registration_id: str, operation_id: str
    ) -> RegistrationOperation | None:
        operation = self._operations.get(id_key(registration_id))
        return operation if operation and operation.operation_id == operation_id else None

    async def query_group(
        self, enrollment_group_id: str, *, after: str | None, limit: int
    ) -> list[DeviceRegistrationState]:
        group = id_key(enrollment_group_id)

        def belongs(state: DeviceRegistrationState) -> bool:
            return (
                state.enrollment_group_id is not None and id_key(state.enrollment_group_id) == group
            )

        return self._select(belongs, after, limit)


class InMemoryRegistrationReads:
    """The reads of a registration from the repositories that hold each kind."""

    def __init__(
        self,
        enrollments: InMemoryEnrollmentRepository,
        groups: InMemoryEnrollmentGroupRepository,
        states: InMemoryRegistrationStateRepository,
        hubs: InMemoryHubRepository,
    ) -> None:
        self._enrollments = enrollments
        self._groups = groups
        self._states = states
        self._hubs = hubs

    async def enrollment_or_groups(
        self, registration_id: str, attestation: AttestationType, limit: int
    ) -> tuple[IndividualEnrollment | None, list[EnrollmentGroup]]:
        enrollment = await self._enrollments.get(registration_id)
        if enrollment is not None:
            return enrollment, []
        of_type = Comparison("attestation.type", "=", attestation.value)
        return None, await self._groups.query(of_type, after=None, limit=limit)

    async def state_and_hubs(
        self, registration_id: str
    ) -> tuple[DeviceRegistrationState | None, list[LinkedHub]]:
        return await self._states.get(registration_id), await self._hubs.list()


class InMemoryHubDeviceRepository:
    """Devices of built-in hubs, keyed by (lower-cased hub host name, exact device id)."""

    def __init__(self) -> None:
        self._devices: dict[tuple[str, str], HubDevice] = {}

    async def get(self, hub: str, device_id: str) -> HubDevice | None:
        return self._devices.get((id_key(hub), device_id))

    async def add(self, device: HubDevice) -> bool:
        key = (id_key(device.hub), device.device_id)
        if key in self._devices:
            return False
        self._devices[key] = device
        return True

    async def replace(self, device: HubDevice, *, expected: HubDevice) -> bool:
        key = (id_key(expected.hub), expected.device_id)
        current = self._devices.get(key)
        if current is None or _versions(current) != _versions(expected):
            return False
        self._devices[key] = device
        return True

    async def delete(self, hub: str, device_id: str, *, device_version: int | None = None) -> bool:
        key = (id_key(hub), device_id)
        current = self._devices.get(key)
        if current is None:
            return False
        if device_version is not None and current.device_version != device_version:
            return False
        del self._devices[key]
        return True

    async def list(self, hub: str, *, after: str | None, limit: int) -> list[HubDevice]:
        hub_key = id_key(hub)
        ids = sorted(
            device_id
            for key, device_id in self._devices
            if key == hub_key and (after is None or device_id > after)
        )
        return [self._devices[(hub_key, device_id)] for device_id in ids[:limit]]

    async def delete_hub(self, hub: str) -> None:
        hub_key = id_key(hub)
        for key in [key for key in self._devices if key[0] == hub_key]:
            del self._devices[key]


def _versions(device: HubDevice) -> tuple[int, int]:
    return device.device_version, device.twin_version


class InMemoryTpmChallengeRepository(InMemoryDocumentRepository[TpmChallenge]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.registration_id)

    async def delete_expired(self, moment: datetime) -> None:
        for key in [key for key, record in self._records.items() if record.expires < moment]:
            del self._records[key]


class InMemoryTpmHubKeyRepository(InMemoryDocumentRepository[TpmHubKey]):
    def __init__(self) -> None:
        super().__init__(lambda record: record.registration_id)
