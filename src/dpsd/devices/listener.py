"""The I/O shell every device protocol runs in: TLS connections (``asyncio.start_server``)
and WebSocket sessions on the HTTPS port (ASGI) carry bytes to and from one sans-I/O
``DeviceConnection`` per device, under limits and deadlines no protocol can talk its way
past.

- Admission: at most so many open device connections in all and per client address,
  counted together for every protocol, so a flood on one port also fills its quota on the
  others.
- The handshake deadline: a connection must finish its protocol's handshake (MQTT CONNECT,
  AMQP SASL and open) within ``handshake_timeout`` of its start, however it trickles bytes.
- After the handshake, each protocol says how long silence may last and what passing time
  means (MQTT closes after 1.5 keep-alives; AMQP sends heartbeats and closes idle peers).
- A write that the device does not read within ``write_timeout`` ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.client_tls import verified_chain

logger = logging.getLogger("dpsd.devices")
READ_SIZE = 64 * 1024
WS_UNSUPPORTED_SUBPROTOCOL = 1002
WS_TRY_AGAIN_LATER = 1013

Read = Callable[[], Awaitable[bytes]]
Write = Callable[[bytes], Awaitable[None]]


class DeviceConnection(Protocol):
    """One device's protocol state and handlers, as the shell drives them."""

    @property
    def established(self) -> bool:
        """The handshake is done: the handshake deadline no longer applies."""
        ...

    @property
    def finished(self) -> bool:
        """Nothing more will be read or written: the shell closes the connection."""
        ...

    def wait_time(self) -> float | None:
        """Once established: how long to wait for bytes before ``time_passed`` (None: ever)."""
        ...

    async def receive(self, data: bytes) -> bytes:
        """Take bytes read; answer the bytes to write."""
        ...

    def time_passed(self) -> bytes:
        """The wait ran out: the bytes to write (a heartbeat, a close), if any."""
        ...


NewConnection = Callable[[tuple[str, ...]], DeviceConnection]
"""A connection for a device, given the client certificate chain TLS verified (PEM)."""


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_connections: int = 10_000
    max_connections_per_address: int = 1_000


class Admission:
    """Counts the open device connections, in all and by client address."""

    def __init__(self, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or ConnectionLimits()
        self._open: Counter[str] = Counter()
        self._total = 0

    def admit(self, address: str) -> bool:
        if self._total >= self.limits.max_connections:
            return False
        if self._open[address] >= self.limits.max_connections_per_address:
            return False
        self._open[address] += 1
        self._total += 1
        return True

    def release(self, address: str) -> None:
        self._total -= 1
        self._open[address] -= 1
        if not self._open[address]:
            del self._open[address]


class DeviceListener:
    """Serves one device protocol over TLS connections and WebSocket sessions.

    ``subprotocol``: the WebSocket subprotocol of the protocol (lower case; the upgrade is
    answered with the client's own spelling)."""

    def __init__(
        self,
        new_connection: NewConnection,
        admission: Admission,
        subprotocol: str,
        *,
        handshake_timeout: float = 10.0,
        write_timeout: float = 30.0,
    ) -> None:
        self._new_connection = new_connection
        self._admission = admission
        self.subprotocol = subprotocol
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._writers: set[asyncio.StreamWriter] = set()

    def close_all(self) -> None:
        """At shutdown: close every TLS device connection."""
        for writer in list(self._writers):
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A device connection over TLS (``asyncio.start_server``)."""
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._admission.admit(address):
            writer.close()
            return
        self._writers.add(writer)

        async def write(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        try:
            chain = verified_chain(writer.get_extra_info("ssl_object"))
            await self._pump(self._new_connection(chain), lambda: reader.read(READ_SIZE), write)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
            pass  # the device went away or timed out: nothing to answer
        finally:
            self._writers.discard(writer)
            self._admission.release(address)
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A device connection over WebSockets (ASGI), on any path; binary messages are one
        byte stream (a frame of the protocol may span messages)."""
        address = str((scope.get("client") or ("?",))[0])
        if (await receive())["type"] != "websocket.connect":
            return
        offered = [
            name for name in scope.get("subprotocols", []) if name.lower() == self.subprotocol
        ]
        if not offered:
            await send({"type": "websocket.close", "code": WS_UNSUPPORTED_SUBPROTOCOL})
            return
        if not self._admission.admit(address):
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER})
            return
        await send({"type": "websocket.accept", "subprotocol": offered[0]})

        async def read() -> bytes:
            message = await receive()
            if message["type"] != "websocket.receive":
                return b""
            return message.get("bytes") or (message.get("text") or "").encode()

        async def write(data: bytes) -> None:
            await send({"type": "websocket.send", "bytes": data})

        tls = scope.get("extensions", {}).get("tls") or {}
        try:
            chain = tuple(tls.get("client_cert_chain") or ())
            await self._pump(self._new_connection(chain), read, write)
            await send({"type": "websocket.close", "code": 1000})
        except (OSError, TimeoutError, RuntimeError):
            pass  # the device went away, timed out, or the socket closed under us
        finally:
            self._admission.release(address)

    async def _pump(self, connection: DeviceConnection, read: Read, write: Write) -> None:
        loop = asyncio.get_running_loop()
        handshake_ends = loop.time() + self._handshake_timeout
        while not connection.finished:
            if connection.established:
                timeout = connection.wait_time()
            else:
                timeout = max(0.0, handshake_ends - loop.time())
            try:
                data = await asyncio.wait_for(read(), timeout)
            except TimeoutError:
                if not connection.established:
                    logger.debug("a device did not finish its handshake in time")
                    return
                outgoing = connection.time_passed()
            else:
                if not data:
                    return
                outgoing = await connection.receive(data)
            if outgoing:
                await asyncio.wait_for(write(outgoing), self._write_timeout)


class WebSocketDispatch:
    """WebSocket upgrades to the device protocol whose subprotocol the client offers
    (``mqtt`` or ``AMQPWSB10``, any case); no known subprotocol: refused."""

    def __init__(self, protocols: Mapping[str, ASGIApp]) -> None:
        self._protocols = {name.lower(): app for name, app in protocols.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        for name in scope.get("subprotocols", []):
            app = self._protocols.get(name.lower())
            if app is not None:
                await app(scope, receive, send)
                return
        if (await receive())["type"] == "websocket.connect":
            await send({"type": "websocket.close", "code": WS_UNSUPPORTED_SUBPROTOCOL})
