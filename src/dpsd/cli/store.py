"""The commands that open a data dir's store themselves (serve, info, hub, certificate): the
store they work on, and what goes wrong while they open it, said in one line: a data dir
that cannot be written, a database that cannot be reached or used (named without its
password), TLS files or other files of the data dir that cannot be read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from dpsd.administration import Administration, build_administration
from dpsd.cli.failures import USAGE, fail
from dpsd.cli.options import make_settings
from dpsd.data_dir import DataDirError
from dpsd.domain.errors import DomainError
from dpsd.service.errors import ServiceError
from dpsd.settings import Settings, store_file
from dpsd.storage.failures import database_failure, redacted, url_problem
from dpsd.tls import TlsFilesError

T = TypeVar("T")


@contextmanager
def opening_store(settings: Settings, database_given: bool) -> Iterator[None]:
    """Ends the command with one line for a failure of the block that an operator can
    mend. ``database_given``: whether --database named the database (else the data dir
    remembers it, or it is the data dir's SQLite file)."""
    problem = url_problem(settings.database_url)
    if problem is not None:
        fail(problem, USAGE)
    try:
        yield
    except (DataDirError, TlsFilesError, DomainError, ServiceError) as error:
        fail(error.message)
    except Exception as error:
        message = _opening_failure(error, settings, database_given)
        if message is None:
            raise
        fail(message)


def _opening_failure(error: Exception, settings: Settings, database_given: bool) -> str | None:
    reason = database_failure(error, settings.database_url)
    if reason is not None:
        database = redacted(settings.database_url)
        remembered = ""
        if settings.database is not None and not database_given:
            remembered = (
                f" (remembered in {store_file(settings.data_dir)}: --database names another)"
            )
        return f"cannot use the database {database}: {reason}{remembered}"
    if isinstance(error, OSError) and error.filename is not None:
        return f"cannot use {error.filename}: {error.strerror or error}"
    return None


def run_on_store(
    data_dir: Path | None,
    database: str | None,
    action: Callable[[Administration], Awaitable[T]],
) -> T:
    """``action`` on the data dir's store (made ready as ``dpsd serve`` would: the data
    dir, its TLS files and the schema)."""
    settings = make_settings(data_dir, database)

    async def run() -> T:
        async with build_administration(settings) as administration:
            return await action(administration)

    with opening_store(settings, database is not None):
        return asyncio.run(run())
