"""The AMQP listener: TLS connections (5671) and WebSocket sessions (``AMQPWSB10`` on the
HTTPS port) in, bytes to the sans-I/O connection, answers out.

The shell (admission, the handshake deadline, TLS and WebSocket I/O) is ``dpsd.devices``,
shared with MQTT; the protocol lives in ``dpsd.amqp.connection``
and the meaning of links and messages in ``dpsd.amqp.handlers``. This module only adds
AMQP's sense of time: the engine's ticks, which send heartbeats and close idle peers.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from dpsd.amqp.connection import AmqpConnection, AmqpLimits, Closed, State
from dpsd.amqp.handlers import AmqpDeviceSession
from dpsd.devices.answers import DeviceRequests
from dpsd.devices.listener import Admission, DeviceListener
from dpsd.service.device_events import DeviceProtocol
from dpsd.service.device_registration import DeviceRegistrationService

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

SUBPROTOCOL = "amqpwsb10"


@dataclass(slots=True)
class AmqpServer:
    """``admission``: shared with the other device listeners (by default, this one's own);
    ``handshake_timeout``: seconds to finish SASL and OPEN; ``metrics``: where open
    connections are counted."""

    service: DeviceRegistrationService
    retry_after: int
    now: Callable[[], datetime]
    admission: Admission = field(default_factory=Admission)
    limits: AmqpLimits = field(default_factory=AmqpLimits)
    handshake_timeout: float = 10.0
    clock: Callable[[], float] = time.monotonic
    metrics: Metrics | None = None
    listener: DeviceListener = field(init=False)
    _requests: DeviceRequests = field(init=False)

    def __post_init__(self) -> None:
        self._requests = DeviceRequests(
            self.service, self.retry_after, self.now, protocol=DeviceProtocol.AMQP
        )
        self.listener = DeviceListener(
            self._connection,
            self.admission,
            SUBPROTOCOL,
            handshake_timeout=self.handshake_timeout,
            protocol=DeviceProtocol.AMQP.value,
            metrics=self.metrics,
        )

    def close_all(self) -> None:
        """At shutdown: close every device connection."""
        self.listener.close_all()

    def _connection(self, client_chain: tuple[str, ...]) -> AmqpDevice:
        connection = AmqpConnection(self.limits)
        session = AmqpDeviceSession(connection, self._requests, self.retry_after, client_chain)
        return AmqpDevice(connection, session, self.clock)


class AmqpDevice:
    """One device's AMQP connection and session, as the listener drives them."""

    __slots__ = ("_clock", "_connection", "_next_tick", "_session", "close_reason")

    def __init__(
        self, connection: AmqpConnection, session: AmqpDeviceSession, clock: Callable[[], float]
    ) -> None:
        self._connection = connection
        self._session = session
        self._clock = clock
        self._next_tick: float | None = None
        self.close_reason: str | None = None

    @property
    def registration_id(self) -> str | None:
        device = self._session.device
        return device.registration_id if device is not None else None

    @property
    def established(self) -> bool:
        return self._connection.state is State.OPEN

    @property
    def finished(self) -> bool:
        return self._connection.closed

    def wait_time(self) -> float | None:
        if self._next_tick is None:
            return None
        return max(0.0, self._next_tick - self._clock())

    def time_passed(self) -> bytes:
        self._next_tick = self._connection.tick(self._clock())
        return self._connection.data_to_send()

    async def receive(self, data: bytes) -> bytes:
        events = deque(self._connection.receive_data(data))
        while events:
            event = events.popleft()
            if isinstance(event, Closed):
                self.close_reason = event.reason
            elif self._connection.closed:
                continue  # decisions no longer matter
            events.extend(await self._session.handle(event))
        self._next_tick = self._connection.tick(self._clock())
        return self._connection.data_to_send()
