"""What happens to device registrations, as the use cases report it: a port, its events, and
a null reporter.

The outcome of a registration (assigned, failed, disabled) is known only inside the use
case, and often after the device's request has been answered (the assignment runs in the
background while the device polls), so no edge could report it; the use case reports to
this port instead, and the composition root plugs in what turns events into log lines and
metrics (``dpsd.telemetry.registrations``). The use cases stay free of logging and metrics.
Which protocol a device came by is the edge's to say: it passes it to the use case.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from dpsd.domain.registration import DeviceRegistrationState, RegistrationOperation


class DeviceProtocol(enum.StrEnum):
    HTTPS = "https"
    MQTT = "mqtt"
    AMQP = "amqp"


@dataclass(frozen=True, slots=True)
class DeviceRefused:
    """A device's credential proved no enrollment (at register over HTTPS, when its
    connection opened over MQTT and AMQP). ``attestation``: what it presented
    (``symmetricKey``, ``x509`` or ``none``)."""

    protocol: DeviceProtocol
    registration_id: str
    attestation: str
    reason: str


@dataclass(frozen=True, slots=True)
class RegistrationStarted:
    """A device was attested and its operation started (``assigning``), and the register
    request is answered before the operation ends (custom allocation, a slow hub): its
    outcome is reported later. An operation that ends within the register request reports
    its outcome only."""

    protocol: DeviceProtocol
    operation: RegistrationOperation
    allocation_policy: str | None


@dataclass(frozen=True, slots=True)
class RegistrationFinished:
    """The operation ended: ``state`` is its outcome (assigned, failed, disabled), or None
    when dpsd itself failed to finish it (a store error). ``seconds``: since it started."""

    protocol: DeviceProtocol
    operation: RegistrationOperation
    state: DeviceRegistrationState | None
    allocation_policy: str | None
    seconds: float


@dataclass(frozen=True, slots=True)
class DeviceThrottled:
    """A device request was refused by a load limit (``limit``, a ThrottleLimit value) and
    the device told to retry after ``retry_after`` seconds. ``request``: ``register``,
    ``poll`` or ``status``."""

    protocol: DeviceProtocol
    registration_id: str
    request: str
    limit: str
    retry_after: int


class RegistrationEvents(Protocol):
    def refused(self, event: DeviceRefused) -> None: ...

    def throttled(self, event: DeviceThrottled) -> None: ...

    def started(self, event: RegistrationStarted) -> None: ...

    def finished(self, event: RegistrationFinished) -> None: ...


class NoRegistrationEvents:
    """Reports nowhere (tests, tools)."""

    def refused(self, event: DeviceRefused) -> None:
        pass

    def throttled(self, event: DeviceThrottled) -> None:
        pass

    def started(self, event: RegistrationStarted) -> None:
        pass

    def finished(self, event: RegistrationFinished) -> None:
        pass
