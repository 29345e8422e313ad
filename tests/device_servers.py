"""Device listeners served on dpsd's own TLS at 127.0.0.1, each on a free port, as
``dpsd serve`` serves them (without the load shedding in front)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from dpsd.devices.listener import DeviceListener
from dpsd.devices.websocket import DeviceWebSockets
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


async def _no_http(scope: object, receive: object, send: object) -> None:
    raise AssertionError("device WebSockets never reach the ASGI app")


@dataclass
class WebSocketListener:
    port: int
    server: uvicorn.Server

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/$iothub/websocket"

    def connect(self, subprotocol: str = "AMQPWSB10", **options: Any) -> Any:
        """A WebSocket client offering ``subprotocol``, at the path the SDKs use."""
        return connect(self.url, subprotocols=[Subprotocol(subprotocol)], **options)


@asynccontextmanager
async def serving_websockets(
    websockets: DeviceWebSockets, **config: Any
) -> AsyncIterator[WebSocketListener]:
    """uvicorn on 127.0.0.1 at a free port, with ``websockets`` as the protocol of its
    upgrades, as ``dpsd serve``'s HTTPS listener has (without TLS); ``config``: more of
    uvicorn's settings."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    uvicorn_config = uvicorn.Config(
        _no_http,
        ws=websockets,  # type: ignore[arg-type]
        lifespan="off",
        log_level="warning",
        log_config=None,
        **config,
    )
    server = uvicorn.Server(uvicorn_config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        yield WebSocketListener(sock.getsockname()[1], server)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()
