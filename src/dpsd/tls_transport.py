"""Server-side TLS for dpsd's listeners in dpsd's own asyncio protocol, so that an idle
connection holds no buffer.

Why hand-written: asyncio's TLS (``asyncio.sslproto``, what ``loop.create_server(ssl=...)``,
``asyncio.start_server(ssl=...)`` and so uvicorn use) gives every connection a 256 KB read
buffer for its whole life (``SSLProtocol.max_size``, which no parameter changes): an idle
connected device cost about 285 KB of dpsd's memory, 10,000 of them 2.8 GB. Here the
standard library's ``ssl.SSLObject`` runs over two ``ssl.MemoryBIO`` in a plain protocol
on the TCP transport:

- bytes read from the socket land in one buffer shared by every connection of a listener
  (``TlsListener``: asyncio fills it, and it is emptied into the connection's incoming
  BIO before anything else runs), plaintext comes out of ``SSLObject.read`` in a bytes
  object made for that read and handed on at once, and whatever OpenSSL writes goes
  straight to the socket: between reads a connection keeps nothing but OpenSSL's state;
- OpenSSL's own record buffers are released whenever they are empty (CPython sets
  ``SSL_MODE_RELEASE_BUFFERS`` on every context), and both BIOs are empty between reads.
  A memory BIO keeps the capacity of the most it ever held (a third more), so bytes go in
  by slices: a socket read into the incoming BIO ``bio_slice`` bytes at a time (4 KB;
  device listeners 256, whose connections stay for hours; 256 on every listener until
  the handshake is done, as a ClientHello alone would leave 700 bytes, and a device may
  stay on the HTTPS port over WebSockets), each taken by OpenSSL before the next, and
  plaintext into the outgoing one record (16 KB) at a time, each sent before the next.
  What a connection keeps is then bounded (its handshake's flight, a few KB, or one
  record) however large the bodies it carried.

The protocol above (uvicorn's HTTP and WebSocket protocols, the device listener's protocol
for MQTT and AMQP) sees an ``asyncio.Transport`` with the extra information asyncio's TLS
transport gives (``sslcontext``, ``ssl_object``, ``peercert``, ``cipher``, ``compression``;
the rest is the socket's), once the handshake is done. Behaviour:

- the handshake must be done within ``handshake_timeout`` seconds of the connection, and
  bytes that are not TLS end it at once (both unlogged, as asyncio does);
- ``pause_reading`` stops reading the socket and decrypting, so a protocol that pauses
  holds at most one socket read of ciphertext; the socket's write flow control passes up;
- ``close`` sends close_notify after what is written and ends the stream, without waiting
  for the peer's close_notify (idle clients often never send one); the socket closes when
  the peer ends its stream too, or ``LINGER_SECONDS`` later (what it sends meanwhile is
  dropped: a reset could destroy an answer it has not read yet);
- the peer's close_notify or end of stream is the protocol's ``eof_received``, after which
  the connection closes (TLS has no half-close).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import ssl
from collections.abc import Callable
from typing import Any

READ_CHUNK = 16 * 1024  # one TLS record's plaintext at most
BIO_SLICE = 4 * 1024  # what goes into the incoming BIO at once (see the module docstring)
DEVICE_BIO_SLICE = 256
HANDSHAKE_BIO_SLICE = 256  # on every listener until the handshake is done
RECORD_SLICE = 16 * 1024  # plaintext encrypted into the outgoing BIO at once: one record
SOCKET_READ = 64 * 1024
LINGER_SECONDS = 5.0
DEADLINE_SLACK = 0.001  # a timer fired this close to its deadline has met it
logger = logging.getLogger("dpsd.tls")
# What the per-connection timers of listeners run in (this module's and the device
# listener's): they set no context variables, and a copy of the context for each
# (asyncio's default) is about 60 bytes per connection.
TIMER_CONTEXT = contextvars.Context()

AppProtocolFactory = Callable[[], asyncio.BaseProtocol]


class TlsListener:
    """What the connections of one listener share: the buffer socket reads land in, the
    slices bytes go into BIOs by (see the module docstring), and their handshake deadlines.

    Every connection of a listener gets the same time for its handshake, so the deadlines
    fall due in the order the connections came: they wait in one ordered table with one
    timer for the first, and a connection leaves it when its handshake is done. (A timer
    per connection, cancelled when its handshake is done, would stay in the event loop's
    heap until its time: about 200 bytes per device that just connected.)"""

    def __init__(
        self,
        handshake_timeout: float,
        *,
        bio_slice: int = BIO_SLICE,
        read_size: int = SOCKET_READ,
    ) -> None:
        self.handshake_timeout = handshake_timeout
        self.bio_slice = bio_slice
        self.buffer = bytearray(read_size)
        self.view = memoryview(self.buffer)
        self._handshaking: dict[TlsServerProtocol, float] = {}
        self._timer: asyncio.TimerHandle | None = None

    def handshake_started(self, protocol: TlsServerProtocol) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time() + self.handshake_timeout
        self._handshaking[protocol] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._handshakes_due, context=TIMER_CONTEXT)

    def handshake_ended(self, protocol: TlsServerProtocol) -> None:
        self._handshaking.pop(protocol, None)

    def _handshakes_due(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        overdue = []
        for protocol, due in self._handshaking.items():
            if due > now + DEADLINE_SLACK:
                break
            overdue.append(protocol)
        for protocol in overdue:
            del self._handshaking[protocol]
            protocol.handshake_overdue()
        if self._handshaking:
            first = next(iter(self._handshaking.values()))
            self._timer = loop.call_at(first, self._handshakes_due, context=TIMER_CONTEXT)


class TlsServerProtocol(asyncio.BufferedProtocol):
    """TLS on one accepted TCP connection; the protocol ``app_factory`` makes runs on it
    once the handshake is done."""

    __slots__ = (
        "_app",
        "_app_factory",
        "_closing",
        "_context",
        "_held",
        "_incoming",
        "_listener",
        "_outgoing",
        "_paused",
        "_socket",
        "_timer",
        "_tls",
    )

    def __init__(
        self,
        context: ssl.SSLContext,
        app_factory: AppProtocolFactory,
        listener: TlsListener,
    ) -> None:
        self._context = context
        self._app_factory: AppProtocolFactory | None = app_factory
        self._listener = listener
        self._socket: asyncio.Transport | None = None
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._app: asyncio.BaseProtocol | None = None
        self._paused = False
        self._held: bytes | None = None
        self._closing = False

    # --- from the socket -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._socket = transport
        self._tls = self._context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._listener.handshake_started(self)

    def forget_socket_details(self) -> None:
        """Let asyncio's socket transport drop what it keeps for ``get_extra_info`` (the
        peer's and the socket's names and a socket wrapper, about 0.4 KB a connection),
        once the protocol above has read what it needs: a device connection asks once, at
        connect, and may then stay for days. asyncio has no API for it: if its transport
        keeps them elsewhere one day, nothing is dropped (a test says so)."""
        extra = getattr(self._socket, "_extra", None)
        if isinstance(extra, dict):
            extra.clear()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._listener.view

    def buffer_updated(self, nbytes: int) -> None:
        self._take(self._listener.view[:nbytes])

    def _take(self, data: memoryview) -> None:
        """Ciphertext into the incoming BIO by slices, each taken before the next. Once the
        protocol above pauses, the rest (of one socket read at most) waits outside the BIO
        until it resumes: in the BIO it would leave the BIO that large for good."""
        start = 0
        while start < len(data):
            if self._closing:
                return  # lingering (see close): what the peer still sends is dropped
            if self._paused:
                self._held = bytes(data[start:])
                return
            size = self._listener.bio_slice if self._app is not None else HANDSHAKE_BIO_SLICE
            self._incoming.write(data[start : start + size])
            start += size
            self._advance()

    def _resume_taking(self) -> None:
        self._advance()  # what the BIO still holds
        held, self._held = self._held, None
        if held is not None:
            self._take(memoryview(held))

    def eof_received(self) -> bool:
        if self._closing:
            return False  # the end a lingering close waited for
        self._advance()  # what is left
        if not self._closing:
            self._ended()  # the end of stream without close_notify: taken as an end
        return False

    def pause_writing(self) -> None:
        if self._app is not None:
            self._app.pause_writing()

    def resume_writing(self) -> None:
        if self._app is not None:
            self._app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.handshake_ended(self)
        self._cancel_timer()
        app, self._app = self._app, None
        self._tls = None
        if app is not None:
            app.connection_lost(exc)

    # --- TLS ---------------------------------------------------------------------------

    def _advance(self) -> None:
        """Take what the incoming BIO holds as far as it goes, and send what OpenSSL wrote."""
        tls = self._tls
        if tls is None or self._closing:
            return
        try:
            if self._app is None:
                tls.do_handshake()
                self._flush()
                self._established()
            self._read_plaintext()
        except ssl.SSLWantReadError:
            pass  # more bytes needed
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            self._ended()  # the peer's close_notify, or its end of stream without one
        except ssl.SSLError:
            self._flush()  # the alert that says why, then the end
            self._closing = True
            self._linger()
        self._flush()  # what the handshake or a key update wrote

    def _ended(self) -> None:
        """The peer will send nothing more: the protocol hears it, and the connection
        closes (TLS has no half-close)."""
        app = self._app
        if app is not None and not self._closing:
            app.eof_received()  # type: ignore[attr-defined]
        self.close()

    def _established(self) -> None:
        self._listener.handshake_ended(self)
        # Not kept: uvicorn's factory holds its arguments, about 0.4 KB per connection.
        factory, self._app_factory = self._app_factory, None
        assert factory is not None
        self._app = factory()
        self._app.connection_made(TlsTransport(self))

    def _read_plaintext(self) -> None:
        incoming = self._incoming
        while not self._paused and self._tls is not None and not self._closing:
            data = self._tls.read(READ_CHUNK)  # raises SSLWantReadError when no record is left
            if not data:
                self._ended()  # the peer's close_notify
                return
            app = self._app
            if app is not None:
                app.data_received(data)  # type: ignore[attr-defined]
            tls = self._tls
            if not incoming.pending and (tls is None or not tls.pending()):
                return  # nothing left to read: spare the read that would only say so

    def _flush(self) -> None:
        socket = self._socket
        if self._outgoing.pending and socket is not None and not socket.is_closing():
            socket.write(self._outgoing.read())

    def handshake_overdue(self) -> None:
        if self._app is None:
            self._abort()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _abort(self) -> None:
        self._closing = True
        if self._socket is not None:
            self._socket.abort()

    # --- for the transport ----------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        tls = self._tls
        if tls is None or self._closing or not data:
            return
        try:
            if len(data) <= RECORD_SLICE:  # most answers: one record
                tls.write(data)
                self._flush()
                return
            view = memoryview(data)
            for start in range(0, len(view), RECORD_SLICE):
                tls.write(view[start : start + RECORD_SLICE])
                self._flush()
        except ssl.SSLError:
            self._abort()  # the TLS connection failed earlier: nothing can be sent

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._cancel_timer()
        if self._tls is not None:
            with contextlib.suppress(ssl.SSLError, ValueError):
                self._tls.unwrap()  # close_notify; the peer's is not awaited
            self._flush()
        self._linger()

    def _linger(self) -> None:
        """End the stream (FIN after what is written) but keep reading, dropping what comes,
        until the peer closes too or LINGER_SECONDS pass. Closing at once would answer
        bytes still on their way with a reset, which can destroy, at the peer, the last
        answer it has not read yet (a CONNACK refusal, a 431)."""
        socket = self._socket
        if socket is None or socket.is_closing():
            return
        if not socket.can_write_eof():
            socket.close()
            return
        socket.write_eof()
        if self._paused:
            self._paused = False
            socket.resume_reading()
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(
            LINGER_SECONDS, socket.close, context=TIMER_CONTEXT
        )

    def abort(self) -> None:
        self._abort()

    def is_closing(self) -> bool:
        return self._closing or self._socket is None or self._socket.is_closing()

    def pause_reading(self) -> None:
        if not self._paused:
            self._paused = True
            if self._socket is not None:
                self._socket.pause_reading()

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._socket is not None:
                self._socket.resume_reading()
            # what was read before the pause, after the caller's turn (as asyncio does)
            asyncio.get_running_loop().call_soon(self._resume_taking)

    def is_reading(self) -> bool:
        return not self._paused and not self.is_closing()

    def extra_info(self, name: str, default: Any = None) -> Any:
        tls = self._tls
        if name == "sslcontext":
            return self._context
        if tls is not None and name in ("ssl_object", "peercert", "cipher", "compression"):
            if name == "ssl_object":
                return tls
            return getattr(tls, "getpeercert" if name == "peercert" else name)()
        return self._socket.get_extra_info(name, default) if self._socket else default

    def set_app(self, protocol: asyncio.BaseProtocol) -> None:
        self._app = protocol

    def get_app(self) -> asyncio.BaseProtocol:
        assert self._app is not None
        return self._app

    @property
    def socket(self) -> asyncio.Transport | None:
        return self._socket


class TlsTransport(asyncio.Transport):
    """What the protocol above sees: plaintext in and out of ``TlsServerProtocol``."""

    __slots__ = ("_tls",)

    def __init__(self, tls: TlsServerProtocol) -> None:
        super().__init__(extra=_NO_EXTRA)  # get_extra_info asks the TLS protocol
        self._tls = tls

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._tls.extra_info(name, default)

    def forget_socket_details(self) -> None:
        self._tls.forget_socket_details()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._tls.write(data)

    def writelines(self, list_of_data: Any) -> None:
        self._tls.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        self._tls.close()

    def abort(self) -> None:
        self._tls.abort()

    def is_closing(self) -> bool:
        return self._tls.is_closing()

    def pause_reading(self) -> None:
        self._tls.pause_reading()

    def resume_reading(self) -> None:
        self._tls.resume_reading()

    def is_reading(self) -> bool:
        return self._tls.is_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tls.set_app(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._tls.get_app()

    def get_write_buffer_size(self) -> int:
        socket = self._tls.socket
        return socket.get_write_buffer_size() if socket is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        socket = self._tls.socket
        return socket.get_write_buffer_limits() if socket is not None else (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        socket = self._tls.socket
        if socket is not None:
            socket.set_write_buffer_limits(high, low)


_NO_EXTRA: dict[str, Any] = {}


async def serve_tls(
    app_factory: AppProtocolFactory,
    context: ssl.SSLContext,
    *,
    handshake_timeout: float,
    bio_slice: int = BIO_SLICE,
    gate: Callable[[AppProtocolFactory], AppProtocolFactory] | None = None,
    **listen: Any,
) -> asyncio.Server:
    """A server of TLS connections in this module's TLS, each with the protocol
    ``app_factory`` makes once its handshake is done; ``bio_slice``: see the module
    docstring; ``gate``: what decides, at accept, whether a connection gets TLS at all;
    ``listen``: ``loop.create_server``'s (``sock``, or ``host`` and ``port``)."""
    listener = TlsListener(handshake_timeout, bio_slice=bio_slice)  # one for every connection

    def factory() -> TlsServerProtocol:
        return TlsServerProtocol(context, app_factory, listener)

    return await asyncio.get_running_loop().create_server(
        gate(factory) if gate else factory, **listen
    )
