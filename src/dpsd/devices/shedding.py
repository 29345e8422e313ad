"""Connections refused before TLS while dpsd is behind: a reconnect storm answered at once.

A device connection costs most before the device says anything: the TLS handshake. When
more devices connect than one process can serve, their handshakes and first requests queue
on the event loop; once a device waits longer than its own timeout (30 s in the SDKs) it
gives up and connects again, and the work done for it is lost. Past that point a server
serves fewer devices the more arrive. So while the loop runs late by more than a bound,
new device connections are closed as soon as they are accepted (a few microseconds, no
TLS): the device learns at once to come back later, and the devices already connected are
served in time. Registration requests have their own limits (429, dpsd.service.throttling).

``LoopDelay`` measures how late the loop runs a short timer; ``shedding`` wraps a listener's
protocol factory with the decision. One warning is logged when shedding starts and one when
it ends, with how many connections were refused; each is counted when there are metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

logger = logging.getLogger("dpsd.devices")
PROBE_SECONDS = 0.1
ProtocolFactory = Callable[[], asyncio.BaseProtocol]


class LoopDelay:
    """How late the event loop ran the last of its probes (a timer every PROBE_SECONDS):
    how far behind the process is, while ``watch`` runs."""

    def __init__(self, every: float = PROBE_SECONDS) -> None:
        self.seconds = 0.0
        self._every = every

    async def watch(self) -> None:
        """Probe until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            planned = loop.time() + self._every
            await asyncio.sleep(self._every)
            self.seconds = max(0.0, loop.time() - planned)


class _Refused(asyncio.Protocol):
    """A connection closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


class Shedding:
    """Refuses connections while the loop is more than ``max_delay`` seconds late (None:
    never); the state changes are logged, the refusals counted."""

    def __init__(
        self,
        delay: LoopDelay,
        max_delay: float | None,
        protocol: str,
        metrics: Metrics | None = None,
    ) -> None:
        self._delay = delay
        self._max_delay = max_delay
        self._protocol = protocol
        self._metrics = metrics
        self._refused = 0

    @property
    def refusing(self) -> bool:
        return self._max_delay is not None and self._delay.seconds > self._max_delay

    def wrap(self, factory: ProtocolFactory) -> ProtocolFactory:
        """``factory``, unless the connection is to be refused."""

        def make() -> asyncio.BaseProtocol:
            if not self.refusing:
                self._ended()
                return factory()
            self._refuse()
            return _Refused()

        return make

    def _refuse(self) -> None:
        if not self._refused:
            logger.warning(
                "%(protocol)s: refusing new device connections: dpsd runs %(delay_s)s s late",
                {
                    "event": "shedding_started",
                    "protocol": self._protocol,
                    "delay_s": round(self._delay.seconds, 2),
                },
            )
        self._refused += 1
        if self._metrics is not None:
            self._metrics.connection_shed(self._protocol)

    def _ended(self) -> None:
        if self._refused:
            logger.warning(
                "%(protocol)s: accepting device connections again after refusing %(refused)s",
                {"event": "shedding_ended", "protocol": self._protocol, "refused": self._refused},
            )
            self._refused = 0
