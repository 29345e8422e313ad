"""What the use cases need from the outside world, as protocols the adapters implement."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from dpsd.domain.attestation import AttestationType
from dpsd.domain.ca_certificate import CACertificate
from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.enrollment_group import EnrollmentGroup
from dpsd.domain.hub import LinkedHub
from dpsd.domain.hub_device import DeviceIdentity, HubDevice, TwinContent
from dpsd.domain.query import Condition
from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation
from dpsd.domain.sas import SharedAccessPolicy
from dpsd.domain.tpm_keys import TpmChallenge, TpmHubKey


class EnrollmentRepository(Protocol):
    """Individual enrollments, keyed case-insensitively by registration id.

    Every method is atomic on its own. Conditional writes compare etags inside the store.
    """

    async def get(self, registration_id: str) -> IndividualEnrollment | None: ...

    async def add(self, enrollment: IndividualEnrollment) -> bool:
        """Insert; False when a record with that id exists already."""
        ...

    async def replace(self, enrollment: IndividualEnrollment, *, expected_etag: str) -> bool:
        """Overwrite the record whose etag is ``expected_etag``; False when there is none."""
        ...

    async def add_linked(
        self, enrollment: IndividualEnrollment, *, hubs: Sequence[str]
    ) -> bool | None:
        """Insert, in one atomic step with the check that every hub in ``hubs`` is linked:
        True when written; False when a record with that id exists already; None when some
        hub is not linked (or the store cannot tell: then nothing was written either)."""
        ...

    async def overwrite(
        self,
        enrollment: IndividualEnrollment,
        *,
        expected_etag: str | None,
        hubs: Sequence[str] = (),
    ) -> datetime | None:
        """Overwrite the stored record with ``enrollment`` but keep its creation time, in one
        atomic step, at ``expected_etag`` when given (at whatever etag otherwise) and only
        when every hub in ``hubs`` is linked. The creation time kept, or None when nothing
        was written (no record matched, some hub is not linked, or the store cannot tell)."""
        ...

    async def delete(self, registration_id: str, *, expected_etag: str | None) -> bool:
        """Delete (only at ``expected_etag`` when given); False when nothing matched."""
        ...

    async def query(
        self, where: Condition | None, *, after: str | None, limit: int
    ) -> list[IndividualEnrollment]:
        """Records matching ``where`` in id order, starting after the id key ``after``."""
        ...

    async def naming_hub(
        self, host_name: str, *, after: str | None, limit: int
    ) -> list[IndividualEnrollment]:
        """Records that may name the IoT hub, in id order after the id key ``after``: every
        record naming it (in iotHubs or iotHubHostName, in any case), and perhaps others
        that hold its name elsewhere, for the caller to tell apart. A scan: for unlinking."""
        ...


class RegistrationStateRepository(Protocol):
    async def get(self, registration_id: str) -> DeviceRegistrationState | None: ...

    async def delete(self, registration_id: str, *, expected_etag: str | None) -> bool: ...


class InstanceRepository(Protocol):
    """The identity of a DPS instance, shared by every dpsd process on the same store."""

    async def ensure(
        self, id_scope: str, policies: list[SharedAccessPolicy]
    ) -> tuple[str, list[SharedAccessPolicy]]:
        """Store the given identity unless one exists; return the stored one."""
        ...


class Clock(Protocol):
    def now(self) -> datetime: ...


class Entropy(Protocol):
    def random_bytes(self, count: int) -> bytes: ...


class EnrollmentGroupRepository(Protocol):
    """Enrollment groups, keyed case-insensitively by group id; atomic like enrollments."""

    async def get(self, record_id: str) -> EnrollmentGroup | None: ...

    async def add(self, record: EnrollmentGroup) -> bool: ...

    async def replace(self, record: EnrollmentGroup, *, expected_etag: str) -> bool: ...

    async def add_linked(self, record: EnrollmentGroup, *, hubs: Sequence[str]) -> bool | None:
        """As EnrollmentRepository.add_linked."""
        ...

    async def overwrite(
        self, record: EnrollmentGroup, *, expected_etag: str | None, hubs: Sequence[str] = ()
    ) -> datetime | None:
        """As EnrollmentRepository.overwrite: the stored creation time is kept."""
        ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...

    async def query(
        self, where: Condition | None, *, after: str | None, limit: int
    ) -> list[EnrollmentGroup]: ...

    async def naming_hub(
        self, host_name: str, *, after: str | None, limit: int
    ) -> list[EnrollmentGroup]:
        """As EnrollmentRepository.naming_hub."""
        ...


class CertificateRepository(Protocol):
    """CA certificates registered with the service, keyed case-insensitively by name."""

    async def get(self, record_id: str) -> CACertificate | None: ...

    async def add(self, record: CACertificate) -> bool: ...

    async def replace(self, record: CACertificate, *, expected_etag: str) -> bool: ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...

    async def list(self) -> list[CACertificate]: ...


class RegistrationStateStore(Protocol):
    """Device registration states: read, deleted at an etag, listed by enrollment group."""

    async def get(self, record_id: str) -> DeviceRegistrationState | None: ...

    async def add(self, record: DeviceRegistrationState) -> bool: ...

    async def replace(self, record: DeviceRegistrationState, *, expected_etag: str) -> bool: ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...

    async def put(self, state: DeviceRegistrationState) -> None: ...

    async def record_finished(self, operation: RegistrationOperation) -> None:
        """Store the state a finished operation leaves (``operation.state``) and the
        operation with it, in one write: ``finished_operation`` reads it back until the
        state is written or deleted again."""
        ...

    async def finished_operation(
        self, registration_id: str, operation_id: str
    ) -> RegistrationOperation | None:
        """Operation ``operation_id`` of the device, when it is the one that left its
        registration state as it stands."""
        ...

    async def query_group(
        self, enrollment_group_id: str, *, after: str | None, limit: int
    ) -> list[DeviceRegistrationState]: ...


class HubRepository(Protocol):
    """IoT hubs linked to the service, keyed case-insensitively by host name."""

    async def get(self, record_id: str) -> LinkedHub | None: ...

    async def missing(self, host_names: Sequence[str]) -> list[str]:
        """Those of ``host_names`` that name no linked hub, in the order given."""
        ...

    async def add(self, record: LinkedHub) -> bool: ...

    async def replace(self, record: LinkedHub, *, expected_etag: str) -> bool: ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...

    async def list(self) -> list[LinkedHub]: ...


class RegistrationReads(Protocol):
    """The reads of a device registration that span kinds of record, each in one statement
    (on PostgreSQL one round trip, not two)."""

    async def enrollment_or_groups(
        self, registration_id: str, attestation: AttestationType, limit: int
    ) -> tuple[IndividualEnrollment | None, list[EnrollmentGroup]]:
        """The device's individual enrollment (of any attestation) and no group; when it
        has none, the first ``limit`` enrollment groups of ``attestation``, by id."""
        ...

    async def state_and_hubs(
        self, registration_id: str
    ) -> tuple[DeviceRegistrationState | None, list[LinkedHub]]:
        """The device's registration state, and every linked IoT hub (by host name)."""
        ...


class OperationRepository(Protocol):
    """Device registration operations, readable by every dpsd process on the store."""

    async def get(self, record_id: str) -> RegistrationOperation | None: ...

    async def save(self, operation: RegistrationOperation) -> None: ...

    async def add(self, record: RegistrationOperation) -> bool:
        """Store a new operation; False (nothing written) when one with its id is stored
        already (its later status, say)."""
        ...

    async def delete_older_than(self, moment: datetime) -> None: ...


class TpmChallengeRepository(Protocol):
    """The latest challenge of each TPM registration, keyed case-insensitively by
    registration id, shared by every dpsd process on the store."""

    async def get(self, record_id: str) -> TpmChallenge | None: ...

    async def put(self, record: TpmChallenge) -> None:
        """Store a new challenge, replacing the registration's previous one."""
        ...

    async def replace(self, record: TpmChallenge, *, expected_etag: str) -> bool:
        """Overwrite the challenge whose etag is ``expected_etag``; False when a new
        challenge replaced it (or it was deleted)."""
        ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...

    async def delete_expired(self, moment: datetime) -> None:
        """Forget every challenge whose key expired before ``moment``."""
        ...


class TpmHubKeyRepository(Protocol):
    """The hub identity key of each TPM registration."""

    async def get(self, record_id: str) -> TpmHubKey | None: ...

    async def put(self, record: TpmHubKey) -> None: ...

    async def delete(self, record_id: str, *, expected_etag: str | None) -> bool: ...


class TrustedCertificates(Protocol):
    """Where device TLS handshakes are checked: told of every certificate that can vouch
    for a device (X.509 enrollments' certificates, verified CA certificates)."""

    def trust(self, certificates: Iterable[str]) -> None: ...


class NoTrust:
    """For use cases run where no device handshakes happen (tests, the CLI)."""

    def trust(self, certificates: Iterable[str]) -> None:
        del certificates


@dataclass(frozen=True, slots=True)
class CustomAllocationRequest:
    """What a custom allocation webhook is told (the record is the enrollment's own)."""

    webhook_url: str
    api_version: str
    individual_enrollment: IndividualEnrollment | None
    enrollment_group: EnrollmentGroup | None
    registration_id: str
    linked_hubs: tuple[str, ...]
    attestation_type: str
    current_hub: str | None = None
    current_device_id: str | None = None
    payload: Any = None


@dataclass(frozen=True, slots=True)
class CustomAllocationResult:
    iot_hub_host_name: str
    initial_twin: dict[str, Any] | None = None
    payload: Any = None


class CustomAllocator(Protocol):
    """Asks an enrollment's webhook which hub a device goes to. Raises AllocationFailed
    (from the domain) when the webhook fails, times out or answers nonsense."""

    async def allocate(self, request: CustomAllocationRequest) -> CustomAllocationResult: ...


class HubDeviceRepository(Protocol):
    """The devices of the hubs dpsd serves itself, keyed by hub host name (case-insensitive)
    and device id (case-sensitive, as IoT Hub's are). Every method is atomic on its own;
    conditional writes compare ``device_version`` / ``twin_version`` inside the store."""

    async def get(self, hub: str, device_id: str) -> HubDevice | None: ...

    async def add(self, device: HubDevice) -> bool:
        """Insert; False when the hub has a device with that id already."""
        ...

    async def replace(self, device: HubDevice, *, expected: HubDevice) -> bool:
        """Overwrite ``expected`` (as read) with ``device``; False when the stored record
        is no longer ``expected`` (its versions moved on, or it was deleted)."""
        ...

    async def delete(self, hub: str, device_id: str, *, device_version: int | None = None) -> bool:
        """Delete (only while the stored ``device_version`` is the one given, when given);
        False when nothing matched."""
        ...

    async def list(self, hub: str, *, after: str | None, limit: int) -> list[HubDevice]:
        """Devices of ``hub`` in device id order, starting after the id ``after``."""
        ...

    async def delete_hub(self, hub: str) -> None:
        """Forget every device of ``hub`` (when the hub is unlinked)."""
        ...


@dataclass(frozen=True, slots=True)
class HubConnection:
    """How dpsd reaches a linked hub's registry: its host name and a policy that may write
    devices. ``builtin``: a hub dpsd serves itself (reached on dpsd's own listener)."""

    host_name: str
    policy_name: str
    key: str
    builtin: bool = False


class HubRegistryError(Exception):
    """A hub's registry did not do what was asked: ``status`` is the HTTP status it
    answered (None when it could not be reached or did not answer in time) and
    ``message`` what it said (its error body), never a key."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class IotHubRegistry(Protocol):
    """The service side of an IoT hub's registry (Azure IoT Hub's REST API, which dpsd's
    built-in hubs serve too). Every method raises HubRegistryError on failure."""

    async def put_device(self, hub: HubConnection, identity: DeviceIdentity) -> None:
        """Create the device, or update it when it exists (keeping what ``identity`` does
        not say: its twin, its generation)."""
        ...

    async def get_twin(self, hub: HubConnection, device_id: str) -> TwinContent | None:
        """The device's tags and desired properties; None when the hub has no such device."""
        ...

    async def replace_twin(self, hub: HubConnection, device_id: str, twin: TwinContent) -> None:
        """Set the twin's tags and desired properties to exactly ``twin``."""
        ...

    async def delete_device(self, hub: HubConnection, device_id: str) -> None:
        """Delete the device; a device that is not there counts as deleted."""
        ...
