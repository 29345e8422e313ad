"""The SQL databases the contract tests run the SQL stores on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from dpsd.storage.engine import create_engine
from dpsd.storage.migrate import migrate
from dpsd.storage.schema import metadata


async def clean(engine: AsyncEngine) -> None:
    """Every table emptied."""
    async with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            await connection.execute(table.delete())


@asynccontextmanager
async def sql_database(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, AsyncEngine]]:
    """The URL of a migrated, empty database of the kind the fixture's parameter names
    (``sqlite``: a file in ``tmp_path``; ``postgres``: the test session's database), and an
    engine on it; emptied again afterwards, as later tests share the PostgreSQL one."""
    url = (
        f"sqlite:///{tmp_path / 'contract.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_server")
    )
    engine = create_engine(url)
    try:
        await migrate(engine)
        await clean(engine)
        yield url, engine
        await clean(engine)
    finally:
        await engine.dispose()
