"""Engines for the two supported databases, with the settings each needs."""

from __future__ import annotations

import os
from pathlib import Path
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


def sqlite_file(database: str) -> Path | None:
    """The file of a SQLite database URL; None for any other database, or one in memory."""
    url = make_url(database)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    if url.query.get("uri") or url.database.startswith("file:"):
        return None  # a SQLite URI names its file in its own way
    return Path(url.database)


def create_private_file(path: Path) -> None:
    """Create the SQLite database file owner-only (0600) before SQLite first opens it; a file
    that exists keeps its mode. SQLite creates the WAL and shared-memory files with the mode
    of the database file, so they are private too. Setting the umask around the first
    connection would do the same, but the umask belongs to the whole process (any thread
    creating a file meanwhile would get it); a chmod after the first connection would leave
    the file, and every key in it, readable by all until then."""
    os.close(os.open(path, os.O_RDONLY | os.O_CREAT, 0o600))


def create_engine(database: str) -> AsyncEngine:
    url = async_url(database)
    if url.startswith("sqlite"):
        file = sqlite_file(database)
        if file is not None:
            create_private_file(file)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", lambda c, _r: tune_sqlite(c, 30))
        return engine
    # No ping on checkout: it cost a round trip and about a third of the CPU of every
    # statement, and the executor already runs a statement whose connection broke before
    # its commit once more (SQLAlchemy then drops every pooled connection made before it).
    # A small pool: the statements repositories prepare run on asyncpg's own pool
    # (storage.postgres_executor, 15 connections); these 5 take the rest, 20 in all.
    return create_async_engine(url, pool_size=2, max_overflow=3)


def tune_sqlite(connection: Any, busy_timeout_seconds: int) -> None:
    """WAL (readers never wait for the writer), fsync at checkpoints, and how long a
    statement waits for another process's write lock."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={busy_timeout_seconds * 1000}")
    cursor.close()
