"""Use cases for device registration states: read, delete, list by enrollment group."""

from __future__ import annotations

from dataclasses import dataclass

from dpsd.domain.ids import id_key, validate_registration_id
from dpsd.domain.registration import DeviceRegistrationState
from dpsd.service import records
from dpsd.service.errors import RegistrationStateNotFound
from dpsd.service.ports import RegistrationStateStore
from dpsd.service.records import Page

_PAGING_KIND = "r1"


@dataclass(frozen=True, slots=True)
class RegistrationStateService:
    states: RegistrationStateStore

    async def get(self, registration_id: str) -> DeviceRegistrationState:
        validate_registration_id(registration_id, what="id")
        state = await self.states.get(registration_id)
        if state is None:
            raise RegistrationStateNotFound(registration_id)
        return state

    async def delete(self, registration_id: str, if_match: str | None) -> None:
        """Registration records cannot be changed, only deleted (optionally at an etag)."""
        validate_registration_id(registration_id, what="id")
        await records.delete(
            self.states,
            registration_id,
            if_match,
            lambda: RegistrationStateNotFound(registration_id),
        )

    async def query(
        self, enrollment_group_id: str, continuation: str | None, max_items: int | None
    ) -> Page[DeviceRegistrationState]:
        """The states of devices that registered through ``enrollment_group_id``."""
        validate_registration_id(enrollment_group_id, what="enrollment group id")
        return await records.read_page(
            _PAGING_KIND,
            continuation,
            max_items,
            lambda after, limit: self.states.query_group(
                enrollment_group_id, after=after, limit=limit
            ),
            lambda item: id_key(item.registration_id),
        )
