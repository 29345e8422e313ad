"""When a device request is answered 429 instead of served: dpsd sheds load early, as the
real service throttles, rather than letting requests queue until devices time out.

Three limits, each of one dpsd process, each optional:

- **registrations in flight**: register requests being served, from their arrival until
  their operation has settled (attestation, the store, a webhook, a hub). Little's law
  makes it a bound on latency: at R registrations a second, N in flight wait about N / R
  seconds, so a server falling behind refuses the surplus at once, cheaply, instead of
  answering everyone late. On by default, above any test's or ordinary fleet's needs.
- **registration rate**: register requests per instance, a token bucket of COUNT per
  SECONDS (the real service allows 1000 device registrations a minute: ``1000/60``).
- **device poll rate**: polls and registration status lookups per registration id, a token
  bucket (the real service allows a device 5 polls in 10 seconds: ``5/10``). Checked once
  the device has proved who it is, so that nobody can spend another device's allowance.

A refusal says when to come back (``retry_after``, whole seconds): a bucket says when its
next token is due; the in-flight cap cannot know, and answers the configured wait. Every
device told to wait by the instance's limits gets up to the configured wait more, at random,
so that a fleet refused together does not return together.

The policy is pure: the clock (monotonic seconds) and the jitter (``[0, 1)``) are given.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from dpsd.service.errors import Throttled, ThrottleLimit

MAX_RATE_SECONDS = 86_400.0
_RATE = re.compile(r"\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)\s*s?\s*")
_PRUNE_AT_LEAST = 1024


@dataclass(frozen=True, slots=True)
class Rate:
    """``count`` requests per ``seconds``: a bucket of ``count`` tokens, refilled evenly."""

    count: int
    seconds: float

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a rate allows at least 1 request, not {self.count}")
        if not 0 < self.seconds <= MAX_RATE_SECONDS:
            raise ValueError(
                f"a rate's period is more than 0 and at most {MAX_RATE_SECONDS:g} seconds, "
                f"not {self.seconds:g}"
            )

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``COUNT/SECONDS``, such as ``1000/60`` or ``5/10s``."""
        match = _RATE.fullmatch(text)
        if match is None:
            raise ValueError(f"{text!r} is not a rate: write COUNT/SECONDS, such as 1000/60")
        return cls(int(match[1]), float(match[2]))

    @property
    def per_second(self) -> float:
        return self.count / self.seconds

    def __str__(self) -> str:
        return f"{self.count}/{self.seconds:g}"


@dataclass(frozen=True, slots=True)
class ThrottleLimits:
    """None: no such limit. ``retry_after``: the seconds a device refused by the in-flight
    cap is told to wait (before jitter)."""

    max_in_flight: int | None = None
    registration_rate: Rate | None = None
    device_poll_rate: Rate | None = None
    retry_after: int = 3

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(
                f"registrations in flight must be at least 1, not {self.max_in_flight}"
            )
        if self.retry_after < 1:
            raise ValueError(f"retry-after must be at least 1 second, not {self.retry_after}")


class TokenBucket:
    """``rate.count`` tokens, refilled at ``rate.per_second``; starts full."""

    __slots__ = ("_per_second", "_size", "_tokens", "_updated")

    def __init__(self, rate: Rate, now: float) -> None:
        self._size = float(rate.count)
        self._per_second = rate.per_second
        self._tokens = self._size
        self._updated = now

    def take(self, now: float) -> float:
        """Take a token: 0.0 when there was one, else the seconds until one is due (and
        nothing is taken)."""
        self._refill(now)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self._per_second

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self._size

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._updated)
        self._tokens = min(self._size, self._tokens + elapsed * self._per_second)
        self._updated = now


class RegistrationSlot:
    """A registration let in under the in-flight cap; ``release`` once its operation has
    settled (releasing again does nothing)."""

    __slots__ = ("_throttle",)

    def __init__(self, throttle: Throttle | None) -> None:
        self._throttle = throttle

    def release(self) -> None:
        throttle, self._throttle = self._throttle, None
        if throttle is not None:
            throttle._in_flight -= 1


class Throttle:
    """Decides, request by request, whether a device is served or told to retry later."""

    def __init__(
        self,
        limits: ThrottleLimits | None = None,
        clock: Callable[[], float] = time.monotonic,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self.limits = limits or ThrottleLimits()
        self._clock = clock
        self._jitter = jitter
        self._in_flight = 0
        rate = self.limits.registration_rate
        self._registrations = TokenBucket(rate, clock()) if rate is not None else None
        self._devices: dict[str, TokenBucket] = {}
        self._prune_at = _PRUNE_AT_LEAST

    @property
    def in_flight(self) -> int:
        """Registrations let in whose operation has not settled yet."""
        return self._in_flight

    def admit_registration(self) -> RegistrationSlot:
        """Let a register request in, or raise Throttled (taking nothing)."""
        cap = self.limits.max_in_flight
        if cap is not None and self._in_flight >= cap:
            raise Throttled(ThrottleLimit.IN_FLIGHT, self._spread(self.limits.retry_after))
        if self._registrations is not None:
            wait = self._registrations.take(self._clock())
            if wait:
                raise Throttled(ThrottleLimit.REGISTRATION_RATE, self._spread(_seconds(wait)))
        self._in_flight += 1
        return RegistrationSlot(self)

    def admit_poll(self, registration_id: str) -> None:
        """Let a device's poll or status lookup in, or raise Throttled."""
        rate = self.limits.device_poll_rate
        if rate is None:
            return
        now = self._clock()
        key = registration_id.lower()
        bucket = self._devices.get(key)
        if bucket is None:
            self._prune(now)
            bucket = self._devices[key] = TokenBucket(rate, now)
        wait = bucket.take(now)
        if wait:
            raise Throttled(ThrottleLimit.DEVICE_POLL_RATE, _seconds(wait))

    def _spread(self, seconds: int) -> int:
        """``seconds`` and up to the configured retry-after more, at random."""
        return seconds + math.floor(self._jitter() * (self.limits.retry_after + 1))

    def _prune(self, now: float) -> None:
        """Forget the devices whose bucket has refilled (they are as new), once the map has
        doubled since the last time: memory follows the devices polling now."""
        if len(self._devices) < self._prune_at:
            return
        self._devices = {
            key: bucket for key, bucket in self._devices.items() if not bucket.full(now)
        }
        self._prune_at = max(_PRUNE_AT_LEAST, 2 * len(self._devices))


def _seconds(wait: float) -> int:
    """A wait as the whole seconds a device is told (at least 1)."""
    return max(1, math.ceil(wait))
