"""Use cases of the IoT hubs dpsd serves itself: the device registry and twins.

A built-in hub is a linked hub with its own shared access policies (``LinkedHub.builtin``);
its devices live in dpsd's store. These use cases are what its REST API (IoT Hub's service
API subset) calls; dpsd's provisioning reaches them over that API too, like any IoT hub.
The caller finds the hub a request is for once (``served_hub``, by the request's host name)
and hands it to every use case, which acts on it without looking it up again.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dpsd.domain.errors import ValidationError
from dpsd.domain.etag import WILDCARD, normalize_if_match
from dpsd.domain.hub import LinkedHub
from dpsd.domain.hub_device import (
    DeviceIdentity,
    HubDevice,
    TwinContent,
    check_device_id,
    device_etag,
    new_hub_device,
    patch_twin,
    replace_twin,
    twin_etag,
    update_identity,
)
from dpsd.domain.hub_query import HubQuery, matches, parse_hub_query
from dpsd.service import records
from dpsd.service.errors import AlreadyExists, NotFound, PreconditionFailed
from dpsd.service.ports import Clock, Entropy, HubDeviceRepository, HubRepository

DEFAULT_LIST_TOP = 1000
MAX_LIST_TOP = 1000
# A write at "*" that loses a race to another writer reads again and retries this often.
_WRITE_ATTEMPTS = 5
# Devices read per step while a query filters them, and while COUNT() counts them.
_SCAN_BATCH = 1000
_QUERY_PAGING_KIND = "hub-devices"
_PORT = re.compile(r":[0-9]{1,5}$")


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
        exact = await self.hubs.get(host_name)
        if exact is not None and exact.builtin:
            return exact
        wanted = _host_part(host_name)
        for hub in await self.hubs.list():
            if hub.builtin and _host_part(hub.host_name) == wanted:
                return hub
        return None

    async def create_or_update_device(
        self, hub: LinkedHub, path_id: str, identity: DeviceIdentity, if_match: str | None
    ) -> HubDevice:
        """``PUT /devices/{id}``: create without If-Match (409 when it exists); with If-Match
        (``*`` or the device etag) update the identity, keeping the twin."""
        check_device_id(path_id)
        if identity.device_id != path_id:
            raise ValidationError(
                f"the deviceId in the body ({identity.device_id!r}) must be the one in the "
                f"path ({path_id!r})"
            )
        host = _host(hub)
        now = self.clock.now()
        random_bytes = self.entropy.random_bytes
        if if_match is None:
            device = new_hub_device(host, identity, now=now, random_bytes=random_bytes)
            if not await self.devices.add(device):
                raise HubDeviceAlreadyExists(path_id)
            return device
        return await self._rewrite(
            host,
            path_id,
            if_match,
            device_etag,
            lambda stored: update_identity(stored, identity, now=now, random_bytes=random_bytes),
        )

    async def get_device(self, hub: LinkedHub, device_id: str) -> HubDevice:
        device = await self.devices.get(_host(hub), device_id)
        if device is None:
            raise HubDeviceNotFound(device_id)
        return device

    async def delete_device(self, hub: LinkedHub, device_id: str, if_match: str | None) -> None:
        """``DELETE /devices/{id}``, at the device etag when If-Match names one: the store
        deletes only the version whose etag matched, so a write landing in between wins."""
        host = _host(hub)
        wanted = WILDCARD if if_match is None else normalize_if_match(if_match)
        for _ in range(_WRITE_ATTEMPTS):
            stored = await self.devices.get(host, device_id)
            if stored is None:
                raise HubDeviceNotFound(device_id)
            if wanted != WILDCARD and wanted != device_etag(stored):
                raise PreconditionFailed(device_id)
            version = None if wanted == WILDCARD else stored.device_version
            if await self.devices.delete(host, device_id, device_version=version):
                return
        raise PreconditionFailed(device_id)

    async def list_devices(self, hub: LinkedHub, top: int | None) -> list[HubDevice]:
        """``GET /devices?top=n``: the first ``top`` devices in id order (at most 1000)."""
        if top is not None and top < 1:
            raise ValidationError(f"top must be between 1 and {MAX_LIST_TOP}, not {top}")
        limit = DEFAULT_LIST_TOP if top is None else min(top, MAX_LIST_TOP)
        return await self.devices.list(_host(hub), after=None, limit=limit)

    async def update_twin(
        self, hub: LinkedHub, device_id: str, patch: TwinContent, if_match: str | None
    ) -> HubDevice:
        """``PATCH /twins/{id}``: merge tags and desired properties (null removes a key)."""
        now = self.clock.now()
        return await self._rewrite(
            _host(hub),
            device_id,
            if_match,
            twin_etag,
            lambda stored: patch_twin(stored, patch, now=now),
        )

    async def replace_twin(
        self, hub: LinkedHub, device_id: str, content: TwinContent, if_match: str | None
    ) -> HubDevice:
        """``PUT /twins/{id}``: tags and desired properties become exactly ``content``."""
        now = self.clock.now()
        return await self._rewrite(
            _host(hub),
            device_id,
            if_match,
            twin_etag,
            lambda stored: replace_twin(stored, content, now=now),
        )

    async def query(
        self, hub: LinkedHub, text: str, continuation: str | None, max_items: int | None
    ) -> HubQueryPage:
        """``POST /devices/query``: devices in id order, a page at a time, or for
        ``SELECT COUNT()`` one raw row counting every match (and no continuation)."""
        query = parse_hub_query(text)
        host = _host(hub)
        size = records.page_size(max_items)
        if query.count_alias is not None:
            count = await self._count(host, query)
            return HubQueryPage([], [{query.count_alias: count}], None, size)
        after = (
            records.decode_continuation(_QUERY_PAGING_KIND, continuation) if continuation else None
        )
        found = await self._matching(host, query, after, size + 1)
        devices = found[:size]
        token = None
        if len(found) > size:
            token = records.encode_continuation(_QUERY_PAGING_KIND, devices[-1].device_id)
        return HubQueryPage(devices, None, token, size)

    async def _rewrite(
        self,
        host: str,
        device_id: str,
        if_match: str | None,
        etag_of: Callable[[HubDevice], str],
        change: Callable[[HubDevice], HubDevice],
    ) -> HubDevice:
        """Write ``change(stored)`` over the stored device, if ``etag_of(stored)`` is the
        etag If-Match names (any etag for ``*`` or no If-Match). A write that loses a race
        reads again: a device moved past the etag named then fails its precondition."""
        wanted = WILDCARD if if_match is None else normalize_if_match(if_match)
        for _ in range(_WRITE_ATTEMPTS):
            stored = await self.devices.get(host, device_id)
            if stored is None:
                raise HubDeviceNotFound(device_id)
            if wanted != WILDCARD and wanted != etag_of(stored):
                raise PreconditionFailed(device_id)
            written = change(stored)
            if await self.devices.replace(written, expected=stored):
                return written
        raise PreconditionFailed(device_id)

    async def _matching(
        self, host: str, query: HubQuery, after: str | None, wanted: int
    ) -> list[HubDevice]:
        """Up to ``wanted`` devices after the id ``after`` that match the query."""
        found: list[HubDevice] = []
        while len(found) < wanted:
            batch = await self.devices.list(host, after=after, limit=_SCAN_BATCH)
            found.extend(device for device in batch if _selected(query, device))
            if len(batch) < _SCAN_BATCH:
                break
            after = batch[-1].device_id
        return found[:wanted]

    async def _count(self, host: str, query: HubQuery) -> int:
        count = 0
        after: str | None = None
        while True:
            batch = await self.devices.list(host, after=after, limit=_SCAN_BATCH)
            count += sum(1 for device in batch if _selected(query, device))
            if len(batch) < _SCAN_BATCH:
                return count
            after = batch[-1].device_id


def _host(hub: LinkedHub) -> str:
    """The host name under which ``hub``'s devices are stored; HubNotServed when dpsd
    does not serve it."""
    if not hub.builtin:
        raise HubNotServed(hub.host_name)
    return hub.host_name


def _selected(query: HubQuery, device: HubDevice) -> bool:
    return query.where is None or matches(query.where, device)


def _host_part(host_name: str) -> str:
    """A host name without its ``:port``, lower-cased."""
    return _PORT.sub("", host_name).lower()
