"""Bring a database to the newest schema; run at every start (of ``dpsd serve`` and of each
command that opens the store).

A database already at ``NEWEST_REVISION`` is left as it is without loading Alembic, whose
import (every dialect's DDL) and script scan cost a CLI command about a tenth of a second.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

if TYPE_CHECKING:
    from alembic.config import Config

NEWEST_REVISION = "0010"
"""The revision of the newest migration (a test holds it to Alembic's head)."""

_MIGRATIONS = Path(__file__).with_name("migrations")
# Several dpsd processes may start at once on one PostgreSQL store: one migrates, the
# others wait on this lock and then find nothing left to do.
_POSTGRES_LOCK_ID = 0x64707364


class UnknownSchema(Exception):
    """The database's schema is at a revision this dpsd does not know (a newer dpsd's)."""


def migrations_config() -> Config:
    """Alembic's configuration for dpsd's migrations."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def _upgrade(connection: Connection) -> None:
    if _revision(connection) == NEWEST_REVISION:
        return
    from alembic import command
    from alembic.util import CommandError

    config = migrations_config()
    config.attributes["connection"] = connection
    try:
        command.upgrade(config, "head")
    except CommandError as error:
        raise UnknownSchema(str(error)) from error


def _revision(connection: Connection) -> str | None:
    """The revision the database is at (None: none yet)."""
    if not sa.inspect(connection).has_table("alembic_version"):
        return None
    versions = connection.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return str(versions[0][0]) if len(versions) == 1 else None


async def migrate(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(
                sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _POSTGRES_LOCK_ID}
            )
        await connection.run_sync(_upgrade)
