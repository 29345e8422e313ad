"""Faults of the store, provoked for real: a full SQLite database, a read-only one, another
connection holding SQLite's write lock, PostgreSQL connections terminated between and during
statements, a read-only PostgreSQL database. Each is StorageUnavailable naming its fault
(logged once), a lock is waited for without holding up the event loop, and a PostgreSQL
statement that lost its connection before its commit runs again, once."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from dpsd.service.errors import StorageFault, StorageUnavailable
from dpsd.storage.engine import async_url, create_engine
from dpsd.storage.executor import AsyncEngineExecutor, Executor, InlineSqliteExecutor
from dpsd.storage.postgres_executor import PostgresExecutor
from tests.conftest import POSTGRES_URL

ROW = sa.text("INSERT INTO probe (k, v) VALUES (:k, :v)")
COUNT = sa.text("SELECT count(*) FROM probe")


@pytest.fixture
async def sqlite_file(tmp_path: Path) -> Path:
    path = tmp_path / "faults.db"
    executor = InlineSqliteExecutor(f"sqlite:///{path}")
    await executor.write(sa.text("CREATE TABLE probe (k TEXT PRIMARY KEY, v TEXT)"))
    await executor.close()
    return path


def assert_logged(caplog: pytest.LogCaptureFixture, fault: StorageFault) -> None:
    lines = [r for r in caplog.records if r.name == "dpsd.storage" and fault.value in r.message]
    assert lines, [r.message for r in caplog.records]


async def fill(executor: Executor) -> None:
    for n in range(100):
        await executor.write(executor.prepare(ROW), {"k": str(n), "v": "x" * 2000})


async def test_a_full_sqlite_database(sqlite_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    executor = InlineSqliteExecutor(f"sqlite:///{sqlite_file}")
    pages = await executor.scalar(sa.text("PRAGMA page_count"))
    await executor.write(sa.text(f"PRAGMA max_page_count = {pages + 4}"))
    with pytest.raises(StorageUnavailable) as raised:
        await fill(executor)
    assert raised.value.fault is StorageFault.FULL_DISK
    assert "full disk" in raised.value.message
    assert_logged(caplog, StorageFault.FULL_DISK)
    assert await executor.scalar(COUNT) > 0  # what is stored can still be read
    await executor.close()


async def test_a_read_only_sqlite_database(sqlite_file: Path) -> None:
    executor = InlineSqliteExecutor(f"sqlite:///file:{sqlite_file}?mode=ro&uri=true")
    for statement in (executor.prepare(ROW), ROW):
        with pytest.raises(StorageUnavailable) as raised:
            await executor.write(statement, {"k": "a", "v": "b"})
        assert raised.value.fault is StorageFault.READ_ONLY
    assert await executor.scalar(COUNT) == 0
    await executor.close()


def lock_holder(path: Path) -> sqlite3.Connection:
    """Another connection, holding SQLite's write lock (as another process would)."""
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    return holder


async def test_a_write_waits_for_the_lock_without_holding_up_others(sqlite_file: Path) -> None:
    executor = InlineSqliteExecutor(f"sqlite:///{sqlite_file}")
    holder = lock_holder(sqlite_file)
    write = asyncio.create_task(executor.write(executor.prepare(ROW), {"k": "a", "v": "b"}))
    done, _ = await asyncio.wait({write}, timeout=0.2)
    assert not done, "the write waits for the lock, and the event loop runs meanwhile"
    started = time.monotonic()
    assert await executor.scalar(COUNT) == 0  # a read is served while the write waits
    assert time.monotonic() - started < 0.1
    holder.execute("COMMIT")
    assert await asyncio.wait_for(write, timeout=5) == 1
    assert await executor.scalar(COUNT) == 1
    holder.close()
    await executor.close()


async def test_a_lock_held_too_long_is_a_lock_timeout(
    sqlite_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = InlineSqliteExecutor(f"sqlite:///{sqlite_file}", lock_timeout=0.3)
    holder = lock_holder(sqlite_file)
    started = time.monotonic()
    with pytest.raises(StorageUnavailable) as raised:
        await executor.write(ROW, {"k": "a", "v": "b"})
    assert raised.value.fault is StorageFault.LOCK_TIMEOUT
    assert 0.3 <= time.monotonic() - started < 3
    assert_logged(caplog, StorageFault.LOCK_TIMEOUT)
    holder.execute("ROLLBACK")
    assert await executor.write(ROW, {"k": "a", "v": "b"}) == 1
    holder.close()
    await executor.close()


async def test_errors_that_are_no_fault_of_the_store_pass_unchanged(sqlite_file: Path) -> None:
    executor = InlineSqliteExecutor(f"sqlite:///{sqlite_file}")
    with pytest.raises(sa.exc.OperationalError, match="no such table"):
        await executor.write(sa.text("DELETE FROM nowhere"))
    await executor.close()


# --- PostgreSQL -------------------------------------------------------------------------


PG_EXECUTORS = ["engine", "asyncpg"]


def pg_executor(kind: str, engine: AsyncEngine, **pool_options: Any) -> Executor:
    """``engine``: statements through SQLAlchemy's engine; ``asyncpg``: prepared statements
    on asyncpg's own pool (what dpsd runs on PostgreSQL)."""
    if kind == "engine":
        return AsyncEngineExecutor(engine)
    timeout = pool_options.pop("acquire_timeout", 30.0)
    return PostgresExecutor(engine, pool_options=pool_options, acquire_timeout=timeout)


class Statements:
    """Runs each statement prepared, as repositories do; ``kind``: which executor (one of
    PG_EXECUTORS)."""

    def __init__(self, executor: Executor, kind: str) -> None:
        self.executor = executor
        self.kind = kind

    async def scalar(self, statement: sa.Executable, params: dict[str, Any] | None = None) -> Any:
        return await self.executor.scalar(self.executor.prepare(statement), params)

    async def write(
        self,
        statement: sa.Executable,
        params: dict[str, Any] | None = None,
        *,
        repeatable: bool = False,
    ) -> int:
        prepared = replace(self.executor.prepare(statement), repeatable=repeatable)
        return await self.executor.write(prepared, params)


@pytest.fixture(params=PG_EXECUTORS)
async def postgres(
    postgres_server: str, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[Statements, Killer]]:
    engine = create_engine(postgres_server)
    table = f"probe_{uuid.uuid4().hex[:8]}"
    async with engine.begin() as connection:
        await connection.execute(sa.text(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v TEXT)"))
    killer = Killer(postgres_server.rsplit("/", 1)[1], table)
    executor = pg_executor(request.param, engine)
    try:
        yield Statements(executor, request.param), killer
    finally:
        await executor.close()
        await engine.dispose()  # its pooled connections may have been terminated
        async with engine.begin() as connection:
            await connection.execute(sa.text(f"DROP TABLE {table}"))
        await engine.dispose()


class Killer:
    """Terminates this test session's own connections to its database (pg_terminate_backend),
    from a connection to another database."""

    def __init__(self, database: str, table: str) -> None:
        self.database = database
        self.table = table

    def sql(self, text: str) -> sa.TextClause:
        return sa.text(text.replace("probe", self.table))

    async def run(self, statement: str) -> Any:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
        try:
            return await admin.fetch(statement, self.database)
        finally:
            await admin.close()

    async def terminate_all(self) -> int:
        return len(
            await self.run(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1"
            )
        )

    async def while_running(
        self, statement: Awaitable[Any], select: str, *, rows: int
    ) -> tuple[Any, list[asyncpg.Record]]:
        """Run ``statement`` (one that sleeps), selecting ``select`` over its connection in
        pg_stat_activity each time it is seen running, until ``rows`` rows came back in
        all; what the statement returned, and those rows."""
        task = asyncio.ensure_future(statement)
        seen: list[asyncpg.Record] = []
        while not task.done() and len(seen) < rows:
            seen += await self.run(
                f"SELECT {select} FROM pg_stat_activity "
                "WHERE datname = $1 AND query LIKE '%pg_sleep%' AND state = 'active'"
            )
            await asyncio.wait({task}, timeout=0.02)
        return await task, seen

    async def transaction_of_its_own(self, statement: Awaitable[Any]) -> bool:
        """Run ``statement`` (one that sleeps), and say whether its transaction began
        before it did (BEGIN, then the statement), as seen while it runs."""
        _, seen = await self.while_running(
            statement, "xact_start < query_start AS begun_before", rows=1
        )
        assert seen, "the statement ended before it was seen running"
        return bool(seen[0]["begun_before"])

    async def terminate_while(self, statement: Awaitable[Any], *, times: int) -> Any:
        """Run ``statement``, terminating its connection each time it is seen running (at
        most ``times`` times)."""
        result, _ = await self.while_running(statement, "pg_terminate_backend(pid)", rows=times)
        return result

    def sleeping_upsert(self, seconds: float) -> sa.TextClause:
        """An upsert of one row into the probe table that sleeps ``seconds`` first."""
        return self.sql(
            f"INSERT INTO probe SELECT 'k', 'v' FROM pg_sleep({seconds}) "
            "ON CONFLICT (k) DO UPDATE SET v = excluded.v"
        )


@pytest.mark.postgres
async def test_connections_terminated_between_statements_go_unnoticed(
    postgres: tuple[Statements, Killer],
) -> None:
    executor, killer = postgres
    await executor.scalar(sa.text("SELECT 1"))
    for round_ in range(3):
        assert await killer.terminate_all() >= 1
        for n in range(5):
            key = f"{round_}-{n}"
            assert await executor.write(
                killer.sql("INSERT INTO probe VALUES (:k, 'v')"), {"k": key}
            )
            assert await executor.scalar(killer.sql("SELECT k FROM probe WHERE k = :k"), {"k": key})


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["read", "write"])
async def test_a_statement_that_loses_its_connection_runs_again_once(
    postgres: tuple[Statements, Killer], kind: str
) -> None:
    executor, killer = postgres
    if kind == "read":
        statement = executor.scalar(sa.text("SELECT 7 FROM pg_sleep(0.5)"))
        assert await killer.terminate_while(statement, times=1) == 7
        return
    insert = killer.sql("INSERT INTO probe SELECT 'once', 'v' FROM pg_sleep(0.5)")
    assert await killer.terminate_while(executor.write(insert), times=1) == 1
    assert await executor.scalar(killer.sql("SELECT count(*) FROM probe")) == 1


@pytest.mark.postgres
async def test_a_repeatable_write_that_loses_its_connection_runs_again_once(
    postgres: tuple[Statements, Killer],
) -> None:
    executor, killer = postgres
    upsert = killer.sleeping_upsert(0.5)
    assert await killer.terminate_while(executor.write(upsert, repeatable=True), times=1) == 1
    assert await executor.scalar(killer.sql("SELECT count(*) FROM probe")) == 1


@pytest.mark.postgres
async def test_a_repeatable_write_runs_without_begin_and_commit(
    postgres: tuple[Statements, Killer],
) -> None:
    executor, killer = postgres
    upsert = killer.sleeping_upsert(0.3)
    assert await killer.transaction_of_its_own(executor.write(upsert))
    # Prepared statements on asyncpg's pool; through SQLAlchemy's engine every write begins one.
    alone = executor.kind == "asyncpg"
    assert await killer.transaction_of_its_own(executor.write(upsert, repeatable=True)) != alone


@pytest.mark.postgres
async def test_a_connection_lost_twice_is_storage_unavailable(
    postgres: tuple[Statements, Killer], caplog: pytest.LogCaptureFixture
) -> None:
    executor, killer = postgres
    with pytest.raises(StorageUnavailable) as raised:
        await killer.terminate_while(
            executor.scalar(sa.text("SELECT 1 FROM pg_sleep(0.5)")), times=5
        )
    assert raised.value.fault is StorageFault.CONNECTION_LOST
    assert_logged(caplog, StorageFault.CONNECTION_LOST)
    assert await executor.scalar(sa.text("SELECT 1")) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("kind", PG_EXECUTORS)
async def test_an_unreachable_server_is_storage_unavailable(kind: str) -> None:
    with socket.socket() as unused:  # a port of our own, closed again: nothing listens there
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    engine = create_async_engine(async_url(f"postgresql://postgres@127.0.0.1:{port}/nowhere"))
    executor = pg_executor(kind, engine)
    with pytest.raises(StorageUnavailable) as raised:
        await Statements(executor, kind).scalar(sa.text("SELECT 1"))
    assert raised.value.fault is StorageFault.CONNECTION_LOST
    await executor.close()
    await engine.dispose()


@pytest.mark.postgres
async def test_a_read_only_postgres_database(postgres: tuple[Statements, Killer]) -> None:
    statements, killer = postgres
    settings = {"server_settings": {"default_transaction_read_only": "on"}}
    read_only = create_async_engine(
        async_url(f"{POSTGRES_URL.rsplit('/', 1)[0]}/{killer.database}"), connect_args=settings
    )
    executor = pg_executor(statements.kind, read_only, **settings)
    with pytest.raises(StorageUnavailable) as raised:
        await Statements(executor, statements.kind).write(
            killer.sql("INSERT INTO probe VALUES ('a', 'b')")
        )
    assert raised.value.fault is StorageFault.READ_ONLY
    assert (
        await Statements(executor, statements.kind).scalar(killer.sql("SELECT count(*) FROM probe"))
        == 0
    )
    await executor.close()
    await read_only.dispose()


@pytest.mark.postgres
async def test_a_pool_whose_connections_stay_busy_is_out_of_resources(
    postgres: tuple[Statements, Killer], caplog: pytest.LogCaptureFixture
) -> None:
    statements, killer = postgres
    url = async_url(f"{POSTGRES_URL.rsplit('/', 1)[0]}/{killer.database}")
    engine = create_async_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    executor = pg_executor(statements.kind, engine, max_size=1, acquire_timeout=0.2)
    busy = Statements(executor, statements.kind)
    holder = asyncio.ensure_future(busy.scalar(sa.text("SELECT 1 FROM pg_sleep(1.5)")))
    try:
        busy_seen = False
        while not busy_seen:  # the pool's only connection, busy (each look a round trip)
            busy_seen = bool(
                await killer.run(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active'"
                    " AND query LIKE '%pg_sleep(1.5)%' AND pid <> pg_backend_pid()"
                )
            )
        for statement in (
            busy.scalar(killer.sql("SELECT count(*) FROM probe")),
            busy.write(killer.sql("INSERT INTO probe VALUES ('a', 'b')")),
        ):
            with pytest.raises(StorageUnavailable) as raised:
                await statement
            assert raised.value.fault is StorageFault.OUT_OF_RESOURCES
        assert await holder == 1
        assert_logged(caplog, StorageFault.OUT_OF_RESOURCES)
        assert await busy.scalar(killer.sql("SELECT count(*) FROM probe")) == 0
    finally:
        holder.cancel()
        await executor.close()
        await engine.dispose()
