"""dpsd.eager: a coroutine runs in the caller's turn until it first waits, then in a task."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from dpsd import eager

FACT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fact", default=None)


async def returns_at_once(steps: list[str]) -> str:
    steps.append("ran")
    return "done"


async def waits_for(future: asyncio.Future[str], steps: list[str]) -> str:
    steps.append("before the wait")
    value = await future
    steps.append("after the wait")
    return value.upper()


async def test_a_coroutine_that_never_waits_finishes_in_the_call_without_a_task() -> None:
    steps: list[str] = []
    tasks_before = asyncio.all_tasks()

    started = eager.start(returns_at_once(steps), asyncio.get_running_loop())

    assert started == eager.Finished("done")
    assert steps == ["ran"]
    assert asyncio.all_tasks() == tasks_before


async def test_a_coroutine_that_waits_runs_up_to_the_wait_in_the_call_and_on_in_a_task() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()
    steps: list[str] = []

    started = eager.start(waits_for(future, steps), loop)

    assert isinstance(started, asyncio.Task)
    assert steps == ["before the wait"]
    future.set_result("answer")
    assert await started == "ANSWER"
    assert steps == ["before the wait", "after the wait"]


async def test_what_it_raises_before_waiting_is_raised_by_the_call() -> None:
    async def fails() -> None:
        raise ValueError("at once")

    with pytest.raises(ValueError, match="at once"):
        eager.start(fails(), asyncio.get_running_loop())


async def test_what_it_raises_after_waiting_is_the_tasks_exception() -> None:
    async def fails_later() -> None:
        await asyncio.sleep(0)
        raise ValueError("later")

    started = eager.start(fails_later(), asyncio.get_running_loop())

    assert isinstance(started, asyncio.Task)
    with pytest.raises(ValueError, match="later"):
        await started


async def test_cancelling_the_task_cancels_the_coroutine_where_it_waits() -> None:
    loop = asyncio.get_running_loop()
    never: asyncio.Future[str] = loop.create_future()
    cleaned_up: list[bool] = []

    async def waits_forever() -> str:
        try:
            return await never
        finally:
            cleaned_up.append(True)

    started = eager.start(waits_forever(), loop)
    assert isinstance(started, asyncio.Task)
    await asyncio.sleep(0)  # the task takes over the wait

    started.cancel()

    with pytest.raises(asyncio.CancelledError):
        await started
    assert cleaned_up == [True]
    assert never.cancelled()


async def test_a_coroutine_that_handles_a_cancellation_goes_on() -> None:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[str] = loop.create_future()

    async def shrugs_off_a_cancellation() -> str:
        try:
            await first
        except asyncio.CancelledError:
            await asyncio.sleep(0)
            return "carried on"
        return "not cancelled"

    started = eager.start(shrugs_off_a_cancellation(), loop)
    assert isinstance(started, asyncio.Task)
    await asyncio.sleep(0)
    started.cancel()

    assert await started == "carried on"


async def test_a_context_variable_set_before_the_wait_is_reset_after_it() -> None:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()
    seen: list[str | None] = []

    async def sets_a_fact_across_the_wait() -> None:
        token = FACT.set("inside")
        try:
            await future
            seen.append(FACT.get())
        finally:
            FACT.reset(token)  # raises if the task ran in another context than the call
        seen.append(FACT.get())

    started = eager.start(sets_a_fact_across_the_wait(), loop)
    assert FACT.get() is None  # the caller's context is untouched
    future.set_result(None)
    assert isinstance(started, asyncio.Task)
    await started

    assert seen == ["inside", None]


async def test_the_coroutine_sees_the_callers_context_variables() -> None:
    FACT.set("the caller's")

    async def reads_the_fact() -> str | None:
        return FACT.get()

    assert eager.start(reads_the_fact(), asyncio.get_running_loop()) == eager.Finished(
        "the caller's"
    )
