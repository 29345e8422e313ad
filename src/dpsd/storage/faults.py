"""Which database errors mean that the store cannot serve now, and why: SQLite's result
codes and PostgreSQL's SQLSTATEs, read into a StorageFault of the use cases' error tree.

An error that is none of these (a statement dpsd got wrong, say) is not a fault of the
store: the executors let it through unchanged, to be answered as the bug it is.
"""

from __future__ import annotations

import logging
import sqlite3

import asyncpg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from dpsd.service.errors import StorageFault, StorageUnavailable

logger = logging.getLogger("dpsd.storage")

# Primary result codes (https://sqlite.org/rescode.html); extended codes add high bits.
_SQLITE_FAULTS = {
    5: StorageFault.LOCK_TIMEOUT,  # SQLITE_BUSY: another connection holds the write lock
    6: StorageFault.LOCK_TIMEOUT,  # SQLITE_LOCKED
    8: StorageFault.READ_ONLY,  # SQLITE_READONLY
    10: StorageFault.IO_ERROR,  # SQLITE_IOERR
    13: StorageFault.FULL_DISK,  # SQLITE_FULL
    14: StorageFault.IO_ERROR,  # SQLITE_CANTOPEN
}
_POSTGRES_FAULTS = {
    "25006": StorageFault.READ_ONLY,  # read_only_sql_transaction (a replica, or a read-only db)
    "53100": StorageFault.FULL_DISK,  # disk_full
    "55P03": StorageFault.LOCK_TIMEOUT,  # lock_not_available
    "57P01": StorageFault.CONNECTION_LOST,  # admin_shutdown (pg_terminate_backend)
    "57P02": StorageFault.CONNECTION_LOST,  # crash_shutdown
    "57P03": StorageFault.CONNECTION_LOST,  # cannot_connect_now (starting up)
}
_SHUTDOWNS = frozenset({"57P01", "57P02", "57P03"})


def sqlite_fault(error: BaseException) -> StorageFault | None:
    """The fault a SQLite error reports (raised by sqlite3, or by SQLAlchemy around it)."""
    cause = error.orig if isinstance(error, DBAPIError) else error
    code = getattr(cause, "sqlite_errorcode", None)
    if not isinstance(cause, sqlite3.Error) or not isinstance(code, int):
        return None
    return _SQLITE_FAULTS.get(code & 0xFF)


def postgres_fault(error: BaseException) -> StorageFault | None:
    """The fault a PostgreSQL error reports: a connection lost or refused (retry it), a full
    disk, a read-only database, a lock not granted, a server out of resources, or every
    connection of dpsd's pool busy for longer than a statement may wait for one."""
    if isinstance(error, PoolTimeout):
        return StorageFault.OUT_OF_RESOURCES
    if connection_lost(error):
        return StorageFault.CONNECTION_LOST
    state = _sqlstate(error)
    if state is None:
        return None
    if state.startswith("08"):
        return StorageFault.CONNECTION_LOST
    if state.startswith("53") and state not in _POSTGRES_FAULTS:
        return StorageFault.OUT_OF_RESOURCES
    return _POSTGRES_FAULTS.get(state)


def connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says the connection to the database broke or could not be made, so
    that a statement which did not reach its commit may run again on another."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, asyncpg.InterfaceError) and "closed" in str(error):
        return True  # asyncpg's "connection is closed": it closed before the statement went
    if isinstance(error, asyncpg.InternalClientError):
        return True  # a connection the server ended left asyncpg's protocol mid-operation
    state = _sqlstate(error) or ""
    if state.startswith("08") or state in _SHUTDOWNS:
        return True
    return isinstance(error, OSError)  # asyncpg's own, connecting: refused, unreachable, timeout


def _sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of a PostgreSQL error, raised by asyncpg or by SQLAlchemy around it."""
    if isinstance(error, DBAPIError):
        return str(getattr(error.orig, "sqlstate", None) or "")
    if isinstance(error, asyncpg.PostgresError):
        return str(getattr(error, "sqlstate", None) or "")
    return None


def unavailable(fault: StorageFault, error: BaseException) -> StorageUnavailable:
    """The StorageUnavailable to raise for ``error``, reported in one log line that names
    the fault (the request's tracking id comes with it)."""
    detail = _first_line(error.orig if isinstance(error, DBAPIError) else error)
    logger.warning(
        "the store is unavailable: %(fault)s (%(detail)s)",
        {"event": "store_unavailable", "fault": fault.value, "detail": detail},
    )
    return StorageUnavailable(fault, detail)


def _first_line(error: BaseException | None) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
