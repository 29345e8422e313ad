"""Servers on dpsd's TLS (``dpsd.tls_transport``) with asyncio streams per connection, as
``asyncio.start_server(ssl=...)`` gives them: for tests whose server side is easiest written
as a coroutine."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from dpsd.tls_transport import serve_tls

STREAM_LIMIT = 64 * 1024  # asyncio.start_server's default


async def start_tls_server(
    client_connected: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    context: ssl.SSLContext,
    *,
    handshake_timeout: float,
    limit: int = STREAM_LIMIT,
    **listen: Any,
) -> asyncio.Server:
    """``asyncio.start_server(client_connected, ssl=context, ...)`` on dpsd's TLS:
    ``client_connected`` gets the streams of each connection once its handshake is done;
    ``listen``: as ``serve_tls``'s."""
    loop = asyncio.get_running_loop()

    def streams() -> asyncio.StreamReaderProtocol:
        reader = asyncio.StreamReader(limit=limit, loop=loop)
        return asyncio.StreamReaderProtocol(reader, client_connected, loop=loop)

    return await serve_tls(streams, context, handshake_timeout=handshake_timeout, **listen)
