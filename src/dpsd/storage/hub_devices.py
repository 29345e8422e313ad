"""The devices of built-in hubs on SQLAlchemy Core, the same code for SQLite and PostgreSQL.

A device is a JSON document keyed by (lower-cased hub host name, device id as written),
with its two versions in columns of their own: a conditional replace is one ``UPDATE``
that names the versions it read, so a concurrent writer in between makes it touch no row.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dpsd.domain.hub_device import HubDevice
from dpsd.domain.ids import id_key
from dpsd.storage import codec
from dpsd.storage.executor import DuplicateKey, Executor
from dpsd.storage.schema import hub_devices

_decode = codec.decoder(HubDevice)


def _row(device: HubDevice) -> dict[str, Any]:
    return {
        "hub_key": id_key(device.hub),
        "device_id": device.device_id,
        "device_version": device.device_version,
        "twin_version": device.twin_version,
        "document": codec.encode(device),
    }


class SqlHubDeviceRepository:
    """The statements are prepared once (see ``storage.executor``)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor
        table = hub_devices
        hub: sa.BindParameter[str] = sa.bindparam("hub")
        device: sa.BindParameter[str] = sa.bindparam("device")
        this_device = sa.and_(table.c.hub_key == hub, table.c.device_id == device)
        prepare = executor.prepare
        self._get = prepare(sa.select(table.c.document).where(this_device))
        self._insert = prepare(table.insert(), [column.name for column in table.columns])
        self._replace = prepare(
            table.update()
            .where(this_device)
            .where(table.c.device_version == sa.bindparam("read_device_version"))
            .where(table.c.twin_version == sa.bindparam("read_twin_version"))
            .values(
                device_version=sa.bindparam("new_device_version"),
                twin_version=sa.bindparam("new_twin_version"),
                document=sa.bindparam("new_document"),
            )
        )
        self._delete = prepare(table.delete().where(this_device))
        self._delete_at = prepare(
            table.delete()
            .where(this_device)
            .where(table.c.device_version == sa.bindparam("read_device_version"))
        )
        self._delete_hub = prepare(table.delete().where(table.c.hub_key == hub))
        listing = (
            sa.select(table.c.document)
            .where(table.c.hub_key == hub)
            .order_by(table.c.device_id)
            .limit(sa.bindparam("limit", type_=sa.Integer))
            # Said outright: SQLite's compiler would add "OFFSET ?" with a parameter of its
            # own, which the prepared statement's caller does not know of.
            .offset(sa.literal_column("0", sa.Integer))
        )
        self._list_first = prepare(listing)
        self._list_after = prepare(listing.where(table.c.device_id > sa.bindparam("after")))

    async def get(self, hub: str, device_id: str) -> HubDevice | None:
        params = {"hub": id_key(hub), "device": device_id}
        document = await self._executor.scalar(self._get, params)
        return None if document is None else _decode(document)

    async def add(self, device: HubDevice) -> bool:
        try:
            await self._executor.write(self._insert, _row(device))
        except DuplicateKey:
            return False
        return True

    async def replace(self, device: HubDevice, *, expected: HubDevice) -> bool:
        params = {
            "hub": id_key(expected.hub),
            "device": expected.device_id,
            "read_device_version": expected.device_version,
            "read_twin_version": expected.twin_version,
            "new_device_version": device.device_version,
            "new_twin_version": device.twin_version,
            "new_document": codec.encode(device),
        }
        return await self._executor.write(self._replace, params) == 1

    async def delete(self, hub: str, device_id: str, *, device_version: int | None = None) -> bool:
        params: dict[str, Any] = {"hub": id_key(hub), "device": device_id}
        if device_version is None:
            return await self._executor.write(self._delete, params) == 1
        params["read_device_version"] = device_version
        return await self._executor.write(self._delete_at, params) == 1

    async def list(self, hub: str, *, after: str | None, limit: int) -> list[HubDevice]:
        params: dict[str, Any] = {"hub": id_key(hub), "limit": limit}
        statement = self._list_first
        if after is not None:
            params["after"] = after
            statement = self._list_after
        return [_decode(document) for document in await self._executor.scalars(statement, params)]

    async def delete_hub(self, hub: str) -> None:
        await self._executor.write(self._delete_hub, {"hub": id_key(hub)})
