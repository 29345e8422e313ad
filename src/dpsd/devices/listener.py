"""The I/O shell every device protocol runs in: TLS connections (an ``asyncio.Protocol`` per
connection on dpsd's own TLS, ``dpsd.tls_transport.serve_tls``) and WebSocket sessions on
the HTTPS port (``dpsd.devices.websocket``) carry bytes to and from one sans-I/O
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

Every connection refused here (too many open) and every
connection's end is logged on ``dpsd.devices``: the device it proved to be, why it ended,
how long it lasted. The open connections are counted by protocol when there are metrics.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from dpsd.client_tls import verified_chain
from dpsd.tls_transport import DEADLINE_SLACK, TIMER_CONTEXT, TlsTransport

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

logger = logging.getLogger("dpsd.devices")


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

    def receive(self, data: bytes) -> bytes | Awaitable[bytes]:
        """Take bytes read; answer the bytes to write: at once when nothing needs a use
        case (an MQTT SUBSCRIBE, a PINGREQ), else once awaited."""
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

    def has_room(self, address: str) -> bool:
        """One more connection from ``address`` would be admitted."""
        if self._total >= self.limits.max_connections:
            return False
        return self._open[address] < self.limits.max_connections_per_address

    def admit(self, address: str) -> bool:
        if not self.has_room(address):
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
    """Serves one device protocol over TLS connections and WebSocket sessions (a stream
    transport each).

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
        self._transports: set[asyncio.Transport] = set()

    def close_all(self) -> None:
        """At shutdown: close every TLS device connection."""
        for transport in list(self._transports):
            transport.close()

    def connection_protocol(self, transport: str = "tls") -> asyncio.Protocol:
        """The protocol of one device connection over TLS (``dpsd.tls_transport.serve_tls``
        makes one per connection once its handshake is done), or any stream transport
        (``transport`` names it in logs: ``websocket`` for ``dpsd.devices.websocket``)."""
        return _StreamDevice(self, transport)

    def has_room(self, address: str) -> bool:
        return self._admission.has_room(address)

    def _admit(self, address: str, transport: str) -> bool:
        if self._admission.admit(address):
            if self._metrics is not None:
                self._metrics.connection_opened(self.protocol)
            return True
        self.log_refused(address, transport)
        return False

    def log_refused(self, address: str, transport: str) -> None:
        """A connection from ``address`` was refused: too many are open."""
        logger.warning(
            "%(protocol)s connection refused: too many device connections are open",
            {
                "event": "connect_refused",
                "protocol": self.protocol,
                "client": address,
                "transport": transport,
            },
        )

    def _release(self, device: _StreamDevice, address: str, ended: str | None) -> None:
        """``device``, admitted from ``address``, ended (``ended``: why, as the shell saw
        it, unless its protocol says)."""
        self._admission.release(address)
        if self._metrics is not None:
            self._metrics.connection_closed(self.protocol)
        connection = device.connection
        reason = (connection.close_reason if connection is not None else None) or ended
        seconds = asyncio.get_running_loop().time() - device.started
        logger.info(
            "%(protocol)s connection closed: %(reason)s",
            {
                "event": "disconnected",
                "protocol": self.protocol,
                "registration_id": connection.registration_id if connection else None,
                "client": address,
                "transport": device.transport_name,
                "duration_ms": round(seconds * 1000, 1),
                "reason": reason or "the connection ended",
            },
        )

    def _broken(self, error: BaseException) -> str:
        if isinstance(error, TimeoutError):
            return f"the device read nothing dpsd wrote for {self._write_timeout:g} s"
        return f"the connection broke ({type(error).__name__})"


class _StreamDevice(asyncio.Protocol):
    """One device connection on a stream transport, driven by the transport's callbacks.

    Between bytes, an idle device holds its protocol state, this object and at most one
    timer: no task, stream or suspended coroutine (asyncio streams and a task per
    connection cost about 4 KB per idle device). Bytes that need a use case (which may
    wait on the store) are answered in a task of their own, the rest (an MQTT SUBSCRIBE, a
    PINGREQ) at once; bytes that come while a task answers wait, reading paused, and are
    answered next, in order. When what dpsd wrote is not read (the transport's
    write buffer passes its high-water mark: ``pause_writing``), nothing more is read until
    it is, and the connection ends after ``write_timeout``.

    One timer stands for the deadline of the moment: the handshake's, the silence the
    protocol allows (``wait_time``, from when the last bytes were answered) or the write's.
    Bytes that come move the deadline without touching the timer: it fires at the old
    time, finds the deadline later and waits again (one timer call per idle period, not
    one per packet)."""

    __slots__ = (
        "_deadline",
        "_ended",
        "_listener",
        "_loop",
        "_reading_paused",
        "_task",
        "_timer",
        "_transport",
        "_waiting",
        "_write_blocked",
        "address",
        "connection",
        "started",
        "transport_name",
    )

    def __init__(self, listener: DeviceListener, kind: str) -> None:
        self._listener = listener
        self.transport_name = kind  # for the logs: tls, websocket
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self.address: str | None = None  # once admitted
        self.started = 0.0  # when it was admitted (the event loop's time)
        self.connection: DeviceConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._waiting: list[bytes] | None = None  # bytes come while others are answered
        self._timer: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._write_blocked = False
        self._reading_paused = False
        self._ended = False

    # --- from the transport ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        listener = self._listener
        address = str((transport.get_extra_info("peername") or ("?",))[0])
        if not listener._admit(address, self.transport_name):
            self._ended = True
            transport.close()
            return
        self._transport = transport
        listener._transports.add(transport)
        self.address = address
        self.started = self._loop.time()
        try:
            connection = listener._new_connection(
                verified_chain(transport.get_extra_info("ssl_object"))
            )
        except Exception:
            logger.exception("setting up a %s device connection failed", listener.protocol)
            self._end("dpsd failed to set up the connection")
            return
        self.connection = connection
        if isinstance(transport, TlsTransport):
            transport.forget_socket_details()  # read above, never again
        self._arm(self.started + listener._handshake_timeout)

    def data_received(self, data: bytes) -> None:
        if self._ended:
            return
        if self._task is not None or self._write_blocked:
            self._wait(data)
            self._pause()
            return
        self._answer(data)

    def eof_received(self) -> bool:
        if self._task is None and not self._waiting:
            self._end("the device closed the connection")
        else:
            self._wait(b"")  # answered first: what came before the end
        return False

    def pause_writing(self) -> None:
        self._write_blocked = True
        self._pause()
        self._arm(self._loop.time() + self._listener._write_timeout)

    def resume_writing(self) -> None:
        self._write_blocked = False
        if self._task is None and not self._ended:
            self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None:
            self._end("the device closed the connection", keep_waiting=True)
        else:
            self._end(self._listener._broken(exc), keep_waiting=True)

    # --- answering ------------------------------------------------------------------

    def _answer(self, data: bytes) -> None:
        connection = self.connection
        assert connection is not None
        try:
            answer = connection.receive(data)
        except Exception:  # noqa: BLE001 - logged with its traceback, the connection ended
            self._failed()
            return
        if isinstance(answer, bytes):
            self._write(answer)  # answered in place: no task for it
            if not self._ended:
                self._next()
        else:
            self._task = self._loop.create_task(self._answered(answer))

    async def _answered(self, answer: Awaitable[bytes]) -> None:
        try:
            outgoing = await answer
        except Exception:  # noqa: BLE001 - logged with its traceback, the connection ended
            self._task = None
            self._failed()
            return
        self._task = None
        if not self._ended:
            self._write(outgoing)
            self._next()
        else:
            self._answer_what_waited()

    def _failed(self) -> None:
        """Answering failed (called while its exception is handled)."""
        logger.exception("answering a %s device failed", self._listener.protocol)
        self._end("dpsd failed to answer the device")

    def _next(self) -> None:
        """After an answer or a write the device took: end, answer what waits, or wait."""
        connection = self.connection
        assert connection is not None
        if self._write_blocked:
            return  # not even a last answer is dropped: the device reads it, or times out
        if connection.finished:
            self._end(None)
            return
        if self._waiting:
            if not self._answer_waiting():
                self._end("the device closed the connection")
            return
        self._resume()
        if connection.established:
            wait = connection.wait_time()
            self._arm(None if wait is None else self._loop.time() + wait)
        elif self.address is not None:
            self._arm(self.started + self._listener._handshake_timeout)

    def _answer_waiting(self) -> bool:
        """Answer the bytes that waited, in one piece; the end of stream, when it came after
        them, waits on. False: nothing but the end waited."""
        waiting, self._waiting = self._waiting or [], None
        data = b"".join(waiting)
        if not data:
            return False
        if not waiting[-1]:
            self._wait(b"")  # first: an answer given in place looks for it at once
        self._answer(data)
        return True

    def _wait(self, data: bytes) -> None:
        """Keep bytes to answer once the answer under way is written (b"": the end)."""
        if self._waiting is None:
            self._waiting = []
        self._waiting.append(data)

    def _write(self, data: bytes) -> None:
        if data and self._transport is not None:
            self._transport.write(data)  # may call pause_writing

    # --- the deadline ---------------------------------------------------------------

    def _arm(self, deadline: float | None) -> None:
        self._deadline = deadline
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
        elif timer is None or timer.when() > deadline:
            if timer is not None:
                timer.cancel()
            self._schedule(deadline)

    def _schedule(self, deadline: float) -> None:
        self._timer = self._loop.call_at(deadline, self._deadline_passed, context=TIMER_CONTEXT)

    def _deadline_passed(self) -> None:
        self._timer = None
        deadline = self._deadline
        if self._ended or deadline is None or self._task is not None:
            return  # an answer under way sets the next deadline when it is done
        if deadline > self._loop.time() + DEADLINE_SLACK:
            self._schedule(deadline)
            return
        connection = self.connection
        assert connection is not None
        if self._write_blocked:
            self._end(self._listener._broken(TimeoutError()))
        elif not connection.established:
            self._end(f"no handshake within {self._listener._handshake_timeout:g} s")
        else:
            self._write(connection.time_passed())
            self._next()

    # --- the end --------------------------------------------------------------------

    def _end(self, reason: str | None, *, keep_waiting: bool = False) -> None:
        """``keep_waiting``: the device left; bytes it sent before are still answered."""
        if self._ended:
            return
        self._ended = True
        self._arm(None)
        if keep_waiting:
            self._answer_what_waited()
        else:
            self._waiting = None
        transport = self._transport
        if self.address is not None:
            self._listener._release(self, self.address, reason)
        if transport is not None:
            self._listener._transports.discard(transport)
            if transport.get_write_buffer_size():
                # A device that reads nothing: closing would wait for ever to flush to it.
                transport.abort()
            else:
                transport.close()

    def _answer_what_waited(self) -> None:
        """The device left with bytes still waiting: what it sent stands (a register goes
        on), though no answer reaches it."""
        if self._waiting and self._task is None:
            self._answer_waiting()

    def _pause(self) -> None:
        transport = self._transport
        if transport is not None and transport.is_reading():
            transport.pause_reading()
            self._reading_paused = True

    def _resume(self) -> None:
        if self._reading_paused:  # known here: no question to the transport per answer
            self._reading_paused = False
            if self._transport is not None:
                self._transport.resume_reading()
