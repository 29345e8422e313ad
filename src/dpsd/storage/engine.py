"""Engines for the two supported databases, with the settings each needs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def async_url(database: str) -> str:
    """Map what users write (``sqlite:///x.db``, ``postgresql://...``) to async drivers."""
    url = make_url(database)
    backend = url.get_backend_name()
    if backend == "sqlite":
        return str(url.set(drivername="sqlite+aiosqlite"))
    if backend == "postgresql":
        return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {backend!r}: use sqlite:/// or postgresql://")


def create_engine(database: str) -> AsyncEngine:
    url = async_url(database)
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", lambda c, _r: tune_sqlite(c, 30))
        return engine
    return create_async_engine(url, pool_size=10, max_overflow=10, pool_pre_ping=True)


def tune_sqlite(connection: Any, busy_timeout_seconds: int) -> None:
    """WAL (readers never wait for the writer), fsync at checkpoints, and how long a
    statement waits for another process's write lock."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_seconds * 1000}")
    cursor.close()
