"""The contract of the built-in hubs' device store, on every store: the in-memory reference,
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.domain.hub_device import (
    DeviceIdentity,
    HubAuthentication,
    HubAuthenticationType,
    HubDevice,
    HubSymmetricKey,
    TwinContent,
    new_hub_device,
    patch_twin,
)
from dpsd.storage import migrate as migrate_module
from dpsd.storage.executor import create_executor
from dpsd.storage.hub_devices import SqlHubDeviceRepository
from dpsd.storage.memory import InMemoryEnrollmentRepository, InMemoryHubDeviceRepository
from dpsd.storage.migrate import migrate
from dpsd.storage.sql import ENROLLMENTS, SqlEnrollmentRepository
from tests.contract.databases import sql_database
from tests.factories import KEY, enrollment

MOMENT = datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@dataclass
class Store:
    devices: InMemoryHubDeviceRepository | SqlHubDeviceRepository
    engine: AsyncEngine | None
    enrollments: InMemoryEnrollmentRepository | SqlEnrollmentRepository


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "memory":
        yield Store(InMemoryHubDeviceRepository(), None, InMemoryEnrollmentRepository())
        return
    async with sql_database(request, tmp_path) as (url, engine):
        executor = create_executor(url, engine)
        try:
            yield Store(SqlHubDeviceRepository(executor), engine, SqlEnrollmentRepository(executor))
        finally:
            await executor.close()


def hub_device(device_id: str = "dev-1", hub: str = "Hub.Example", **changes: Any) -> HubDevice:
    sas = HubAuthentication(HubAuthenticationType.SAS, HubSymmetricKey(KEY, KEY))
    created = new_hub_device(hub, DeviceIdentity(device_id, sas), now=MOMENT, random_bytes=bytes)
    return replace(created, **changes)


def twinned(device: HubDevice) -> HubDevice:
    content = TwinContent(
        tags={"site": {"name": "n\u00f6rd \u4e2d", "floor": 3}, "big": 2**70, "ratio": 0.25},
        desired={"mode": {"on": True, "list": [1, "a", None, {"x": []}]}, "nothing": ""},
    )
    return patch_twin(device, content, now=MOMENT)


async def test_a_device_comes_back_as_it_was_stored(store: Store) -> None:
    device = twinned(hub_device())
    assert await store.devices.add(device)
    assert await store.devices.get("Hub.Example", "dev-1") == device


async def test_keys_hub_case_insensitive_device_id_exact(store: Store) -> None:
    device = hub_device("Dev-1")
    assert await store.devices.add(device)
    assert not await store.devices.add(hub_device("Dev-1", hub="HUB.example"))
    assert await store.devices.add(hub_device("dev-1"))
    assert await store.devices.add(hub_device("Dev-1", hub="other.example"))
    assert await store.devices.get("hub.EXAMPLE", "Dev-1") == device
    assert await store.devices.get("Hub.Example", "DEV-1") is None
    assert await store.devices.get("nowhere.example", "Dev-1") is None


async def test_replace_only_over_the_versions_read(store: Store) -> None:
    first = hub_device()
    await store.devices.add(first)
    second = twinned(first)
    assert await store.devices.replace(second, expected=first)
    assert await store.devices.get("Hub.Example", "dev-1") == second
    third = replace(second, device_version=second.device_version + 1)
    assert not await store.devices.replace(third, expected=first)
    assert await store.devices.get("Hub.Example", "dev-1") == second
    assert not await store.devices.replace(hub_device("ghost"), expected=hub_device("ghost"))


async def test_of_two_writers_that_read_alike_only_the_first_writes(store: Store) -> None:
    await store.devices.add(hub_device())
    read_by_one = await store.devices.get("Hub.Example", "dev-1")
    read_by_other = await store.devices.get("hub.example", "dev-1")
    assert read_by_one is not None
    assert read_by_other is not None
    ones = patch_twin(read_by_one, TwinContent(tags={"writer": "one"}), now=MOMENT)
    others = patch_twin(read_by_other, TwinContent(tags={"writer": "other"}), now=MOMENT)
    assert await store.devices.replace(ones, expected=read_by_one)
    assert not await store.devices.replace(others, expected=read_by_other)
    assert await store.devices.get("Hub.Example", "dev-1") == ones


async def test_of_concurrent_replaces_over_one_read_exactly_one_wins(store: Store) -> None:
    read = hub_device()
    await store.devices.add(read)
    writes = [patch_twin(read, TwinContent(tags={"writer": n}), now=MOMENT) for n in range(4)]
    won = await asyncio.gather(*(store.devices.replace(w, expected=read) for w in writes))
    assert sorted(won) == [False, False, False, True]
    assert await store.devices.get("Hub.Example", "dev-1") == writes[won.index(True)]


async def test_device_ids_are_ordered_by_bytes_whatever_the_database_collation(
    store: Store,
) -> None:
    if store.engine is None or store.engine.dialect.name != "postgresql":
        pytest.skip("only PostgreSQL orders text by a collation of its own")
    async with store.engine.connect() as connection:
        collation = await connection.scalar(
            sa.text(
                "SELECT collation_name FROM information_schema.columns "
                "WHERE table_name = 'hub_devices' AND column_name = 'device_id'"
            )
        )
    assert collation == "C"


async def test_a_replace_after_a_delete_writes_nothing(store: Store) -> None:
    device = hub_device()
    await store.devices.add(device)
    assert await store.devices.delete("HUB.EXAMPLE", "dev-1")
    assert not await store.devices.replace(twinned(device), expected=device)
    assert await store.devices.get("Hub.Example", "dev-1") is None
    assert not await store.devices.delete("Hub.Example", "dev-1")


async def test_a_delete_at_a_version_spares_a_newer_one(store: Store) -> None:
    device = hub_device()
    await store.devices.add(device)
    newer = replace(device, device_version=device.device_version + 1)
    assert await store.devices.replace(newer, expected=device)
    assert not await store.devices.delete("hub.example", "dev-1", device_version=1)
    assert await store.devices.get("hub.example", "dev-1") == newer
    assert await store.devices.delete("hub.example", "dev-1", device_version=2)
    assert await store.devices.get("hub.example", "dev-1") is None


async def test_list_in_id_order_byte_by_byte(store: Store) -> None:
    ids = ["b", "A", "a", "_u", "-d", "0", "B", "a.b", "a-b", "Z", "$x", "(p)"]
    for device_id in ids:
        await store.devices.add(hub_device(device_id))
    await store.devices.add(hub_device("a", hub="other.example"))
    listed = await store.devices.list("hub.example", after=None, limit=100)
    assert [device.device_id for device in listed] == sorted(ids)
    first = await store.devices.list("Hub.Example", after=None, limit=5)
    rest = await store.devices.list("Hub.Example", after=first[-1].device_id, limit=100)
    assert [device.device_id for device in first + rest] == sorted(ids)
    assert await store.devices.list("Hub.Example", after="zzz", limit=10) == []
    assert await store.devices.list("nowhere.example", after=None, limit=10) == []


async def test_forgetting_a_hub_forgets_only_its_devices(store: Store) -> None:
    for device_id in ("a", "b"):
        await store.devices.add(hub_device(device_id))
    kept = hub_device("a", hub="other.example")
    await store.devices.add(kept)
    await store.devices.delete_hub("HUB.example")
    assert await store.devices.list("hub.example", after=None, limit=10) == []
    assert await store.devices.list("other.example", after=None, limit=10) == [kept]


async def test_migrations_reach_the_hub_devices_from_0006_with_data(store: Store) -> None:
    if store.engine is None:
        pytest.skip("only SQL stores have a schema")
    migrations = Path(migrate_module.__file__).with_name("migrations")

    def downgrade(connection: sa.Connection) -> None:
        config = Config()
        config.set_main_option("script_location", str(migrations))
        config.attributes["connection"] = connection
        command.downgrade(config, "0006")

    async with store.engine.begin() as connection:
        await connection.run_sync(downgrade)
        tables = await connection.run_sync(lambda sync: sa.inspect(sync).get_table_names())
    assert "hub_devices" not in tables
    record = enrollment("kept-1")
    async with store.engine.begin() as connection:
        await connection.execute(ENROLLMENTS.table.insert(), [ENROLLMENTS.row(record)])
    await migrate(store.engine)
    assert await store.enrollments.get("kept-1") == record
    device = twinned(hub_device())
    assert await store.devices.add(device)
    assert await store.devices.get("hub.example", "dev-1") == device
