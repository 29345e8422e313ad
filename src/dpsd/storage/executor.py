"""How statements reach the database: one interface, two ways.

PostgreSQL is a network service: statements go through SQLAlchemy's async engine (asyncpg).
SQLite is a file in this process: a point read or a single-statement write takes tens of
microseconds, far less than handing it to a worker thread and back (aiosqlite costs several
such hand-offs per statement). So SQLite statements run inline, on one connection, in
autocommit mode: each statement is its own transaction, which is all the repositories need
(every write is one statement). The cost: while another process holds SQLite's write lock,
the server waits for it (at most ``SQLITE_BUSY_TIMEOUT`` seconds).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ClauseElement

from dpsd.storage.engine import tune_sqlite

SQLITE_BUSY_TIMEOUT = 5
_NAMED_SQLITE = sqlite_dialect(paramstyle="named")
Params = Mapping[str, Any] | None


class DuplicateKey(Exception):
    """An insert met a row with the same key."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled once, with the column names its parameters may set."""

    statement: sa.Executable
    sql: str | None = None


class Executor(Protocol):
    dialect: str

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared: ...

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any: ...

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]: ...

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        """Run one statement in its own transaction; the number of rows it touched.
        Raises DuplicateKey when an insert meets an existing key."""
        ...

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        """Run one statement with a RETURNING clause in its own transaction; the first value
        of the row it returned, or None when it touched no row."""
        ...

    async def close(self) -> None: ...


def _statement(statement: Prepared | sa.Executable) -> sa.Executable:
    return statement.statement if isinstance(statement, Prepared) else statement


class AsyncEngineExecutor:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.dialect = engine.dialect.name

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared:
        return Prepared(statement)

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any:
        async with self._engine.connect() as connection:
            return (await connection.execute(_statement(statement), params)).scalar_one_or_none()

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        async with self._engine.connect() as connection:
            result = await connection.execute(_statement(statement), params)
            return list(result.scalars().all())

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        try:
            async with self._engine.begin() as connection:
                result = await connection.execute(_statement(statement), params)
        except IntegrityError as error:
            raise DuplicateKey(str(error.orig)) from error
        return int(result.rowcount)

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        try:
            async with self._engine.begin() as connection:
                result = await connection.execute(_statement(statement), params)
                row = result.first()
        except IntegrityError as error:
            raise DuplicateKey(str(error.orig)) from error
        return None if row is None else row[0]

    async def close(self) -> None:
        """The engine belongs to whoever made it."""


class InlineSqliteExecutor:
    def __init__(self, database_url: str) -> None:
        url = make_url(database_url).set(drivername="sqlite+pysqlite")
        engine = sa.create_engine(
            url,
            poolclass=StaticPool,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT},
        )
        event.listen(engine, "connect", lambda c, _r: tune_sqlite(c, SQLITE_BUSY_TIMEOUT))
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._connection = self._engine.connect()
        raw = self._connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        self._raw = raw
        self.dialect = "sqlite"

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared:
        """Compiled to SQLite's own named-parameter SQL: executing it skips SQLAlchemy."""
        element = cast(ClauseElement, statement)
        compiled = element.compile(dialect=_NAMED_SQLITE, column_keys=list(columns) or None)
        return Prepared(statement, str(compiled))

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any:
        if isinstance(statement, Prepared) and statement.sql is not None:
            row = self._raw.execute(statement.sql, dict(params or {})).fetchone()
            return None if row is None else row[0]
        return self._connection.execute(_statement(statement), params).scalar_one_or_none()

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        if isinstance(statement, Prepared) and statement.sql is not None:
            return [row[0] for row in self._raw.execute(statement.sql, dict(params or {}))]
        return list(self._connection.execute(_statement(statement), params).scalars().all())

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        try:
            if isinstance(statement, Prepared) and statement.sql is not None:
                return self._raw.execute(statement.sql, dict(params or {})).rowcount
            return int(self._connection.execute(_statement(statement), params).rowcount)
        except (sqlite3.IntegrityError, IntegrityError) as error:
            raise DuplicateKey(str(error)) from error

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        try:
            if isinstance(statement, Prepared) and statement.sql is not None:
                # fetchall: the statement (and so its transaction) ends with its last row.
                rows = self._raw.execute(statement.sql, dict(params or {})).fetchall()
            else:
                rows = list(self._connection.execute(_statement(statement), params).all())
        except (sqlite3.IntegrityError, IntegrityError) as error:
            raise DuplicateKey(str(error)) from error
        return rows[0][0] if rows else None

    async def close(self) -> None:
        self._connection.close()
        self._engine.dispose()


def create_executor(database_url: str, engine: AsyncEngine) -> Executor:
    if engine.dialect.name == "sqlite":
        return InlineSqliteExecutor(database_url)
    return AsyncEngineExecutor(engine)
