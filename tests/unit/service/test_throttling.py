"""The load-shedding policy: its limits, what it lets in, and what it tells devices to wait.
The clock and the jitter are given, so every decision is exact."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dpsd.service.errors import Throttled, ThrottleLimit
from dpsd.service.throttling import Rate, Throttle, ThrottleLimits, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def throttle(limits: ThrottleLimits, clock: Clock | None = None, jitter: float = 0.0) -> Throttle:
    return Throttle(limits, clock or Clock(), lambda: jitter)


def refusal(admit: object) -> Throttled:
    assert callable(admit)
    with pytest.raises(Throttled) as raised:
        admit()
    return raised.value


# --- rates ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate"),
    [("1000/60", Rate(1000, 60)), ("5/10s", Rate(5, 10)), (" 3 / 0.5 ", Rate(3, 0.5))],
)
def test_a_rate_is_read_as_count_per_seconds(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate
    assert Rate.parse(str(rate)) == rate


@pytest.mark.parametrize("text", ["", "10", "10/", "/10", "ten/60", "10/60m", "-1/10", "1/-1"])
def test_what_is_not_a_rate_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a rate"):
        Rate.parse(text)


@pytest.mark.parametrize("text", ["0/10", "1/0", "1/86401"])
def test_rates_that_allow_nothing_or_wait_too_long_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="a rate"):
        Rate.parse(text)


@pytest.mark.parametrize(
    "limits",
    [{"max_in_flight": 0}, {"max_in_flight": -5}, {"retry_after": 0}],
)
def test_limits_that_would_refuse_everything_are_refused(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThrottleLimits(**limits)


# --- the token bucket -------------------------------------------------------------------------


def test_a_bucket_starts_full_then_says_when_its_next_token_is_due() -> None:
    bucket = TokenBucket(Rate(2, 10), now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.0) == pytest.approx(5.0)
    assert bucket.take(4.0) == pytest.approx(1.0)  # refused takes take nothing
    assert bucket.take(5.0) == 0.0
    assert not bucket.full(5.0)
    assert bucket.full(15.0)


@given(
    count=st.integers(1, 50),
    seconds=st.floats(0.1, 100),
    gaps=st.lists(st.floats(0, 20), max_size=60),
)
def test_a_bucket_never_lets_more_through_than_its_rate_allows(
    count: int, seconds: float, gaps: list[float]
) -> None:
    rate = Rate(count, seconds)
    bucket = TokenBucket(rate, now=0.0)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        assert wait >= 0.0
        if wait == 0.0:
            taken += 1
        else:
            assert wait <= seconds / count + 1e-9  # at most one token's refill away
    assert taken <= count + now * rate.per_second + 1e-6


# --- registrations in flight ------------------------------------------------------------------


def test_registrations_beyond_the_cap_are_refused_until_one_settles() -> None:
    policy = throttle(ThrottleLimits(max_in_flight=2, retry_after=3))
    first, second = policy.admit_registration(), policy.admit_registration()
    assert policy.in_flight == 2
    refused = refusal(policy.admit_registration)
    assert (refused.limit, refused.retry_after) == (ThrottleLimit.IN_FLIGHT, 3)
    assert "throttled" in refused.message
    first.release()
    first.release()  # a second release changes nothing
    assert policy.in_flight == 1
    policy.admit_registration()
    assert policy.in_flight == 2
    second.release()
    assert policy.in_flight == 1


@pytest.mark.parametrize(("jitter", "told"), [(0.0, 3), (0.5, 5), (0.999, 6)])
def test_devices_refused_together_are_told_to_come_back_at_different_times(
    jitter: float, told: int
) -> None:
    policy = throttle(ThrottleLimits(max_in_flight=1, retry_after=3), jitter=jitter)
    policy.admit_registration()
    assert refusal(policy.admit_registration).retry_after == told


def test_without_limits_everything_is_let_in() -> None:
    policy = Throttle()
    slots = [policy.admit_registration() for _ in range(10_000)]
    for _ in range(100):
        policy.admit_poll("dev-1")
    assert policy.in_flight == len(slots)


# --- the registration rate --------------------------------------------------------------------


def test_the_registration_rate_refuses_until_its_next_token_and_takes_no_slot() -> None:
    clock = Clock()
    policy = throttle(ThrottleLimits(registration_rate=Rate(2, 60)), clock)
    policy.admit_registration().release()
    policy.admit_registration().release()
    refused = refusal(policy.admit_registration)
    assert (refused.limit, refused.retry_after) == (ThrottleLimit.REGISTRATION_RATE, 30)
    assert policy.in_flight == 0
    clock.now += 29.5
    assert refusal(policy.admit_registration).retry_after == 1  # never less than a second
    clock.now += 0.5
    policy.admit_registration()


def test_devices_refused_by_the_registration_rate_are_spread_too() -> None:
    limits = ThrottleLimits(registration_rate=Rate(1, 60), retry_after=3)
    policy = throttle(limits, jitter=0.999)
    policy.admit_registration()
    assert refusal(policy.admit_registration).retry_after == 60 + 3


def test_a_full_in_flight_cap_refuses_before_the_rate_spends_a_token() -> None:
    policy = throttle(ThrottleLimits(max_in_flight=1, registration_rate=Rate(2, 60)))
    slot = policy.admit_registration()
    assert refusal(policy.admit_registration).limit is ThrottleLimit.IN_FLIGHT
    slot.release()
    policy.admit_registration()  # the refusal above took no token


# --- the device poll rate ---------------------------------------------------------------------


def test_each_device_has_its_own_poll_allowance_whatever_the_case_of_its_id() -> None:
    clock = Clock()
    policy = throttle(ThrottleLimits(device_poll_rate=Rate(5, 10)), clock, jitter=0.9)
    for _ in range(5):
        policy.admit_poll("Dev-1")
    refused = refusal(lambda: policy.admit_poll("dev-1"))
    assert (refused.limit, refused.retry_after) == (ThrottleLimit.DEVICE_POLL_RATE, 2)  # no jitter
    policy.admit_poll("dev-2")
    clock.now += 2
    policy.admit_poll("dev-1")


def test_devices_whose_allowance_refilled_are_forgotten() -> None:
    clock = Clock()
    policy = throttle(ThrottleLimits(device_poll_rate=Rate(1, 10)), clock)
    for index in range(3000):
        policy.admit_poll(f"dev-{index}")
    clock.now += 10  # every allowance is full again: the next new device prunes them
    for index in range(3000, 5000):
        policy.admit_poll(f"dev-{index}")
    assert len(policy._devices) <= 3000
    refusal(lambda: policy.admit_poll("dev-4999"))  # the ones polling now are kept
