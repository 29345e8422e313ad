"""Use cases of the IoT hubs dpsd serves itself: the device registry and twins.

A built-in hub is a linked hub with its own shared access policies (``LinkedHub.builtin``);
its devices live in dpsd's store. These use cases are what its REST API (IoT Hub's service
API subset) calls; dpsd's provisioning reaches them over that API too, like any IoT hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dpsd.domain.hub import LinkedHub
from dpsd.domain.hub_device import DeviceIdentity, HubDevice, TwinContent
from dpsd.service.errors import AlreadyExists, NotFound
from dpsd.service.ports import Clock, Entropy, HubDeviceRepository, HubRepository


class HubNotServed(NotFound):
    def __init__(self, host_name: str) -> None:
        super().__init__(f"{host_name!r} is not an IoT hub that dpsd serves")


class HubDeviceNotFound(NotFound):
    def __init__(self, device_id: str) -> None:
        super().__init__(device_id)
        self.device_id = device_id


class HubDeviceAlreadyExists(AlreadyExists):
    def __init__(self, device_id: str) -> None:
        super().__init__(f"A device with ID '{device_id}' is already registered")
        self.device_id = device_id


@dataclass(frozen=True, slots=True)
class HubQueryPage:
    """One page of a hub query: devices for ``SELECT *`` (``raw`` None), or raw rows for
    projections and aggregates (``SELECT COUNT() AS n``); ``continuation`` only when more
    pages follow."""

    devices: list[HubDevice]
    raw: list[dict[str, Any]] | None
    continuation: str | None
    page_size: int


@dataclass(frozen=True, slots=True)
class HubRegistryService:
    hubs: HubRepository
    devices: HubDeviceRepository
    clock: Clock
    entropy: Entropy

    async def served_hub(self, host_name: str) -> LinkedHub | None:
        """The built-in hub with that host name (case-insensitive, port aside), if any."""
        raise NotImplementedError

    async def create_or_update_device(
        self, hub: str, path_id: str, identity: DeviceIdentity, if_match: str | None
    ) -> HubDevice:
        """``PUT /devices/{id}``: create without If-Match (409 when it exists); with If-Match
        (``*`` or the device etag) update the identity, keeping the twin."""
        raise NotImplementedError

    async def get_device(self, hub: str, device_id: str) -> HubDevice:
        raise NotImplementedError

    async def delete_device(self, hub: str, device_id: str, if_match: str | None) -> None:
        raise NotImplementedError

    async def list_devices(self, hub: str, top: int | None) -> list[HubDevice]:
        raise NotImplementedError

    async def update_twin(
        self, hub: str, device_id: str, patch: TwinContent, if_match: str | None
    ) -> HubDevice:
        """``PATCH /twins/{id}``: merge tags and desired properties (null removes a key)."""
        raise NotImplementedError

    async def replace_twin(
        self, hub: str, device_id: str, content: TwinContent, if_match: str | None
    ) -> HubDevice:
        """``PUT /twins/{id}``: tags and desired properties become exactly ``content``."""
        raise NotImplementedError

    async def query(
        self, hub: str, text: str, continuation: str | None, max_items: int | None
    ) -> HubQueryPage:
        raise NotImplementedError
