"""How long a register waits for its operation to settle in place."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from dpsd.domain.registration import RegistrationOperation
from dpsd.service.device_registration import _Settling
from dpsd.service.throttling import RegistrationSlot, Throttle, ThrottleLimits

SETTLED = cast(RegistrationOperation, object())


async def settle(release: asyncio.Event, fail: bool = False) -> RegistrationOperation:
    """An operation that settles (or fails to) once ``release`` is set."""
    await release.wait()
    if fail:
        raise RuntimeError("the store is gone")
    return SETTLED


def in_flight() -> tuple[Throttle, RegistrationSlot]:
    throttle = Throttle(ThrottleLimits(max_in_flight=10))
    return throttle, throttle.admit_registration()


async def test_an_operation_that_settles_in_time_is_waited_for() -> None:
    release = asyncio.Event()
    background: set[asyncio.Task[Any]] = set()
    settling = _Settling(settle(release), RegistrationSlot(None), background)
    assert background == {settling.task}
    asyncio.get_running_loop().call_soon(release.set)
    assert await settling.within(30) is SETTLED
    await settling.task
    assert background == set()


async def test_one_still_settling_at_the_deadline_goes_on_without_the_waiter() -> None:
    release = asyncio.Event()
    throttle, slot = in_flight()
    settling = _Settling(settle(release), slot, set())
    assert await settling.within(0.001) is None
    assert not settling.task.done()
    assert throttle.in_flight == 1
    release.set()
    assert await settling.task is SETTLED
    assert throttle.in_flight == 0


async def test_zero_seconds_does_not_wait() -> None:
    release = asyncio.Event()
    release.set()
    settling = _Settling(settle(release), RegistrationSlot(None), set())
    assert await settling.within(0) is None
    assert await settling.task is SETTLED


async def test_a_failure_in_time_reaches_the_waiter_only() -> None:
    release = asyncio.Event()
    throttle, slot = in_flight()
    settling = _Settling(settle(release, fail=True), slot, set())
    asyncio.get_running_loop().call_soon(release.set)
    with pytest.raises(RuntimeError, match="the store is gone"):
        await settling.within(30)
    assert await settling.task is None  # handed over, not the task's own failure
    assert throttle.in_flight == 0


async def test_a_failure_after_the_deadline_is_the_tasks_own() -> None:
    release = asyncio.Event()
    settling = _Settling(settle(release, fail=True), RegistrationSlot(None), set())
    assert await settling.within(0.001) is None
    release.set()
    with pytest.raises(RuntimeError, match="the store is gone"):
        await settling.task
