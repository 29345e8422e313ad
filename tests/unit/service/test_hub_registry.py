"""Use cases of the built-in hubs' registry, on the in-memory repositories."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from dpsd.domain.errors import InvalidQuery, ValidationError
from dpsd.domain.hub import ALL_HUB_RIGHTS, HubPolicy, LinkedHub
from dpsd.domain.hub_device import (
    DeviceIdentity,
    DeviceStatus,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
    HubSymmetricKey,
    TwinContent,
    device_etag,
    twin_etag,
)
from dpsd.service.errors import BadRequest, PreconditionFailed
from dpsd.service.hub_registry import (
    HubDeviceAlreadyExists,
    HubDeviceNotFound,
    HubNotServed,
    HubRegistryService,
)
from dpsd.service.records import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from dpsd.storage.memory import InMemoryHubDeviceRepository, InMemoryHubRepository

START = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
HUB = "hub.example"
KEY = base64.b64encode(b"k" * 32).decode()
OWNER = HubPolicy("iothubowner", KEY, KEY, ALL_HUB_RIGHTS)
# The hub the use cases are handed, as the hub app hands in the one it found.
BUILTIN = LinkedHub("Hub.Example", "e1", builtin_policies=(OWNER,))
AZURE = LinkedHub("azure.example", "e3", connection_string="HostName=azure.example")


@dataclass
class FakeClock:
    moment: datetime = START

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: int = 1) -> None:
        self.moment += timedelta(seconds=seconds)


@dataclass
class FakeEntropy:
    """Deterministic, never-repeating bytes."""

    count: int = 0

    def random_bytes(self, count: int) -> bytes:
        self.count += 1
        return hashlib.shake_256(self.count.to_bytes(8, "big")).digest(count)


@dataclass
class Registry:
    service: HubRegistryService
    devices: InMemoryHubDeviceRepository
    clock: FakeClock


@pytest.fixture
async def registry() -> Registry:
    hubs = InMemoryHubRepository()
    await hubs.add(BUILTIN)
    await hubs.add(LinkedHub("ported.example:8443", "e2", builtin_policies=(OWNER,)))
    await hubs.add(AZURE)
    devices = InMemoryHubDeviceRepository()
    clock = FakeClock()
    return Registry(HubRegistryService(hubs, devices, clock, FakeEntropy()), devices, clock)


def identity(device_id: str = "dev-1", **changes: Any) -> DeviceIdentity:
    sas = HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey())
    return replace(DeviceIdentity(device_id, sas), **changes)


async def create(registry: Registry, device_id: str = "dev-1", **changes: Any) -> HubDevice:
    return await registry.service.create_or_update_device(
        BUILTIN, device_id, identity(device_id, **changes), None
    )


# --- which hubs are served ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "served"),
    [
        ("hub.example", "Hub.Example"),
        ("HUB.EXAMPLE", "Hub.Example"),
        ("hub.example:8443", "Hub.Example"),
        ("ported.example:8443", "ported.example:8443"),
        ("ported.example", "ported.example:8443"),
        ("Ported.Example:443", "ported.example:8443"),
        ("azure.example", None),
        ("nowhere.example", None),
        ("hub.example.evil", None),
    ],
)
async def test_the_served_hub_is_the_built_in_one_of_that_host(
    registry: Registry, asked: str, served: str | None
) -> None:
    hub = await registry.service.served_hub(asked)
    assert (hub.host_name if hub else None) == served


async def test_a_hub_that_is_not_built_in_is_not_served(registry: Registry) -> None:
    service = registry.service
    with pytest.raises(HubNotServed, match=r"'azure\.example' is not an IoT hub that dpsd serves"):
        await service.get_device(AZURE, "dev-1")
    with pytest.raises(HubNotServed):
        await service.create_or_update_device(AZURE, "dev-1", identity(), None)
    with pytest.raises(HubNotServed):
        await service.list_devices(AZURE, None)
    with pytest.raises(HubNotServed):
        await service.query(AZURE, "SELECT * FROM devices", None, None)
    with pytest.raises(HubNotServed):
        await service.replace_twin(AZURE, "dev-1", TwinContent(), None)


async def served(registry: Registry, host_name: str) -> LinkedHub:
    hub = await registry.service.served_hub(host_name)
    assert hub is not None
    return hub


async def test_any_spelling_of_the_host_reaches_the_same_devices(registry: Registry) -> None:
    created = await registry.service.create_or_update_device(
        await served(registry, "HUB.example:443"), "Dev-1", identity("Dev-1"), None
    )
    assert created.hub == "Hub.Example"
    assert (
        await registry.service.get_device(await served(registry, "hub.example"), "Dev-1") == created
    )
    with pytest.raises(HubDeviceNotFound):
        await registry.service.get_device(BUILTIN, "dev-1")  # ids keep their case


# --- devices ------------------------------------------------------------------------------


async def test_create_then_get(registry: Registry) -> None:
    created = await create(registry)
    assert (created.device_version, created.twin_version) == (1, 1)
    keys = created.identity.authentication.symmetric_key
    assert keys is not None
    assert keys.primary_key
    assert keys.secondary_key
    assert await registry.service.get_device(BUILTIN, "dev-1") == created


async def test_create_refuses_an_existing_device(registry: Registry) -> None:
    await create(registry)
    with pytest.raises(HubDeviceAlreadyExists, match="'dev-1' is already registered"):
        await create(registry)


@pytest.mark.parametrize(("path_id", "body_id"), [("dev-1", "dev-2"), ("dev-1", "DEV-1")])
async def test_the_path_id_must_be_the_body_id(
    registry: Registry, path_id: str, body_id: str
) -> None:
    with pytest.raises(ValidationError, match="must be the one in the path"):
        await registry.service.create_or_update_device(BUILTIN, path_id, identity(body_id), None)


async def test_an_invalid_id_is_refused(registry: Registry) -> None:
    with pytest.raises(ValidationError, match="deviceId 'a/b' is invalid"):
        await registry.service.create_or_update_device(BUILTIN, "a/b", identity("a/b"), None)


@pytest.mark.parametrize("form", ["*", '"*"', "{etag}", '"{etag}"', 'W/"{etag}"'])
async def test_update_at_the_wildcard_or_the_device_etag(registry: Registry, form: str) -> None:
    created = await create(registry)
    twinned = await registry.service.update_twin(BUILTIN, "dev-1", TwinContent({"a": 1}), None)
    registry.clock.advance()
    if_match = form.format(etag=device_etag(created))
    updated = await registry.service.create_or_update_device(
        BUILTIN, "dev-1", identity(status=DeviceStatus.DISABLED), if_match
    )
    assert updated.identity.status is DeviceStatus.DISABLED
    assert updated.identity.authentication == created.identity.authentication
    assert updated.status_updated == registry.clock.now()
    assert updated.tags == {"a": 1}
    assert updated.generation_id == created.generation_id
    assert updated.device_version == 2
    assert updated.twin_version == twinned.twin_version + 1
    assert await registry.service.get_device(BUILTIN, "dev-1") == updated


async def test_update_at_another_etag_fails(registry: Registry) -> None:
    created = await create(registry)
    stale = device_etag(created)
    await registry.service.create_or_update_device(BUILTIN, "dev-1", identity(), "*")
    with pytest.raises(PreconditionFailed):
        await registry.service.create_or_update_device(BUILTIN, "dev-1", identity(), f'"{stale}"')
    with pytest.raises(PreconditionFailed):
        await registry.service.create_or_update_device(
            BUILTIN, "dev-1", identity(), twin_etag(created)
        )


@pytest.mark.parametrize("if_match", ["*", "MQ=="])
async def test_update_of_a_missing_device_is_not_found(registry: Registry, if_match: str) -> None:
    with pytest.raises(HubDeviceNotFound):
        await registry.service.create_or_update_device(BUILTIN, "dev-1", identity(), if_match)


async def test_get_of_a_missing_device_is_not_found(registry: Registry) -> None:
    with pytest.raises(HubDeviceNotFound) as raised:
        await registry.service.get_device(BUILTIN, "ghost")
    assert raised.value.device_id == "ghost"


@pytest.mark.parametrize("form", [None, "*", '"*"', "{etag}", '"{etag}"'])
async def test_delete(registry: Registry, form: str | None) -> None:
    created = await create(registry)
    if_match = None if form is None else form.format(etag=device_etag(created))
    await registry.service.delete_device(BUILTIN, "dev-1", if_match)
    with pytest.raises(HubDeviceNotFound):
        await registry.service.get_device(BUILTIN, "dev-1")
    with pytest.raises(HubDeviceNotFound):
        await registry.service.delete_device(BUILTIN, "dev-1", if_match)


async def test_delete_at_another_etag_fails(registry: Registry) -> None:
    await create(registry)
    with pytest.raises(PreconditionFailed):
        await registry.service.delete_device(BUILTIN, "dev-1", '"Mg=="')
    assert await registry.service.get_device(BUILTIN, "dev-1")


async def test_a_device_created_again_is_a_new_generation(registry: Registry) -> None:
    first = await create(registry)
    await registry.service.delete_device(BUILTIN, "dev-1", "*")
    second = await create(registry)
    assert second.generation_id != first.generation_id


async def test_list_in_id_order_up_to_top(registry: Registry) -> None:
    for device_id in ["b", "A", "c", "a"]:
        await create(registry, device_id)
    listed = await registry.service.list_devices(BUILTIN, None)
    assert [device.device_id for device in listed] == ["A", "a", "b", "c"]
    assert len(await registry.service.list_devices(BUILTIN, 2)) == 2
    assert await registry.service.list_devices(await served(registry, "ported.example"), None) == []


async def test_list_takes_at_most_a_thousand(registry: Registry) -> None:
    for index in range(1001):
        await registry.devices.add(replace(stored_device(index), hub="Hub.Example"))
    assert len(await registry.service.list_devices(BUILTIN, None)) == 1000
    assert len(await registry.service.list_devices(BUILTIN, 5000)) == 1000
    with pytest.raises(ValidationError, match="top must be between 1 and 1000"):
        await registry.service.list_devices(BUILTIN, 0)


def stored_device(index: int) -> HubDevice:
    """A stored device built without the service (fast, for big listings)."""
    return HubDevice(
        hub=HUB,
        identity=DeviceIdentity(f"d{index:05}", HubAuthentication(HubAuthenticationType.NONE)),
        generation_id="1" * 18,
        device_version=1,
        twin_version=1,
        status_updated=START,
        tags={"n": index, "even": index % 2 == 0},
    )


# --- twins --------------------------------------------------------------------------------


async def test_twin_patch_and_replace(registry: Registry) -> None:
    created = await create(registry)
    patched = await registry.service.update_twin(
        BUILTIN, "dev-1", TwinContent({"site": "n"}, {"rate": 5}), f'"{twin_etag(created)}"'
    )
    assert patched.tags == {"site": "n"}
    assert patched.desired.values == {"rate": 5}
    assert patched.desired.version == 2
    assert patched.twin_version == 2
    assert patched.device_version == 1
    replaced = await registry.service.replace_twin(
        BUILTIN, "dev-1", TwinContent({"other": 1}), twin_etag(patched)
    )
    assert replaced.tags == {"other": 1}
    assert replaced.desired.values == {}
    assert await registry.service.get_device(BUILTIN, "dev-1") == replaced


async def test_twin_writes_compare_the_twin_etag(registry: Registry) -> None:
    created = await create(registry)
    with pytest.raises(PreconditionFailed):
        await registry.service.update_twin(BUILTIN, "dev-1", TwinContent(), device_etag(created))
    await registry.service.update_twin(BUILTIN, "dev-1", TwinContent({"a": 1}), "*")
    with pytest.raises(PreconditionFailed):
        await registry.service.replace_twin(BUILTIN, "dev-1", TwinContent(), twin_etag(created))


async def test_an_identity_update_moves_the_twin_etag(registry: Registry) -> None:
    created = await create(registry)
    await registry.service.create_or_update_device(BUILTIN, "dev-1", identity(), "*")
    with pytest.raises(PreconditionFailed):
        await registry.service.update_twin(BUILTIN, "dev-1", TwinContent(), twin_etag(created))


async def test_twin_writes_to_a_missing_device_are_not_found(registry: Registry) -> None:
    with pytest.raises(HubDeviceNotFound):
        await registry.service.update_twin(BUILTIN, "dev-1", TwinContent(), "*")
    with pytest.raises(HubDeviceNotFound):
        await registry.service.replace_twin(BUILTIN, "dev-1", TwinContent(), None)


async def test_an_invalid_twin_is_refused(registry: Registry) -> None:
    await create(registry)
    with pytest.raises(ValidationError, match="key name"):
        await registry.service.update_twin(BUILTIN, "dev-1", TwinContent({"a.b": 1}), "*")


# --- concurrent writers -------------------------------------------------------------------


class RacingDevices(InMemoryHubDeviceRepository):
    """Another writer patches the twin just before each of the first ``races`` replaces."""

    def __init__(self, races: int) -> None:
        super().__init__()
        self.races = races

    async def replace(self, device: HubDevice, *, expected: HubDevice) -> bool:
        if self.races > 0:
            self.races -= 1
            current = await self.get(device.hub, device.device_id)
            assert current is not None
            interloper = replace(
                current,
                tags={**current.tags, "other": self.races},
                twin_version=current.twin_version + 1,
            )
            assert await super().replace(interloper, expected=current)
        return await super().replace(device, expected=expected)


async def racing_registry(races: int) -> tuple[HubRegistryService, RacingDevices, HubDevice]:
    hubs = InMemoryHubRepository()
    await hubs.add(BUILTIN)
    devices = RacingDevices(0)
    service = HubRegistryService(hubs, devices, FakeClock(), FakeEntropy())
    created = await service.create_or_update_device(BUILTIN, "dev-1", identity(), None)
    devices.races = races
    return service, devices, created


async def test_a_wildcard_write_that_loses_a_race_tries_again() -> None:
    service, _devices, _created = await racing_registry(races=2)
    patched = await service.update_twin(BUILTIN, "dev-1", TwinContent({"mine": 1}), "*")
    assert patched.tags == {"other": 0, "mine": 1}
    assert await service.get_device(BUILTIN, "dev-1") == patched


async def test_an_etag_write_that_loses_a_race_fails() -> None:
    service, _devices, created = await racing_registry(races=1)
    with pytest.raises(PreconditionFailed):
        await service.update_twin(BUILTIN, "dev-1", TwinContent({"mine": 1}), twin_etag(created))
    stored = await service.get_device(BUILTIN, "dev-1")
    assert stored.tags == {"other": 0}


async def test_a_device_etag_survives_a_concurrent_twin_write() -> None:
    service, _devices, created = await racing_registry(races=1)
    updated = await service.create_or_update_device(
        BUILTIN, "dev-1", identity(status=DeviceStatus.DISABLED), device_etag(created)
    )
    assert updated.tags == {"other": 0}
    assert updated.identity.status is DeviceStatus.DISABLED


async def test_a_writer_that_always_loses_gives_up() -> None:
    service, devices, _created = await racing_registry(races=100)
    with pytest.raises(PreconditionFailed):
        await service.update_twin(BUILTIN, "dev-1", TwinContent({"mine": 1}), "*")
    assert devices.races < 100


# --- queries ------------------------------------------------------------------------------


async def fill(registry: Registry, count: int) -> None:
    for index in range(count):
        await registry.devices.add(replace(stored_device(index), hub="Hub.Example"))


async def test_query_pages_through_the_matches(registry: Registry) -> None:
    await fill(registry, 2500)
    text = "SELECT * FROM devices WHERE tags.even = true AND tags.n >= 100"
    seen: list[int] = []
    continuation = None
    pages = 0
    while True:
        page = await registry.service.query(BUILTIN, text, continuation, 500)
        assert page.raw is None
        assert page.page_size == 500
        seen.extend(device.tags["n"] for device in page.devices)
        pages += 1
        continuation = page.continuation
        if continuation is None:
            break
    assert seen == list(range(100, 2500, 2))
    assert pages == 3


async def test_query_page_sizes(registry: Registry) -> None:
    await fill(registry, 1200)
    everything = "SELECT * FROM devices"
    default = await registry.service.query(BUILTIN, everything, None, None)
    assert len(default.devices) == DEFAULT_PAGE_SIZE
    assert default.continuation is not None
    biggest = await registry.service.query(BUILTIN, everything, None, 5000)
    assert len(biggest.devices) == MAX_PAGE_SIZE
    rest = await registry.service.query(BUILTIN, everything, biggest.continuation, 5000)
    assert len(rest.devices) == 200
    assert rest.continuation is None


async def test_query_without_matches(registry: Registry) -> None:
    await fill(registry, 10)
    page = await registry.service.query(BUILTIN, "select * from devices where tags.n = -1", None, 5)
    assert (page.devices, page.raw, page.continuation) == ([], None, None)


@pytest.mark.parametrize(
    ("text", "raw"),
    [
        ("SELECT COUNT() AS numberOfDevices FROM devices", [{"numberOfDevices": 2100}]),
        ("SELECT COUNT() FROM devices WHERE tags.even = false", [{"$1": 1050}]),
        ("select count() as n from devices where tags.n < 10", [{"n": 10}]),
    ],
)
async def test_count_counts_every_match(
    registry: Registry, text: str, raw: list[dict[str, int]]
) -> None:
    await fill(registry, 2100)
    page = await registry.service.query(BUILTIN, text, None, 10)
    assert page.raw == raw
    assert page.devices == []
    assert page.continuation is None


async def test_count_of_an_empty_hub(registry: Registry) -> None:
    page = await registry.service.query(BUILTIN, "SELECT COUNT() AS n FROM devices", None, None)
    assert page.raw == [{"n": 0}]


async def test_a_continuation_from_elsewhere_is_refused(registry: Registry) -> None:
    with pytest.raises(BadRequest):
        await registry.service.query(BUILTIN, "SELECT * FROM devices", "bm90LW91cnM=", None)


async def test_an_invalid_query_is_refused(registry: Registry) -> None:
    with pytest.raises(InvalidQuery, match="SELECT \\* and SELECT COUNT\\(\\) only"):
        await registry.service.query(BUILTIN, "SELECT deviceId FROM devices", None, None)
