"""The MQTT listener: TLS connections and WebSocket sessions in, bytes to the sans-I/O
connection, answers out.

The shell (admission, deadlines, TLS and WebSocket I/O) is ``dpsd.devices``, shared with
AMQP; the protocol lives in ``dpsd.mqtt.connection`` and the meaning of requests in
``dpsd.mqtt.handlers``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from dpsd.devices.answers import DeviceRequests
from dpsd.devices.listener import Admission, ConnectionLimits, DeviceListener
from dpsd.mqtt.connection import (
    Closed,
    ConnectRequested,
    Event,
    MqttConnection,
    RequestReceived,
    State,
)
from dpsd.mqtt.handlers import DeviceSession
from dpsd.service.device_events import DeviceProtocol
from dpsd.service.device_registration import DeviceRegistrationService

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics


@dataclass(frozen=True, slots=True)
class MqttLimits:
    connect_timeout: float = 10.0
    max_packet_size: int = 128 * 1024
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000


@dataclass(slots=True)
class MqttServer:
    """``admission``: shared with the other device listeners (by default, this one's own);
    ``metrics``: where open connections are counted."""

    service: DeviceRegistrationService
    retry_after: int
    now: Callable[[], datetime]
    limits: MqttLimits = field(default_factory=MqttLimits)
    admission: Admission | None = None
    metrics: Metrics | None = None
    listener: DeviceListener = field(init=False)
    _requests: DeviceRequests = field(init=False)

    def __post_init__(self) -> None:
        self._requests = DeviceRequests(
            self.service, self.retry_after, self.now, protocol=DeviceProtocol.MQTT
        )
        admission = self.admission or Admission(
            ConnectionLimits(self.limits.max_connections, self.limits.max_connections_per_address)
        )
        self.listener = DeviceListener(
            self._connection,
            admission,
            "mqtt",
            handshake_timeout=self.limits.connect_timeout,
            metrics=self.metrics,
        )

    def close_all(self) -> None:
        """At shutdown: close every device connection."""
        self.listener.close_all()

    def _connection(self, client_chain: tuple[str, ...]) -> MqttDevice:
        connection = MqttConnection(self.limits.max_packet_size)
        return MqttDevice(connection, DeviceSession(self._requests, client_chain))


class MqttDevice:
    """One device's MQTT connection and session, as the listener drives them."""

    __slots__ = ("_connection", "_session", "close_reason")

    def __init__(self, connection: MqttConnection, session: DeviceSession) -> None:
        self._connection = connection
        self._session = session
        self.close_reason: str | None = None

    @property
    def registration_id(self) -> str | None:
        device = self._session.device
        return device.registration_id if device is not None else None

    @property
    def established(self) -> bool:
        return self._connection.state is State.CONNECTED

    @property
    def finished(self) -> bool:
        return self._connection.closed

    def wait_time(self) -> float | None:
        """One and a half keep-alive periods."""
        keep_alive = self._connection.keep_alive
        return keep_alive * 1.5 if keep_alive else None

    def time_passed(self) -> bytes:
        closed = self._connection.close("the device was silent for 1.5 keep-alive periods")
        self.close_reason = closed.reason
        return b""

    def receive(self, data: bytes) -> bytes | Awaitable[bytes]:
        """The answer at once when no packet needs a use case to wait (SUBSCRIBE, PINGREQ,
        DISCONNECT, a poll of the operation the last register settled), else once the use
        cases answered, in order."""
        connection = self._connection
        events = connection.receive_data(data)
        for index, event in enumerate(events):
            if isinstance(event, Closed):
                self.close_reason = event.reason
                continue
            if isinstance(event, RequestReceived):
                answer = self._session.answer_at_once(event.request)
                if answer is not None:
                    rid = event.request.rid
                    connection.respond(rid, answer.status, answer.body, answer.retry_after)
                    continue
            return self._answered(deque(events[index:]))
        return connection.data_to_send()

    async def _answered(self, events: deque[Event]) -> bytes:
        connection = self._connection
        while events:
            match events.popleft():
                case ConnectRequested(connect=connect):
                    code = await self._session.connect(connect)
                    if code is None:
                        events.extend(connection.accept())  # what was sent after CONNECT
                    else:
                        self.close_reason = connection.refuse(code).reason
                case RequestReceived(request=request, payload=payload):
                    answer = await self._session.request(request, payload)
                    connection.respond(request.rid, answer.status, answer.body, answer.retry_after)
                case Closed(reason=reason):
                    self.close_reason = reason
        return connection.data_to_send()
