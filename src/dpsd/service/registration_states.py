"""Use cases for device registration states: read, delete, list by enrollment group."""

from __future__ import annotations

from dataclasses import dataclass

from dpsd.domain.ids import id_key, validate_registration_id
from dpsd.domain.registration import DeviceRegistrationState
from dpsd.service import records
from dpsd.service.errors import RegistrationStateNotFound
from dpsd.service.ports import RegistrationStateStore

_PAGING_KIND = "r1"


@dataclass(frozen=True, slots=True)
class StatePage:
    items: list[DeviceRegistrationState]
    continuation: str | None
    page_size: int


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
    ) -> StatePage:
        """The states of devices that registered through ``enrollment_group_id``."""
        validate_registration_id(enrollment_group_id, what="enrollment group id")
        size = records.page_size(max_items)
        after = records.decode_continuation(_PAGING_KIND, continuation) if continuation else None
        rows = await self.states.query_group(enrollment_group_id, after=after, limit=size + 1)
        items = rows[:size]
        token = None
        if len(rows) > size:
            token = records.encode_continuation(_PAGING_KIND, id_key(items[-1].registration_id))
        return StatePage(items=items, continuation=token, page_size=size)
