"""One worker of ``dpsd serve --workers N``: the whole of dpsd (dpsd.app's runtime) serving
the listening sockets its supervisor bound, beside N - 1 others.

What a worker keeps in memory that the others need is the certificates its device
handshakes trust: a certificate an enrollment written through this worker adds is sent to
the others through the supervisor before the write is answered, and each takes it as soon
as its event loop reads it. The rest lives in the
store (registration operations, so any worker answers any poll; built-in hubs and their
devices; linked hubs, read at each assignment) or in the data dir (the built-in hubs'
certificates, which every worker reads when a client first asks for a hub's name and again
when the files change; worker 1 alone issues those of hubs linked while dpsd runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import Callable
from pathlib import Path

from dpsd.app import Siblings, build_runtime
from dpsd.server import Listeners, serve_on
from dpsd.settings import Settings
from dpsd.workers.channel import READY, TRUST, ChannelError, Lines, message

READ_SIZE = 256 * 1024
SEND_TIMEOUT_SECONDS = 2.0
METRICS_REFRESH_SECONDS = 1.0
logger = logging.getLogger("dpsd.workers")


class SupervisorLink:
    """The worker's end of its channel to the supervisor."""

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._channel.settimeout(SEND_TIMEOUT_SECONDS)
        self._lines = Lines()

    def ready(self) -> None:
        self._send(message(READY))

    def announce_trust(self, certificates: list[str]) -> None:
        self._send(message(TRUST, certificates=certificates))

    def listen(self, trust: Callable[[list[str]], None]) -> None:
        """Hand the certificates other workers came to trust to ``trust``."""
        loop = asyncio.get_running_loop()
        loop.add_reader(self._channel.fileno(), self._readable, loop, trust)

    def _readable(
        self, loop: asyncio.AbstractEventLoop, trust: Callable[[list[str]], None]
    ) -> None:
        try:
            data = self._channel.recv(READ_SIZE)
            received = self._lines.feed(data) if data else []
        except (OSError, ChannelError) as error:
            logger.error("the channel to the supervisor failed: %(error)s", {"error": str(error)})
            data = b""
            received = []
        if not data:  # the supervisor is gone: SIGTERM is on its way
            loop.remove_reader(self._channel.fileno())
        for _, content in received:
            certificates = content.get("certificates")
            if content["kind"] == TRUST and isinstance(certificates, list):
                trust([pem for pem in certificates if isinstance(pem, str)])

    def _send(self, data: bytes) -> None:
        try:
            self._channel.sendall(data)
        except OSError as error:
            logger.warning(
                "cannot tell the supervisor (%(kind)s): %(error)s",
                {"kind": json.loads(data)["kind"], "error": str(error)},
            )


async def serve_as_worker(
    settings: Settings,
    listeners: Listeners,
    number: int,
    channel: socket.socket,
    metrics: Path | None,
) -> None:
    """Serve until SIGTERM or SIGINT, as worker ``number``."""
    link = SupervisorLink(channel)
    siblings = Siblings(metrics=metrics, announce_trust=link.announce_trust)
    async with build_runtime(settings, siblings) as runtime:
        link.listen(runtime.client_trust.trust)
        refresher = asyncio.create_task(_refresh_metrics(runtime.metrics.refresh))
        try:
            await serve_on(
                runtime,
                listeners,
                lambda _endpoints: link.ready(),
                worker=True,
                issue_hub_certificates=number == 1,
            )
        finally:
            refresher.cancel()


async def _refresh_metrics(refresh: Callable[[], None]) -> None:
    """Gauges read from functions are written for the other workers' scrapes."""
    while True:
        await asyncio.sleep(METRICS_REFRESH_SECONDS)
        refresh()
