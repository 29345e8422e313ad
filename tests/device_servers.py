"""Device listeners served on dpsd's own TLS at 127.0.0.1, each on a free port, as
``dpsd serve`` serves them (without the load shedding in front)."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from dpsd.devices.listener import DeviceListener
from dpsd.tls_transport import serve_tls


@asynccontextmanager
async def serving(
    listeners: Sequence[DeviceListener], context: ssl.SSLContext
) -> AsyncIterator[list[int]]:
    """The listeners' ports, in their order; at the end, their servers and every device
    connection they hold are closed."""
    servers = [
        await serve_tls(
            listener.connection_protocol, context, handshake_timeout=10.0, host="127.0.0.1", port=0
        )
        for listener in listeners
    ]
    try:
        yield [server.sockets[0].getsockname()[1] for server in servers]
    finally:
        for server in servers:
            server.close()
        for listener in listeners:
            listener.close_all()
