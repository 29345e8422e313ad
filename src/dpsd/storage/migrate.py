"""Bring a database to the newest schema; run at every start."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

_MIGRATIONS = Path(__file__).with_name("migrations")
# Several dpsd processes may start at once on one PostgreSQL store: one migrates, the
# others wait on this lock and then find nothing left to do.
_POSTGRES_LOCK_ID = 0x64707364


def _upgrade(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _POSTGRES_LOCK_ID}
            )
        await connection.run_sync(_upgrade)
