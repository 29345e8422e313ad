"""How statements reach the database: one interface, two ways.

PostgreSQL is a network service: the statements repositories prepare run on asyncpg's own
pool (``storage.postgres_executor``), the rest through SQLAlchemy's async engine (asyncpg).
SQLite is a file in this process: a point read or a single-statement write takes tens of
microseconds, far less than handing it to a worker thread and back (aiosqlite costs several
such hand-offs per statement). So SQLite statements run inline, on one connection, in
autocommit mode: each statement is its own transaction, which is all the repositories need
(every write is one statement).

While another process holds SQLite's write lock, SQLite itself would wait in the statement,
and so block the event loop: every request, MQTT's and AMQP's too. So the connection does
not wait (a busy timeout of 0): a statement that meets the lock is tried again after pauses
that leave the loop to other requests, for up to ``SQLITE_LOCK_TIMEOUT`` seconds. A statement
that meets no lock costs what it did.

Faults of the store (dpsd.storage.faults) become StorageUnavailable, which every edge
answers as a retryable 503: a full disk, a read-only database, a lock held too long, a
connection to PostgreSQL lost. A PostgreSQL statement whose connection broke before its
commit is run once more on another connection first (nothing of it was committed); one
that broke during its commit is not (it may have been).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol, TypeVar, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import CursorResult, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.elements import ClauseElement

from dpsd.service.errors import StorageFault
from dpsd.storage.engine import tune_sqlite
from dpsd.storage.faults import connection_lost, postgres_fault, sqlite_fault, unavailable

SQLITE_LOCK_TIMEOUT = 5.0
_FIRST_PAUSE = 0.001
_LONGEST_PAUSE = 0.05
_NAMED_SQLITE = sqlite_dialect(paramstyle="named")
_SQLITE_ERRORS = (sqlite3.DatabaseError, DBAPIError)
_POSTGRES_ERRORS = (DBAPIError, OSError, PoolTimeout)
Params = Mapping[str, Any] | None
T = TypeVar("T")


class DuplicateKey(Exception):
    """An insert met a row with the same key."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """A statement compiled once, with the column names its parameters may set.
    ``sql``: the statement as the executor runs it itself, without SQLAlchemy (None: it
    goes through SQLAlchemy); ``defaults``: the values the statement itself binds (a
    comparison with a constant, a LIMIT), which the parameters of each execution complete;
    ``order``: the parameters' names in the order of numbered placeholders (PostgreSQL);
    ``repeatable``: a write that, run twice, leaves what running it once leaves and answers
    the same (an upsert), so it needs no transaction of its own to be run again safely after
    its connection was lost (see ``storage.postgres_executor``)."""

    statement: sa.Executable
    sql: str | None = None
    defaults: Mapping[str, Any] | None = None
    order: tuple[str, ...] | None = None
    repeatable: bool = False

    def bound(self, params: Params) -> dict[str, Any]:
        if self.defaults is None:
            return dict(params or {})
        return {**self.defaults, **(params or {})}


class Executor(Protocol):
    dialect: str

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared: ...

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any: ...

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]: ...

    async def rows(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[tuple[Any, ...]]:
        """Every row a read returns, each as a tuple of its columns."""
        ...

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
        return await self._run(self._read, statement, params, _scalar_of)

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        return await self._run(self._read, statement, params, _scalars_of)

    async def rows(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[tuple[Any, ...]]:
        return await self._run(self._read, statement, params, _rows_of)

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        return await self._run(self._write, statement, params, _rowcount_of)

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        return await self._run(self._write, statement, params, _first_value_of)

    async def close(self) -> None:
        """The engine belongs to whoever made it."""

    async def _run(
        self,
        attempt: Callable[[Prepared | sa.Executable, Params, Callable[[Any], T]], Awaitable[T]],
        statement: Prepared | sa.Executable,
        params: Params,
        read: Callable[[Any], T],
    ) -> T:
        return await once_more_if_lost(lambda: attempt(statement, params, read), _POSTGRES_ERRORS)

    async def _read(
        self, statement: Prepared | sa.Executable, params: Params, read: Callable[[Any], T]
    ) -> T:
        try:
            async with self._engine.connect() as connection:
                return read(await connection.execute(_statement(statement), params))
        except _POSTGRES_ERRORS as error:  # a read commits nothing: always safe to repeat
            raise BeforeCommit(error) from error

    async def _write(
        self, statement: Prepared | sa.Executable, params: Params, read: Callable[[Any], T]
    ) -> T:
        committing = False
        try:
            async with self._engine.connect() as connection:
                try:
                    value = read(await connection.execute(_statement(statement), params))
                except IntegrityError as error:
                    raise DuplicateKey(str(error.orig)) from error
                committing = True
                await connection.commit()
                return value
        except _POSTGRES_ERRORS as error:
            if committing:
                raise  # it may have been committed: not safe to repeat
            raise BeforeCommit(error) from error


class BeforeCommit(Exception):
    """A statement failed before its transaction committed (or had anything to commit)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


async def once_more_if_lost(
    attempt: Callable[[], Awaitable[T]], errors: tuple[type[BaseException], ...]
) -> T:
    """``attempt()``, and once more when its connection broke before any commit (it raised
    BeforeCommit); ``errors`` raised as they are came during a commit, which may have been
    made, and are not repeated. A fault of the store as StorageUnavailable (PostgreSQL)."""
    try:
        return await attempt()
    except BeforeCommit as failed:
        if not connection_lost(failed.error):
            raise_for_fault(failed.error, postgres_fault)
    except errors as error:  # during the commit: it may have been made
        raise_for_fault(error, postgres_fault)
    try:
        return await attempt()
    except BeforeCommit as failed:
        raise_for_fault(failed.error, postgres_fault)
    except errors as error:
        raise_for_fault(error, postgres_fault)


def raise_for_fault(
    error: BaseException, classify: Callable[[BaseException], StorageFault | None]
) -> NoReturn:
    """StorageUnavailable for a fault of the store; ``error`` itself for anything else (a
    bug, answered as one)."""
    fault = classify(error)
    if fault is None:
        raise error
    raise unavailable(fault, error) from error


def _scalar_of(result: CursorResult[Any]) -> Any:
    return result.scalar_one_or_none()


def _scalars_of(result: CursorResult[Any]) -> list[Any]:
    return list(result.scalars().all())


def _rows_of(result: CursorResult[Any]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in result]


def _rowcount_of(result: CursorResult[Any]) -> int:
    return int(result.rowcount)


def _first_value_of(result: CursorResult[Any]) -> Any:
    row = result.first()
    return None if row is None else row[0]


class InlineSqliteExecutor:
    def __init__(self, database_url: str, lock_timeout: float = SQLITE_LOCK_TIMEOUT) -> None:
        url = make_url(database_url).set(drivername="sqlite+pysqlite")
        engine = sa.create_engine(
            url, poolclass=StaticPool, connect_args={"check_same_thread": False, "timeout": 0}
        )
        event.listen(engine, "connect", lambda c, _r: tune_sqlite(c, 0))
        self._engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._connection = self._engine.connect()
        raw = self._connection.connection.driver_connection
        assert isinstance(raw, sqlite3.Connection)
        self._raw = raw
        self._lock_timeout = lock_timeout
        self.dialect = "sqlite"

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared:
        """Compiled to SQLite's own named-parameter SQL: executing it skips SQLAlchemy."""
        element = cast(ClauseElement, statement)
        compiled = element.compile(
            dialect=_NAMED_SQLITE,
            column_keys=list(columns) or None,
            compile_kwargs={"render_postcompile": True},
        )
        defaults = {name: value for name, value in compiled.params.items() if value is not None}
        return Prepared(statement, str(compiled), defaults or None)

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any:
        try:
            return self._scalar(statement, params)
        except _SQLITE_ERRORS as error:
            return await self._retry_while_locked(error, self._scalar, statement, params)

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        try:
            return self._scalars(statement, params)
        except _SQLITE_ERRORS as error:
            return await self._retry_while_locked(error, self._scalars, statement, params)

    async def rows(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[tuple[Any, ...]]:
        try:
            return self._rows(statement, params)
        except _SQLITE_ERRORS as error:
            return await self._retry_while_locked(error, self._rows, statement, params)

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        try:
            return self._write(statement, params)
        except _SQLITE_ERRORS as error:
            return await self._retry_while_locked(error, self._write, statement, params)

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        try:
            return self._write_returning(statement, params)
        except _SQLITE_ERRORS as error:
            return await self._retry_while_locked(error, self._write_returning, statement, params)

    async def close(self) -> None:
        self._connection.close()
        self._engine.dispose()

    def _scalar(self, statement: Prepared | sa.Executable, params: Params) -> Any:
        if isinstance(statement, Prepared) and statement.sql is not None:
            row = self._raw.execute(statement.sql, statement.bound(params)).fetchone()
            return None if row is None else row[0]
        return self._connection.execute(_statement(statement), params).scalar_one_or_none()

    def _scalars(self, statement: Prepared | sa.Executable, params: Params) -> list[Any]:
        if isinstance(statement, Prepared) and statement.sql is not None:
            return [row[0] for row in self._raw.execute(statement.sql, statement.bound(params))]
        return list(self._connection.execute(_statement(statement), params).scalars().all())

    def _rows(self, statement: Prepared | sa.Executable, params: Params) -> list[tuple[Any, ...]]:
        if isinstance(statement, Prepared) and statement.sql is not None:
            rows: list[tuple[Any, ...]] = self._raw.execute(
                statement.sql, statement.bound(params)
            ).fetchall()
            return rows
        return [tuple(row) for row in self._connection.execute(_statement(statement), params)]

    def _write(self, statement: Prepared | sa.Executable, params: Params) -> int:
        try:
            if isinstance(statement, Prepared) and statement.sql is not None:
                return self._raw.execute(statement.sql, statement.bound(params)).rowcount
            return int(self._connection.execute(_statement(statement), params).rowcount)
        except (sqlite3.IntegrityError, IntegrityError) as error:
            raise DuplicateKey(str(error)) from error

    def _write_returning(self, statement: Prepared | sa.Executable, params: Params) -> Any:
        try:
            if isinstance(statement, Prepared) and statement.sql is not None:
                # fetchall: the statement (and so its transaction) ends with its last row.
                rows = self._raw.execute(statement.sql, statement.bound(params)).fetchall()
            else:
                rows = list(self._connection.execute(_statement(statement), params).all())
        except (sqlite3.IntegrityError, IntegrityError) as error:
            raise DuplicateKey(str(error)) from error
        return rows[0][0] if rows else None

    async def _retry_while_locked(
        self,
        error: Exception,
        run: Callable[[Prepared | sa.Executable, Params], T],
        statement: Prepared | sa.Executable,
        params: Params,
    ) -> T:
        """``run`` again while another connection holds the lock it met (each statement is
        its own transaction: one that met the lock changed nothing), pausing in between so
        that the event loop serves other requests, until the lock timeout; any other fault
        of the store as StorageUnavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_timeout
        pause = _FIRST_PAUSE
        while sqlite_fault(error) is StorageFault.LOCK_TIMEOUT and loop.time() < deadline:
            await asyncio.sleep(pause)
            pause = min(2 * pause, _LONGEST_PAUSE)
            try:
                return run(statement, params)
            except _SQLITE_ERRORS as again:
                error = again
        raise_for_fault(error, sqlite_fault)


def create_executor(database_url: str, engine: AsyncEngine) -> Executor:
    if engine.dialect.name == "sqlite":
        return InlineSqliteExecutor(database_url)
    from dpsd.storage.postgres_executor import PostgresExecutor  # it builds on this module

    return PostgresExecutor(engine)
