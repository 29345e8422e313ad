"""How long a register waits for its operation to finish in place."""

from __future__ import annotations

import asyncio

from dpsd.service.device_registration import _finished_within


async def settle(release: asyncio.Event) -> str:
    """An operation that settles once ``release`` is set."""
    await release.wait()
    return "settled"


async def test_a_task_that_finishes_in_time_is_waited_for() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(settle(release))
    asyncio.get_running_loop().call_soon(release.set)
    assert await _finished_within(task, 30)
    assert task.result() == "settled"


async def test_a_task_still_running_at_the_deadline_goes_on_without_the_waiter() -> None:
    release = asyncio.Event()
    task = asyncio.create_task(settle(release))
    assert not await _finished_within(task, 0.001)
    assert not task.done()
    release.set()
    assert await task == "settled"


async def test_a_finished_task_needs_no_wait() -> None:
    release = asyncio.Event()
    release.set()
    task = asyncio.create_task(settle(release))
    await task
    assert await _finished_within(task, 0)
