"""Use cases for linked IoT hubs: link, list, unlink."""

from __future__ import annotations

from dataclasses import dataclass

from dpsd.domain.enrollment import EnrollmentSettings
from dpsd.domain.errors import ValidationError
from dpsd.domain.etag import new_etag
from dpsd.domain.hub import (
    MAX_LINKED_HUBS,
    LinkedHub,
    check_host_name,
    check_weight,
    connection_string_host,
)
from dpsd.service import records
from dpsd.service.errors import AlreadyExists, NotFound
from dpsd.service.ports import Entropy, HubRepository


class HubNotFound(NotFound):
    def __init__(self, host_name: str) -> None:
        super().__init__(f"IoT hub {host_name!r} is not linked")


class HubAlreadyLinked(AlreadyExists):
    def __init__(self, host_name: str) -> None:
        super().__init__(f"IoT hub {host_name!r} is linked already")


@dataclass(frozen=True, slots=True)
class HubService:
    hubs: HubRepository
    entropy: Entropy

    async def link(
        self,
        host_name: str,
        *,
        connection_string: str | None = None,
        weight: int = 1,
        apply_allocation_policy: bool = True,
        location: str | None = None,
    ) -> LinkedHub:
        check_host_name(host_name)
        check_weight(weight)
        if connection_string is not None:
            named = connection_string_host(connection_string)
            if named is None or named.lower() != host_name.lower():
                raise ValidationError(
                    f"the connection string's HostName must be {host_name!r}, not {named!r}"
                )
        if len(await self.hubs.list()) >= MAX_LINKED_HUBS:
            raise ValidationError(f"the service links {MAX_LINKED_HUBS} IoT hubs, its limit")
        hub = LinkedHub(
            host_name=host_name,
            etag=new_etag(self.entropy.random_bytes(16)),
            allocation_weight=weight,
            apply_allocation_policy=apply_allocation_policy,
            location=location,
            connection_string=connection_string,
        )
        if not await self.hubs.add(hub):
            raise HubAlreadyLinked(host_name)
        return hub

    async def list(self) -> list[LinkedHub]:
        return await self.hubs.list()

    async def unlink(self, host_name: str) -> None:
        await records.delete(self.hubs, host_name, None, lambda: HubNotFound(host_name))


def named_hubs(settings: EnrollmentSettings) -> list[str]:
    """The IoT hubs an enrollment names, each once, in the order named."""
    named = [
        *(settings.iot_hubs or ()),
        *([settings.iot_hub_host_name] if settings.iot_hub_host_name else []),
    ]
    return list(dict.fromkeys(named))


async def check_linked(hubs: HubRepository, settings: EnrollmentSettings) -> None:
    """An enrollment may only name IoT hubs linked to the service."""
    named = named_hubs(settings)
    if not named:
        return
    missing = await hubs.missing(named)
    if missing:
        name = missing[0]
        raise ValidationError(
            f"IoT hub {name!r} is not linked to this service (dpsd hub add {name})"
        )
