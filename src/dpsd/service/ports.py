"""What the use cases need from the outside world, as protocols the adapters implement."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from dpsd.domain.enrollment import IndividualEnrollment
from dpsd.domain.query import Condition
from dpsd.domain.registration import DeviceRegistrationState
from dpsd.domain.sas import SharedAccessPolicy


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

    async def delete(self, registration_id: str, *, expected_etag: str | None) -> bool:
        """Delete (only at ``expected_etag`` when given); False when nothing matched."""
        ...

    async def query(
        self, where: Condition | None, *, after: str | None, limit: int
    ) -> list[IndividualEnrollment]:
        """Records matching ``where`` in id order, starting after the id key ``after``."""
        ...


class RegistrationStateRepository(Protocol):
    async def get(self, registration_id: str) -> DeviceRegistrationState | None: ...


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
