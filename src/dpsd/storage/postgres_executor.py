"""PostgreSQL statements on asyncpg's own pool, for the statements repositories prepare.

Through SQLAlchemy's async engine a point read cost about 260 µs of dpsd's CPU (checking a
connection out of its pool, greenlet switches, result objects), several times what
asyncpg itself spends (about 60 to 100 µs with its pool and its cache of server-side
prepared statements). So, as on SQLite (``storage.executor``), a statement a repository
prepares is compiled once, here to PostgreSQL's numbered parameters (``$1``, with the same
casts SQLAlchemy's asyncpg dialect sends), and run straight on an asyncpg connection.
Statements built per call (queries, listings, migrations) keep going through the engine.

Every write runs in a transaction of its own, as through the engine: a statement that
failed before its COMMIT changed nothing, so one that lost its connection then runs once
more on another; one that failed in its COMMIT may have been made and is not repeated.
A write whose statement is repeatable (``Prepared.repeatable``: an upsert, such as the one
write of a registration) runs alone instead, without BEGIN and COMMIT: one round trip, not
three; having lost its connection at any point, it runs once more, which leaves what it
would have left.
Faults of the store become StorageUnavailable as through the engine (``storage.faults``);
a statement that waits longer than ``acquire_timeout`` for a connection is the store out
of resources.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import asyncpg
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.asyncpg import dialect as asyncpg_dialect
from sqlalchemy.exc import CompileError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement

from dpsd.storage.executor import (
    AsyncEngineExecutor,
    BeforeCommit,
    DuplicateKey,
    Params,
    Prepared,
    once_more_if_lost,
)

POOL_SIZE = 15
ACQUIRE_TIMEOUT = 30.0
_DIALECT = asyncpg_dialect()  # type: ignore[no-untyped-call]
T = TypeVar("T")
Attempt = Callable[[asyncpg.Connection, str, list[Any]], Awaitable[T]]
# InternalClientError: a connection the server ended while it sat in the pool can leave
# asyncpg's protocol mid-operation ("another operation is in progress") at its next use.
_STORE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)


class _InCommit(Exception):
    """A write failed while committing: it may have been made."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class PostgresExecutor:
    """Prepared statements on an asyncpg pool (made at the first statement, with the
    connection settings of ``engine``'s URL and ``pool_options``); the rest through
    ``engine``."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        pool_options: Mapping[str, Any] | None = None,
        acquire_timeout: float = ACQUIRE_TIMEOUT,
    ) -> None:
        self._through_engine = AsyncEngineExecutor(engine)
        _, connect = engine.dialect.create_connect_args(engine.url)
        self._pool_options = {"min_size": 0, "max_size": POOL_SIZE, **connect}
        self._pool_options.update(pool_options or {})
        self._acquire_timeout = acquire_timeout
        self._pool: asyncpg.Pool | None = None
        self._pool_made = asyncio.Lock()
        self.dialect = "postgresql"

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared:
        element = cast(ClauseElement, statement)
        try:
            compiled = element.compile(
                dialect=_DIALECT,
                column_keys=list(columns) or None,
                compile_kwargs={"render_postcompile": True},
            )
        except CompileError:  # parameters only a call can expand: through the engine
            return Prepared(statement)
        defaults = {name: value for name, value in compiled.params.items() if value is not None}
        order = tuple(cast(SQLCompiler, compiled).positiontup or ())
        return Prepared(statement, str(compiled), defaults or None, order)

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any:
        if not _direct(statement):
            return await self._through_engine.scalar(statement, params)
        return await self._run(_first_value, statement, params, writes=False)

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        if not _direct(statement):
            return await self._through_engine.scalars(statement, params)
        return await self._run(_first_values, statement, params, writes=False)

    async def rows(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[tuple[Any, ...]]:
        if not _direct(statement):
            return await self._through_engine.rows(statement, params)
        return await self._run(_all_rows, statement, params, writes=False)

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        if not _direct(statement):
            return await self._through_engine.write(statement, params)
        return await self._run(_rows_touched, statement, params, writes=True)

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        if not _direct(statement):
            return await self._through_engine.write_returning(statement, params)
        return await self._run(_first_value, statement, params, writes=True)

    async def close(self) -> None:
        """Closes the pool made here; the engine belongs to whoever made it."""
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def _run(
        self,
        attempt: Attempt[T],
        statement: Prepared | sa.Executable,
        params: Params,
        *,
        writes: bool,
    ) -> T:
        prepared = cast(Prepared, statement)
        sql = cast(str, prepared.sql)
        bound = prepared.bound(params)
        arguments = [bound[name] for name in prepared.order or ()]
        transaction = writes and not prepared.repeatable
        return await once_more_if_lost(
            lambda: self._once(attempt, sql, arguments, transaction), _STORE_ERRORS
        )

    async def _once(
        self, attempt: Attempt[T], sql: str, arguments: list[Any], transaction: bool
    ) -> T:
        try:
            pool = await self._ready_pool()
            async with pool.acquire(timeout=self._acquire_timeout) as connection:
                try:
                    if not transaction:
                        return await attempt(connection, sql, arguments)
                    return await _in_transaction(connection, attempt, sql, arguments)
                except asyncpg.InternalClientError:
                    connection.terminate()  # its protocol is stuck mid-operation: not reused
                    raise
        except _InCommit as failed:  # raised as it came: not to be repeated
            raise failed.error from None
        except asyncpg.IntegrityConstraintViolationError as error:
            raise DuplicateKey(str(error)) from error
        except TimeoutError as error:  # no connection free (or made) in time
            raise BeforeCommit(PoolTimeout(str(error) or "no connection free in time")) from error
        except _STORE_ERRORS as error:
            raise BeforeCommit(error) from error

    async def _ready_pool(self) -> asyncpg.Pool:
        if self._pool is None:
            async with self._pool_made:
                if self._pool is None:
                    self._pool = await asyncpg.create_pool(**self._pool_options)
        return self._pool


async def _in_transaction(
    connection: asyncpg.Connection, attempt: Attempt[T], sql: str, arguments: list[Any]
) -> T:
    transaction = connection.transaction()
    await transaction.start()
    try:
        result = await attempt(connection, sql, arguments)
    except BaseException:
        if not connection.is_closed():
            with contextlib.suppress(*_STORE_ERRORS):
                await transaction.rollback()
        raise
    try:
        await transaction.commit()
    except _STORE_ERRORS as error:
        raise _InCommit(error) from error
    return result


def _direct(statement: Prepared | sa.Executable) -> bool:
    return isinstance(statement, Prepared) and statement.sql is not None


async def _first_value(connection: asyncpg.Connection, sql: str, arguments: list[Any]) -> Any:
    row = await connection.fetchrow(sql, *arguments)
    return None if row is None else row[0]


async def _first_values(
    connection: asyncpg.Connection, sql: str, arguments: list[Any]
) -> list[Any]:
    return [row[0] for row in await connection.fetch(sql, *arguments)]


async def _all_rows(
    connection: asyncpg.Connection, sql: str, arguments: list[Any]
) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in await connection.fetch(sql, *arguments)]


async def _rows_touched(connection: asyncpg.Connection, sql: str, arguments: list[Any]) -> int:
    """The row count of a command's status (``UPDATE 2``, ``INSERT 0 1``)."""
    status = await connection.execute(sql, *arguments)
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
