"""The I/O shell every device protocol runs in: TLS connections (asyncio streams on dpsd's
own TLS, ``dpsd.tls_transport.start_tls_server``) and WebSocket sessions on the HTTPS port
(ASGI) carry bytes to and from one sans-I/O ``DeviceConnection`` per device, under limits
and deadlines no protocol can talk its way past.

- Admission: at most so many open device connections in all and per client address,
  counted together for every protocol, so a flood on one port also fills its quota on the
  others.
- The handshake deadline: a connection must finish its protocol's handshake (MQTT CONNECT,
  AMQP SASL and open) within ``handshake_timeout`` of its start, however it trickles bytes.
- After the handshake, each protocol says how long silence may last and what passing time
  means (MQTT closes after 1.5 keep-alives; AMQP sends heartbeats and closes idle peers).
- A write that the device does not read within ``write_timeout`` ends the connection.

Every connection refused here (too many open, no subprotocol dpsd serves) and every
connection's end is logged on ``dpsd.devices``: the device it proved to be, why it ended,
how long it lasted. The open connections are counted by protocol when there are metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.client_tls import verified_chain

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

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

    @property
    def registration_id(self) -> str | None:
        """The device, once it proved who it is."""
        ...

    @property
    def close_reason(self) -> str | None:
        """Why the protocol ended the connection, once it has."""
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
    answered with the client's own spelling); ``protocol``: its name in logs and metrics
    (the subprotocol by default)."""

    def __init__(
        self,
        new_connection: NewConnection,
        admission: Admission,
        subprotocol: str,
        *,
        handshake_timeout: float = 10.0,
        write_timeout: float = 30.0,
        protocol: str | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._new_connection = new_connection
        self._admission = admission
        self.subprotocol = subprotocol
        self.protocol = protocol or subprotocol
        self._metrics = metrics
        self._handshake_timeout = handshake_timeout
        self._write_timeout = write_timeout
        self._writers: set[asyncio.StreamWriter] = set()

    def close_all(self) -> None:
        """At shutdown: close every TLS device connection."""
        for writer in list(self._writers):
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A device connection over TLS (``start_tls_server``)."""
        address = str((writer.get_extra_info("peername") or ("?",))[0])
        if not self._admit(address, "tls"):
            writer.close()
            return
        self._writers.add(writer)
        opened = _Opened(address, "tls", asyncio.get_running_loop().time())

        async def write(data: bytes) -> None:
            writer.write(data)
            if _backed_up(writer.transport):  # only then would drain wait: bound the wait
                async with asyncio.timeout(self._write_timeout):
                    await writer.drain()

        try:
            opened.connection = self._new_connection(
                verified_chain(writer.get_extra_info("ssl_object"))
            )
            opened.ended = await self._pump(
                opened.connection, lambda: reader.read(READ_SIZE), write
            )
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError) as error:
            opened.ended = self._broken(error)  # the device went away: nothing to answer
        finally:
            self._writers.discard(writer)
            self._release(opened)
            if writer.transport.get_write_buffer_size():
                # A device that reads nothing: closing would wait for ever to flush to it.
                writer.transport.abort()
            else:
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
            _log_unsupported_upgrade(scope)
            await send({"type": "websocket.close", "code": WS_UNSUPPORTED_SUBPROTOCOL})
            return
        if not self._admit(address, "websocket"):
            await send({"type": "websocket.close", "code": WS_TRY_AGAIN_LATER})
            return
        await send({"type": "websocket.accept", "subprotocol": offered[0]})
        opened = _Opened(address, "websocket", asyncio.get_running_loop().time())

        async def read() -> bytes:
            message = await receive()
            if message["type"] != "websocket.receive":
                return b""
            return message.get("bytes") or (message.get("text") or "").encode()

        async def write(data: bytes) -> None:
            async with asyncio.timeout(self._write_timeout):
                await send({"type": "websocket.send", "bytes": data})

        tls = scope.get("extensions", {}).get("tls") or {}
        try:
            opened.connection = self._new_connection(tuple(tls.get("client_cert_chain") or ()))
            opened.ended = await self._pump(opened.connection, read, write)
            await send({"type": "websocket.close", "code": 1000})
        except (OSError, TimeoutError, RuntimeError) as error:
            # the device went away, timed out, or the socket closed under us
            opened.ended = opened.ended or self._broken(error)
        finally:
            self._release(opened)

    def _admit(self, address: str, transport: str) -> bool:
        if self._admission.admit(address):
            if self._metrics is not None:
                self._metrics.connection_opened(self.protocol)
            return True
        logger.warning(
            "%(protocol)s connection refused: too many device connections are open",
            {
                "event": "connect_refused",
                "protocol": self.protocol,
                "client": address,
                "transport": transport,
            },
        )
        return False

    def _release(self, opened: _Opened) -> None:
        self._admission.release(opened.address)
        if self._metrics is not None:
            self._metrics.connection_closed(self.protocol)
        connection = opened.connection
        reason = (connection.close_reason if connection is not None else None) or opened.ended
        seconds = asyncio.get_running_loop().time() - opened.started
        logger.info(
            "%(protocol)s connection closed: %(reason)s",
            {
                "event": "disconnected",
                "protocol": self.protocol,
                "registration_id": connection.registration_id if connection else None,
                "client": opened.address,
                "transport": opened.transport,
                "duration_ms": round(seconds * 1000, 1),
                "reason": reason or "the connection ended",
            },
        )

    def _broken(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError):
            return f"the device read nothing dpsd wrote for {self._write_timeout:g} s"
        return f"the connection broke ({type(error).__name__})"

    async def _pump(self, connection: DeviceConnection, read: Read, write: Write) -> str | None:
        """Move bytes until the connection ends; why it ended, unless the protocol says."""
        loop = asyncio.get_running_loop()
        handshake_ends = loop.time() + self._handshake_timeout
        while not connection.finished:
            if connection.established:
                timeout = connection.wait_time()
            else:
                timeout = max(0.0, handshake_ends - loop.time())
            try:
                async with asyncio.timeout(timeout):  # a timer, no task of its own
                    data = await read()
            except TimeoutError:
                if not connection.established:
                    return f"no handshake within {self._handshake_timeout:g} s"
                outgoing = connection.time_passed()
            else:
                if not data:
                    return "the device closed the connection"
                outgoing = await connection.receive(data)
            if outgoing:
                await write(outgoing)  # bounded by write_timeout while it waits for the device
        return None


def _backed_up(transport: asyncio.WriteTransport) -> bool:
    """More is waiting to be sent than the transport's high-water mark: the device is not
    reading (a write below it is handed to the socket at once, with no timer to arm)."""
    return transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]


@dataclass(slots=True)
class _Opened:
    """A device connection being served: where from, over what, since when; its protocol
    state once made, and why it ended, as the shell saw it."""

    address: str
    transport: str
    started: float
    connection: DeviceConnection | None = None
    ended: str | None = None


def _log_unsupported_upgrade(scope: Scope) -> None:
    logger.info(
        "WebSocket upgrade refused: no subprotocol dpsd serves",
        {
            "event": "connect_refused",
            "client": str((scope.get("client") or ("?",))[0]),
            "subprotocols": ",".join(scope.get("subprotocols", [])) or None,
        },
    )


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
            _log_unsupported_upgrade(scope)
            await send({"type": "websocket.close", "code": WS_UNSUPPORTED_SUBPROTOCOL})
