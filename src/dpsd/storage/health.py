"""How the store fares: whether it answers (readiness probes) and how many of its statements
fail (a metric).

``ErrorCountingExecutor`` sits between the repositories and the executor and reports each
statement that raises, other than an insert meeting an existing key (a normal outcome the
repositories turn into a DPS conflict) and a cancellation. It costs two more coroutine
frames per statement, well under a microsecond.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa

from dpsd.storage.executor import DuplicateKey, Executor, Params, Prepared

_TRIVIAL = sa.text("SELECT 1")
T = TypeVar("T")


class StoreDidNotAnswer(Exception):
    """The store answered a trivial query wrongly."""


async def store_answers(executor: Executor) -> None:
    """Raises when the store does not answer ``SELECT 1`` (callers bound the wait)."""
    if await executor.scalar(_TRIVIAL) != 1:
        raise StoreDidNotAnswer("SELECT 1 did not answer 1")


class ErrorCountingExecutor:
    """``executor``, with ``on_error`` called for each statement that fails."""

    def __init__(self, executor: Executor, on_error: Callable[[], None]) -> None:
        self._executor = executor
        self._on_error = on_error
        self.dialect = executor.dialect

    def prepare(self, statement: sa.Executable, columns: Sequence[str] = ()) -> Prepared:
        return self._executor.prepare(statement, columns)

    async def scalar(self, statement: Prepared | sa.Executable, params: Params = None) -> Any:
        return await self._counted(self._executor.scalar(statement, params))

    async def scalars(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[Any]:
        return await self._counted(self._executor.scalars(statement, params))

    async def rows(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> list[tuple[Any, ...]]:
        return await self._counted(self._executor.rows(statement, params))

    async def write(self, statement: Prepared | sa.Executable, params: Params = None) -> int:
        return await self._counted(self._executor.write(statement, params))

    async def write_returning(
        self, statement: Prepared | sa.Executable, params: Params = None
    ) -> Any:
        return await self._counted(self._executor.write_returning(statement, params))

    async def _counted(self, statement: Awaitable[T]) -> T:
        try:
            return await statement
        except DuplicateKey:
            raise
        except Exception:
            self._on_error()
            raise

    async def close(self) -> None:
        await self._executor.close()
