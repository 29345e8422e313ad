"""Running a coroutine at once, in the caller's turn of the event loop, until it first
waits; only then does it get a task of its own.

On SQLite the store answers inline, so a device's CONNECT, register and poll usually
finish without ever waiting. A task for each would cost the event loop a task, a turn and
a callback (about 10 µs each, several per registration) for nothing. Python 3.12's eager
task factory does what ``start`` does; dpsd runs on 3.11 too, and wants it only where the
caller knows the work is short.

The coroutine runs in a copy of the caller's context, and the task that takes over (if
any) in that same copy, so context variables set before the first wait are reset in the
context that set them. Until it first waits, the coroutine runs in no task of its own:
``asyncio.current_task()`` is the caller's task, if any. So code that binds to the current
task (``asyncio.timeout``, anyio's cancel scopes, and so httpx) must not run before the
first wait; ``asyncio.wait_for`` gives such work a task of its own.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Finished(Generic[T]):
    """The coroutine finished without waiting: what it returned."""

    value: T


def start(
    coroutine: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> Finished[T] | asyncio.Task[T]:
    """Run ``coroutine`` until it finishes or first waits: what it returned, else the task
    that runs the rest. What it raises before it first waits is raised here."""
    context = contextvars.copy_context()
    try:
        awaited = context.run(coroutine.send, None)
    except StopIteration as finished:
        return Finished(finished.value)
    return loop.create_task(_rest(coroutine, awaited), context=context)


async def _rest(coroutine: Coroutine[Any, Any, T], awaited: Any) -> T:
    return await _Resumed(coroutine, awaited)


class _Resumed(Generic[T]):
    """The rest of a coroutine that yielded ``awaited`` to no task, for a task to await."""

    __slots__ = ("_awaited", "_coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, T], awaited: Any) -> None:
        self._coroutine = coroutine
        self._awaited = awaited

    def __await__(self) -> Generator[Any, Any, T]:
        coroutine, awaited = self._coroutine, self._awaited
        while True:
            try:
                sent = yield awaited  # the task waits for it, then hands on what it gave
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # noqa: BLE001 - thrown in by the task: handed on
                try:
                    awaited = coroutine.throw(error)
                except StopIteration as finished:
                    return finished.value  # type: ignore[no-any-return]
                continue
            try:
                awaited = coroutine.send(sent)
            except StopIteration as finished:
                return finished.value  # type: ignore[no-any-return]
