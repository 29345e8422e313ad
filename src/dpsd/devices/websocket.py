"""Device protocols over WebSockets on the HTTPS port, without ASGI: MQTT as ``mqtt`` (the
C SDK writes ``MQTT``) and AMQP as ``AMQPWSB10``, on any path (the Python, Node and C SDKs
use ``/$iothub/websocket``, C# the root).

uvicorn parses the upgrade request and hands the connection to the protocol its ``ws``
setting makes: this one. Its WebSocket protocols run an ASGI task per connection with a
queue, events and keep-alive pings, about 20 KB per connected device; a device connection
needs none of it. Here one ``asyncio.Protocol`` answers the upgrade, turns WebSocket
frames into the byte stream of the device protocol and back (``websockets``' sans-I/O
frame parser, made only while a frame is partly read: an idle device keeps none), and
hands that stream to the same shell as a TLS connection (``dpsd.devices.listener``):
admission, deadlines, write flow control and logs are the same on both. Liveness is the
device protocol's (MQTT keep-alive, AMQP heartbeats): the server sends no WebSocket pings
of its own, and answers the device's. No compression is offered: a compressing WebSocket
keeps zlib's state, hundreds of KB, for as long as it is open (a Node device offers it by
default), and device packets are small.

Upgrades are refused with an HTTP status before any frame: 403 when no subprotocol of the
offer is one dpsd serves, 503 when the device connections are at their limit (the count
is shared with MQTT and AMQP over TLS), and what ``websockets`` answers to a malformed
handshake (400, 426 and the like).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any, Protocol

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from websockets.exceptions import InvalidHandshake
from websockets.frames import Close, Frame, Opcode
from websockets.headers import parse_subprotocol
from websockets.http11 import Request, Response
from websockets.protocol import Protocol as Frames
from websockets.protocol import Side, State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from dpsd.devices.listener import DeviceListener
from dpsd.tls_transport import TlsTransport

logger = logging.getLogger("dpsd.devices")
_frames_logger = logging.getLogger("dpsd.devices.websocket")

MESSAGE_LIMIT = 256 * 1024
"""The largest WebSocket message taken (a device protocol's packets are smaller: 128 KB
for MQTT, 64 KB frames for AMQP); a larger one closes the connection (1009)."""

GOING_AWAY = 1001
_DATA = (Opcode.BINARY, Opcode.TEXT, Opcode.CONT)


class ServerState(Protocol):
    """What dpsd uses of uvicorn's per-server state: its open connections, which uvicorn
    shuts down when it stops."""

    @property
    def connections(self) -> set[Any]: ...


class UvicornConfig(Protocol):
    """What dpsd reads of uvicorn's configuration: whether, and whom, it trusts to name
    the client in ``X-Forwarded-For``."""

    @property
    def proxy_headers(self) -> bool: ...

    @property
    def forwarded_allow_ips(self) -> list[str] | str: ...


class DeviceWebSockets:
    """Makes the protocol of each WebSocket upgrade: given to uvicorn as its ``ws``
    setting, which calls it with its own keyword arguments.

    ``listeners``: one per device protocol, each chosen by its subprotocol. A device's
    address is the one uvicorn gives an HTTP request on the same listener: the peer's, or,
    from a proxy uvicorn trusts (``forwarded_allow_ips``: 127.0.0.1 and ::1 unless
    ``FORWARDED_ALLOW_IPS`` says otherwise), the client ``X-Forwarded-For`` names."""

    def __init__(self, listeners: Iterable[DeviceListener]) -> None:
        self._listeners = {listener.subprotocol.lower(): listener for listener in listeners}
        self._proxies: dict[int, ProxyHeadersMiddleware | None] = {}

    def __call__(
        self, *, config: UvicornConfig, server_state: ServerState, **_uvicorn: object
    ) -> DeviceWebSocket:
        key = id(config)
        if key not in self._proxies:
            self._proxies[key] = (
                ProxyHeadersMiddleware(_no_app, config.forwarded_allow_ips)
                if config.proxy_headers
                else None
            )
        return DeviceWebSocket(self, server_state.connections, self._proxies[key])

    def chosen(self, offered: Sequence[str]) -> tuple[Subprotocol, DeviceListener] | None:
        """The first subprotocol offered that dpsd serves, as the client spelt it, and its
        listener."""
        for name in offered:
            listener = self._listeners.get(name.lower())
            if listener is not None:
                return Subprotocol(name), listener
        return None

    def subprotocol(self, offered: Sequence[str]) -> Subprotocol | None:
        chosen = self.chosen(offered)
        return None if chosen is None else chosen[0]


def client_address(
    proxies: ProxyHeadersMiddleware | None, peer: tuple[str, int], request: Request
) -> str:
    """The device's address, as uvicorn's proxy-header middleware decides it for HTTP."""
    if proxies is None:
        return peer[0]
    scope: dict[str, Any] = {
        "type": "websocket",
        "client": peer,
        "headers": [
            (b"x-forwarded-for", value.encode("latin-1", errors="replace"))
            for value in request.headers.get_all("X-Forwarded-For")
        ],
    }
    # The middleware only rewrites the scope, then calls an app that awaits nothing: one
    # step of its coroutine runs it to the end, without an event loop.
    with contextlib.suppress(StopIteration):
        proxies(scope, _no_receive, _no_send).send(None)  # type: ignore[arg-type]
    return str(scope["client"][0])


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    return None


async def _no_receive() -> Any:
    raise AssertionError("not called")


async def _no_send(message: Any) -> None:
    raise AssertionError("not called")


class DeviceWebSocket(asyncio.Protocol, asyncio.Transport):
    """One WebSocket connection, both ways: the protocol of its connection (first the
    upgrade request, then frames), and the transport of the device listener's stream
    protocol above it (what that writes goes out as one binary message; closing it closes
    the WebSocket, 1000, and the connection). Flow control and extra information are the
    connection's, but for the peer's name, the device's address
    (``DeviceWebSockets.client_address``). One object for both: a device stays connected
    for hours, and every object it keeps is paid for by the whole fleet."""

    __slots__ = (
        "_address",
        "_connections",
        "_device",
        "_fragmented",
        "_frames",
        "_handshake",
        "_open",
        "_proxies",
        "_server",
        "_transport",
        "_unparsed",
    )

    def __init__(
        self,
        server: DeviceWebSockets,
        connections: set[Any],
        proxies: ProxyHeadersMiddleware | None,
    ) -> None:
        self._server = server
        self._connections = connections
        self._proxies = proxies
        self._transport: asyncio.Transport | None = None
        self._address = "?"
        self._handshake: ServerProtocol | None = ServerProtocol(
            select_subprotocol=lambda _, offered: server.subprotocol(offered),
            logger=_frames_logger,
        )
        self._open = False  # the upgrade was accepted, and no close was sent or received
        self._frames: Frames | None = None  # the parser, while a frame is partly read
        self._fragmented = False  # a message's first frames were read, not its last
        self._unparsed = 0  # bytes given to the parser and not yet seen in a whole frame
        self._device: asyncio.Protocol | None = None

    # --- from the transport ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._handshake is not None:
            self._handshake_received(self._handshake, data)
        elif self._open:
            frames = self._frames or _parser()
            self._unparsed += len(data)
            frames.receive_data(data)
            self._frames_received(frames)

    def eof_received(self) -> bool:
        if self._device is not None:
            self._device.eof_received()
        return False

    def pause_writing(self) -> None:
        if self._device is not None:
            self._device.pause_writing()

    def resume_writing(self) -> None:
        if self._device is not None:
            self._device.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._handshake = None
        if self._device is not None:
            self._device.connection_lost(exc)

    @property
    def reading_frame(self) -> bool:
        """A frame or a fragmented message is partly read (the parser is kept for it)."""
        return self._frames is not None

    def shutdown(self) -> None:
        """uvicorn stops: the device is told the server is going away."""
        self.close(GOING_AWAY)

    # --- the upgrade ----------------------------------------------------------------

    def _handshake_received(self, handshake: ServerProtocol, data: bytes) -> None:
        handshake.receive_data(data)
        for event in handshake.events_received():
            if isinstance(event, Request):
                self._upgrade(handshake, event)
                return
        if handshake.parser_exc is not None:
            response = handshake.reject(HTTPStatus.BAD_REQUEST, "Malformed upgrade request.\n")
            self._send_response(handshake, response)

    def _upgrade(self, handshake: ServerProtocol, request: Request) -> None:
        transport = self._transport
        assert transport is not None
        peername = transport.get_extra_info("peername") or ("?", 0)
        address = client_address(self._proxies, (str(peername[0]), int(peername[1])), request)
        offered = _offered(request)
        chosen = self._server.chosen(offered or [])
        if chosen is None:
            _log_refused(address, offered)
            reason = "No subprotocol offered is one dpsd serves (mqtt, AMQPWSB10).\n"
            self._send_response(handshake, handshake.reject(HTTPStatus.FORBIDDEN, reason))
            return
        _, listener = chosen
        if not listener.has_room(address):
            listener.log_refused(address, "websocket")
            reason = "Too many device connections are open.\n"
            response = handshake.reject(HTTPStatus.SERVICE_UNAVAILABLE, reason)
            self._send_response(handshake, response)
            return
        if self._send_response(handshake, handshake.accept(request)):
            self._open = True
            self._address = address
            self._device = listener.connection_protocol("websocket")
            self._device.connection_made(self)
            if isinstance(transport, TlsTransport):
                transport.forget_socket_details()  # read above and by the device, never again

    def _send_response(self, handshake: ServerProtocol, response: Response) -> bool:
        """Answer the upgrade; True: accepted, else the connection is closed."""
        handshake.send_response(response)
        self._write(handshake.data_to_send())
        self._handshake = None
        if response.status_code == HTTPStatus.SWITCHING_PROTOCOLS:
            return True
        if self._transport is not None:
            self._transport.close()
        return False

    # --- frames ---------------------------------------------------------------------

    def _frames_received(self, frames: Frames) -> None:
        device = self._device
        assert device is not None
        for event in frames.events_received():
            if not isinstance(event, Frame):
                continue
            self._unparsed -= _least_frame_size(event)
            if event.opcode in _DATA:
                self._fragmented = not event.fin
                if event.data:
                    device.data_received(bytes(event.data))
        self._write(frames.data_to_send())  # pongs, and the close that answers one
        if frames.state is State.OPEN:
            if self._open:  # else the device protocol closed it meanwhile
                # Kept only while a frame or a message is partly read: a parser costs
                # about 1 KB, and a new one is what it would be again once a frame is whole.
                idle = not self._fragmented and self._unparsed == 0
                self._frames = None if idle else frames
            return
        # The device closed the WebSocket (what it sent before is still answered), or
        # broke the protocol (answered with the close websockets chose: 1002, 1009).
        self._open = False
        self._frames = None
        if frames.parser_exc is not None:
            device.connection_lost(frames.parser_exc)
        else:
            device.eof_received()
        if self._transport is not None:
            self._transport.close()

    # --- to the device protocol: its transport ----------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._open:
            self._write([Frame(Opcode.BINARY, bytes(data)).serialize(mask=False)])

    def close(self, code: int = 1000) -> None:
        if self._open:
            self._open = False
            self._frames = None
            closing = Frame(Opcode.CLOSE, Close(code, "").serialize())
            self._write([closing.serialize(mask=False)])
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        self._connection.abort()

    def is_closing(self) -> bool:
        return self._connection.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._connection.get_write_buffer_size()

    def is_reading(self) -> bool:
        return self._connection.is_reading()

    def pause_reading(self) -> None:
        self._connection.pause_reading()

    def resume_reading(self) -> None:
        self._connection.resume_reading()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return (self._address, 0)
        return self._connection.get_extra_info(name, default)

    def _write(self, chunks: list[bytes]) -> None:
        data = b"".join(chunks)  # b"" (the end of the stream): the transport's close says it
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    @property
    def _connection(self) -> asyncio.Transport:
        assert self._transport is not None
        return self._transport


def _least_frame_size(frame: Frame) -> int:
    """The fewest bytes a device's frame with this payload takes (RFC 6455, 5.2: the
    shortest length encoding, and the mask every frame from a client carries). A frame that
    took more (a longer length encoding than needed) leaves the count above zero, and the
    parser is kept: bytes are never dropped, at worst a parser is kept for nothing."""
    size = len(frame.data)
    length_bytes = 0 if size < 126 else 2 if size < 1 << 16 else 8
    return 2 + length_bytes + 4 + size


def _parser() -> Frames:
    """A frame parser of an open WebSocket, from the start of a frame."""
    return Frames(Side.SERVER, state=State.OPEN, max_size=MESSAGE_LIMIT, logger=_frames_logger)


def _offered(request: Request) -> list[str] | None:
    """The subprotocols the upgrade offers, in its order (None: a malformed header)."""
    offered: list[str] = []
    try:
        for value in request.headers.get_all("Sec-WebSocket-Protocol"):
            offered.extend(parse_subprotocol(value))
    except InvalidHandshake:
        return None
    return offered


def _log_refused(address: str, offered: list[str] | None) -> None:
    logger.info(
        "WebSocket upgrade refused: no subprotocol dpsd serves",
        {
            "event": "connect_refused",
            "client": address,
            "subprotocols": ",".join(offered or []) or None,
        },
    )
