"""dpsd's AMQP 1.0 engine for device connections, without I/O: bytes in, events and bytes out.

Why dpsd's own: the one maintained Python AMQP 1.0 engine that serves connections,
python-qpid-proton, keeps about 24 KB per connection in C (its transport's buffers, sized by
proton with no API to change them, and its session and link records), more than the 20 KB
a whole idle device may cost dpsd with its TLS. A DPS device needs a small part of AMQP:
one connection, a session or two, a link each way, small messages. This engine speaks that
part completely (framing, OPEN and CLOSE, sessions with their windows, links with their
credit, transfers over several frames, settlement both ways, heartbeats and the idle
timeout) and refuses the rest with a CLOSE that names it; its state per idle device is a
few hundred bytes of Python objects.

What it leaves out: transactions (a coordinator link has no registration address, and the
application refuses it as any other) and link recovery (``unsettled`` maps and resumed
transfers are ignored). A session begun on a
channel over dpsd's ``channel-max`` closes the connection.

The application decides: ``open`` (or a refusal), ``begin``, ``attach`` (echoing the
client's source and target byte for byte) or ``refuse``, ``flow``, ``send``, ``settle``,
``detach``, ``end``, ``close``. Sessions, links and received deliveries are handed out as
integer ids, never reused within a connection.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, NewType

from dpsd.amqp import types
from dpsd.amqp.codec import AMQP_HEADER, FRAME_HEADER
from dpsd.amqp.types import DecodeError, Described

LinkId = NewType("LinkId", int)
SessionId = NewType("SessionId", int)
DeliveryId = NewType("DeliveryId", int)
OPEN_ERROR = "com.microsoft:open-error"

MIN_MAX_FRAME_SIZE = 512
EMPTY_FRAME = b"\x00\x00\x00\x08\x02\x00\x00\x00"
_UINT_MAX = 0xFFFFFFFF
_INCOMING_WINDOW = 2048  # transfer frames a session takes before dpsd renews its window
_OUTGOING_WINDOW = 0x7FFFFFFF

_OPEN, _BEGIN, _ATTACH, _FLOW, _TRANSFER, _DISPOSITION, _DETACH, _END, _CLOSE = range(0x10, 0x19)
_ERROR, _ACCEPTED, _REJECTED, _SOURCE, _TARGET = 0x1D, 0x24, 0x25, 0x28, 0x29
_NAMES = {
    "amqp:open:list": _OPEN,
    "amqp:begin:list": _BEGIN,
    "amqp:attach:list": _ATTACH,
    "amqp:flow:list": _FLOW,
    "amqp:transfer:list": _TRANSFER,
    "amqp:disposition:list": _DISPOSITION,
    "amqp:detach:list": _DETACH,
    "amqp:end:list": _END,
    "amqp:close:list": _CLOSE,
}
_FIELD_COUNTS = {
    _OPEN: 10,
    _BEGIN: 8,
    _ATTACH: 14,
    _FLOW: 11,
    _TRANSFER: 11,
    _DISPOSITION: 6,
    _DETACH: 3,
    _END: 1,
    _CLOSE: 1,
}
_SOURCE_FIELD, _TARGET_FIELD = 5, 6
_SND_UNSETTLED = 0
_RCV_FIRST = 0

FRAMING_ERROR = "amqp:connection:framing-error"
DECODE_ERROR = "amqp:decode-error"
NOT_ALLOWED = "amqp:not-allowed"
INVALID_FIELD = "amqp:invalid-field"
NOT_IMPLEMENTED = "amqp:not-implemented"
IDLE_TIMEOUT = "amqp:resource-limit-exceeded"


@dataclass(frozen=True, slots=True)
class EngineSettings:
    container_id: str = "dpsd"
    max_frame_size: int = 65536
    channel_max: int = 8191
    idle_timeout: float = 240.0
    """Seconds of silence the peer is told it may keep (the connection closes after twice
    that)."""


@dataclass(frozen=True, slots=True)
class AmqpError:
    """An AMQP error: a condition (``amqp:unauthorized-access``) and a description."""

    condition: str
    description: str
    info: tuple[tuple[str, str], ...] = ()


class LinkState(NamedTuple):
    """A link not detached: its session, whether dpsd sends on it, and whether dpsd
    answered its ATTACH (accepted it)."""

    session: SessionId
    sending: bool
    answered: bool


@dataclass(frozen=True, slots=True)
class RemoteOpened:
    hostname: str | None


@dataclass(frozen=True, slots=True)
class SessionBegun:
    session: SessionId


@dataclass(frozen=True, slots=True)
class SessionEnded:
    session: SessionId


@dataclass(frozen=True, slots=True)
class LinkAttached:
    """``sending``: dpsd sends on it (the client's receiver); ``address``: the source of a
    link dpsd sends on, the target of one it receives on."""

    link: LinkId
    session: SessionId
    sending: bool
    address: str | None


@dataclass(frozen=True, slots=True)
class LinkDetached:
    link: LinkId


@dataclass(frozen=True, slots=True)
class CreditGranted:
    link: LinkId


@dataclass(frozen=True, slots=True)
class TransferArrived:
    delivery: DeliveryId
    link: LinkId
    payload: bytes


@dataclass(frozen=True, slots=True)
class TransferGrowing:
    """Part of a message arrived: ``size`` bytes so far."""

    link: LinkId
    size: int


@dataclass(frozen=True, slots=True)
class RemoteClosed:
    error: str | None


@dataclass(frozen=True, slots=True)
class TransportFailed:
    error: str


EngineEvent = (
    RemoteOpened
    | SessionBegun
    | SessionEnded
    | LinkAttached
    | LinkDetached
    | CreditGranted
    | TransferArrived
    | TransferGrowing
    | RemoteClosed
    | TransportFailed
)


class _Violation(Exception):
    """The client broke the protocol: the connection closes with ``error``."""

    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.error = AmqpError(condition, description)


class _Session:
    __slots__ = (
        "begun",
        "channel",
        "id",
        "incoming_window",
        "links",
        "next_delivery_id",
        "next_incoming_id",
        "next_outgoing_id",
        "remote_incoming_window",
        "waiting",
    )

    def __init__(self, session: SessionId, channel: int, next_incoming_id: int) -> None:
        self.id = session
        self.channel = channel  # the client's channel, and dpsd's for this session
        self.begun = False
        self.links: tuple[_Link, ...] = ()  # the client's handle of each is dpsd's too
        self.next_incoming_id = next_incoming_id
        self.incoming_window = _INCOMING_WINDOW
        self.next_outgoing_id = 0
        self.remote_incoming_window = 0
        self.next_delivery_id = 0
        self.waiting: list[tuple[_Link, bytes]] | None = None  # transfers beyond the window

    def forget(self, link: _Link) -> None:
        self.links = tuple(other for other in self.links if other is not link)

    def link_on(self, handle: int) -> _Link | None:
        for link in self.links:
            if link.handle == handle:
                return link
        return None


class _Link:
    __slots__ = (
        "credit",
        "delivery_count",
        "detached",
        "handle",
        "id",
        "incoming",
        "remote_detached",
        "requested",
        "sending",
        "session",
        "snd_settle_mode",
    )

    def __init__(self, link: LinkId, session: _Session, handle: int, sending: bool) -> None:
        self.id = link
        self.session = session
        self.handle = handle
        self.sending = sending
        self.snd_settle_mode = 2
        self.requested: tuple[str, bytes, bytes] | None = None  # name, source, target
        self.delivery_count = 0
        self.credit = 0
        self.incoming: _Incoming | None = None
        self.detached = False
        self.remote_detached = False


class _Incoming:
    """A message arriving, perhaps over several frames."""

    __slots__ = ("delivery_id", "payload", "settled")

    def __init__(self, delivery_id: int) -> None:
        self.delivery_id = delivery_id
        self.payload = bytearray()
        self.settled = False


class Engine:
    """One server connection's AMQP engine, made once the client's ``AMQP 0.1.0.0`` header
    was read (``dpsd.amqp.connection`` reads headers): it answers with its own.

    Its containers are tuples scanned (a device keeps a session or two, a few links) and
    made only while they hold something: an idle device costs what it must and no more."""

    __slots__ = (
        "_closed_local",
        "_closed_remote",
        "_deliveries",
        "_draining",
        "_events",
        "_failed",
        "_heard",
        "_input",
        "_last_in",
        "_last_out",
        "_next_id",
        "_opened_local",
        "_opened_remote",
        "_output",
        "_remote_idle",
        "_remote_max_frame",
        "_sessions",
        "_settings",
        "_spoke",
    )

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._input = b""
        self._output: list[bytes] | None = [AMQP_HEADER]  # the answer to the client's
        self._events: list[EngineEvent] | None = None
        self._opened_remote = False
        self._opened_local = False
        self._closed_remote = False
        self._closed_local = False
        self._failed = False
        self._remote_max_frame = MIN_MAX_FRAME_SIZE
        self._remote_idle = 0.0
        self._sessions: tuple[_Session, ...] = ()  # tuples: smaller than lists, rarely changed
        self._deliveries: dict[DeliveryId, tuple[_Session, int, bool]] | None = None
        self._draining: tuple[_Link, ...] | None = None  # links to answer a drain on
        self._next_id = 0
        self._heard = self._spoke = True  # since the last tick
        self._last_in = self._last_out = 0.0

    # --- bytes ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[EngineEvent]:
        if self.finished or self._closed_remote:
            return self.events()
        self._heard = True
        self._input = self._input + data if self._input else data
        try:
            self._read_frames()
        except _Violation as violation:
            self._fail(violation.error)
        return self.events()

    def data_to_send(self) -> bytes:
        if self._draining is not None:
            self._drain()
        if not self._output:
            return b""
        data = b"".join(self._output)
        self._output = None
        self._spoke = True
        return data

    def _drain(self) -> None:
        """Answer a drain once the application had its chance to send: the client's
        remaining credit is used up, as if spent, and told back (AMQP 2.6.7)."""
        draining, self._draining = self._draining or (), None
        for link in draining:
            if link.detached or self._closed_local or link.session not in self._sessions:
                continue
            link.delivery_count = (link.delivery_count + max(link.credit, 0)) & _UINT_MAX
            link.credit = 0
            self._write_flow(link.session, link, drained=True)

    @property
    def finished(self) -> bool:
        """The engine will neither read nor write any more."""
        return self._failed or (self._closed_local and self._closed_remote)

    def tick(self, now: float) -> float:
        """Heartbeats and the idle timeout at ``now`` (seconds); the next deadline, or 0."""
        if self.finished:
            return 0.0
        if self._heard:
            self._heard, self._last_in = False, now
        if self._spoke or self._output:
            self._spoke, self._last_out = False, now
        deadline = 0.0
        if self._settings.idle_timeout > 0:
            expiry = self._last_in + 2 * self._settings.idle_timeout
            if now >= expiry:
                self._fail(AmqpError(IDLE_TIMEOUT, "local-idle-timeout expired"))
                return 0.0
            deadline = expiry
        if self._remote_idle > 0 and self._opened_local and not self._closed_local:
            due = self._last_out + self._remote_idle / 2
            if now >= due:
                self._out(EMPTY_FRAME)
                due = now + self._remote_idle / 2
            deadline = min(deadline, due) if deadline else due
        return deadline

    def events(self) -> list[EngineEvent]:
        """What happened since the last call."""
        events, self._events = self._events, None
        return events or []

    # --- the connection ---------------------------------------------------------------------

    def open(self, refusal: AmqpError | None = None) -> None:
        """Answer the client's OPEN; a refusal rides in ``com.microsoft:open-error``, as
        the real service sends it, and the connection closes with the same error."""
        if self._opened_local:
            return
        properties = types.NULL
        if refusal is not None:
            properties = types.map_of([(types.symbol(OPEN_ERROR), _error(refusal))])
        settings = self._settings
        self._opened_local = True
        self._write(
            0,
            _OPEN,
            types.string(settings.container_id),
            types.NULL,
            types.uint(settings.max_frame_size),
            types.ushort(settings.channel_max),
            types.uint(int(settings.idle_timeout * 1000)),
            types.NULL,
            types.NULL,
            types.NULL,
            types.NULL,
            properties,
        )
        if refusal is not None:
            self.close(refusal)

    def close(self, error: AmqpError | None = None) -> None:
        if self._closed_local or self._failed:
            return
        if not self._opened_local:
            self.open()
        self._closed_local = True
        self._write(0, _CLOSE, _error(error) if error else types.NULL)

    def begin(self, session: SessionId) -> None:
        found = self._session_by_id(session)
        if found is None or found.begun or self._closed_local:
            return
        found.begun = True
        self._write(
            found.channel,
            _BEGIN,
            types.ushort(found.channel),
            types.uint(found.next_outgoing_id),
            types.uint(found.incoming_window),
            types.uint(_OUTGOING_WINDOW),
        )

    def end(self, session: SessionId) -> None:
        found = self._session_by_id(session)
        if found is None:
            return
        self._sessions = tuple(other for other in self._sessions if other is not found)
        if found.begun and not self._closed_local:
            self._write(found.channel, _END)

    # --- links ------------------------------------------------------------------------------

    def attach(self, link: LinkId, *, credit: int, max_message_size: int) -> None:
        """Attach echoing the client's source and target; a link dpsd receives on settles
        first and gets ``credit``."""
        found = self._link(link)
        if found is None or found.requested is None:
            return
        (name, source, target), found.requested = found.requested, None
        self._write_attach(
            found,
            name,
            source,
            target,
            types.NULL if found.sending else types.ulong(max_message_size),
        )
        if not found.sending:
            self.flow(link, credit)

    def refuse(self, link: LinkId, error: AmqpError) -> None:
        """Attach with null source and target, then detach with ``error`` (AMQP 2.6.3)."""
        found = self._link(link)
        if found is None or found.requested is None:
            return
        name, found.requested = found.requested[0], None
        self._write_attach(found, name, types.NULL, types.NULL, types.NULL)
        self._detach(found, error)

    def detach(self, link: LinkId) -> None:
        found = self._link(link)
        if found is not None and not found.detached:
            self._detach(found, None)

    def credit(self, link: LinkId) -> int:
        found = self._link(link)
        return found.credit if found is not None and not found.detached else 0

    def flow(self, link: LinkId, credit: int) -> None:
        found = self._link(link)
        if found is None or found.detached:
            return
        found.credit += credit
        self._write_flow(found.session, found)

    def send(self, link: LinkId, payload: bytes) -> None:
        """One message, pre-settled unless the client asked for unsettled transfers (it then
        settles them, and dpsd keeps nothing of them)."""
        found = self._link(link)
        if found is None or found.detached or not found.sending:
            return
        found.credit -= 1
        found.delivery_count += 1
        session = found.session
        if session.waiting is None and session.remote_incoming_window <= 0:
            session.waiting = []
        if session.waiting is not None:
            session.waiting.append((found, payload))
            return
        self._transfer(found, payload)

    def settle(self, delivery: DeliveryId, rejection: AmqpError | None = None) -> None:
        """Settle a received message ``accepted``, or ``rejected`` with ``rejection``."""
        found = self._deliveries.pop(delivery, None) if self._deliveries else None
        if found is None:
            return
        if not self._deliveries:
            self._deliveries = None
        session, delivery_id, settled = found
        if settled or session not in self._sessions or self._closed_local:
            return
        if rejection is None:
            state = types.described(_ACCEPTED, types.list_of())
        else:
            state = types.described(_REJECTED, types.list_of(_error(rejection)))
        self._write(
            session.channel,
            _DISPOSITION,
            types.TRUE,  # role: receiver
            types.uint(delivery_id),
            types.NULL,
            types.TRUE,
            state,
        )

    # --- what the application asks ---------------------------------------------------------

    def sessions(self) -> list[SessionId]:
        return [session.id for session in self._sessions]

    def link_count(self) -> int:
        """Links attached by the client and not detached by either side."""
        return sum(not link.detached for session in self._sessions for link in session.links)

    def link_state(self, link: LinkId) -> LinkState | None:
        found = self._link(link)
        if found is None or found.detached:
            return None
        return LinkState(found.session.id, found.sending, found.requested is None)

    def first_sending_link(self, session: SessionId) -> LinkId | None:
        """The session's first link dpsd attached to send on."""
        found = self._session_by_id(session)
        for link in found.links if found is not None else ():
            if link.sending and link.requested is None and not link.detached:
                return link.id
        return None

    # --- writing ----------------------------------------------------------------------------

    def _write(self, channel: int, code: int, *fields: bytes, payload: bytes = b"") -> None:
        body = types.described(code, types.list_of(*fields))
        self._out(FRAME_HEADER.pack(8 + len(body) + len(payload), 2, 0, channel))
        self._out(body + payload if payload else body)

    def _out(self, data: bytes) -> None:
        if self._output is None:
            self._output = [data]
        else:
            self._output.append(data)

    def _emit(self, event: EngineEvent) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _write_attach(
        self, link: _Link, name: str, source: bytes, target: bytes, max_message_size: bytes
    ) -> None:
        self._write(
            link.session.channel,
            _ATTACH,
            types.string(name),
            types.uint(link.handle),
            types.boolean(not link.sending),  # role: dpsd receives on a client's sender
            types.ubyte(link.snd_settle_mode),
            types.ubyte(_RCV_FIRST),
            source,
            target,
            types.NULL,
            types.FALSE,
            types.uint(0) if link.sending else types.NULL,
            max_message_size,
        )

    def _write_flow(self, session: _Session, link: _Link | None, *, drained: bool = False) -> None:
        session.incoming_window = _INCOMING_WINDOW
        link_fields: tuple[bytes, ...] = ()
        if link is not None:
            link_fields = (
                types.uint(link.handle),
                types.uint(link.delivery_count),
                types.uint(max(link.credit, 0)),
                types.NULL,
                types.boolean(drained),
            )
        self._write(
            session.channel,
            _FLOW,
            types.uint(session.next_incoming_id),
            types.uint(session.incoming_window),
            types.uint(session.next_outgoing_id),
            types.uint(_OUTGOING_WINDOW),
            *link_fields,
        )

    def _detach(self, link: _Link, error: AmqpError | None) -> None:
        link.detached = True
        link.incoming = None
        session = link.session
        if link.remote_detached:
            session.forget(link)
        if session in self._sessions and not self._closed_local:
            self._write(
                session.channel,
                _DETACH,
                types.uint(link.handle),
                types.TRUE,
                _error(error) if error else types.NULL,
            )

    def _transfer(self, link: _Link, payload: bytes) -> None:
        session = link.session
        settled = link.snd_settle_mode != _SND_UNSETTLED
        delivery_id = session.next_delivery_id
        session.next_delivery_id = (delivery_id + 1) & _UINT_MAX
        first = (
            types.uint(link.handle),
            types.uint(delivery_id),
            types.binary(str(delivery_id).encode()),
            types.uint(0),
            types.boolean(settled),
        )
        room = self._remote_max_frame - 8 - 64  # 64: the performative's most
        chunks = [payload[at : at + room] for at in range(0, len(payload), room)] or [b""]
        later = (first[0], types.NULL, types.NULL, types.NULL, first[4])
        for index, chunk in enumerate(chunks):
            more = index < len(chunks) - 1
            head = later if index else first
            self._write(session.channel, _TRANSFER, *head, types.boolean(more), payload=chunk)
            session.next_outgoing_id = (session.next_outgoing_id + 1) & _UINT_MAX
            session.remote_incoming_window -= 1

    # --- reading ----------------------------------------------------------------------------

    def _read_frames(self) -> None:
        data, at = self._input, 0
        limit = self._settings.max_frame_size
        while len(data) - at >= 8 and not self._closed_remote and not self._failed:
            size, offset, kind, channel = FRAME_HEADER.unpack_from(data, at)
            if size > limit or offset < 2 or offset * 4 > size:
                raise _Violation(FRAMING_ERROR, f"a malformed frame header ({size} bytes)")
            if kind != 0:
                raise _Violation(FRAMING_ERROR, f"frame type {kind} in an AMQP connection")
            if len(data) - at < size:
                break
            if size > offset * 4:
                self._frame(channel, data[at + offset * 4 : at + size])
            at += size
        self._input = data[at:]

    def _frame(self, channel: int, body: bytes) -> None:
        code, fields, starts, end = _performative(body)
        if code == _OPEN:
            self._on_open(fields)
            return
        if not self._opened_remote:
            raise _Violation(NOT_ALLOWED, "a frame before OPEN")
        if code == _CLOSE:
            self._on_close(fields)
            return
        if code == _BEGIN:
            self._on_begin(channel, fields)
            return
        session = self._session_on(channel)
        if session is None:
            raise _Violation(NOT_ALLOWED, f"a frame on channel {channel}, which has no session")
        if code == _TRANSFER:
            self._on_transfer(session, fields, body[end:])
        elif code == _FLOW:
            self._on_flow(session, fields)
        elif code == _ATTACH:
            source = body[starts[_SOURCE_FIELD] : starts[_TARGET_FIELD]]
            target = body[starts[_TARGET_FIELD] : starts[_TARGET_FIELD + 1]]
            self._on_attach(session, fields, (source or types.NULL, target or types.NULL))
        elif code == _DETACH:
            self._on_detach(session, fields)
        elif code == _END:
            self._on_end(session)
        # A DISPOSITION settles answers sent unsettled: dpsd keeps nothing of them.

    def _on_open(self, fields: list[object]) -> None:
        if self._opened_remote:
            raise _Violation(NOT_ALLOWED, "a second OPEN")
        self._opened_remote = True
        max_frame = _optional_uint(fields[2], "max-frame-size")
        if max_frame is not None:
            if max_frame < MIN_MAX_FRAME_SIZE:
                raise _Violation(INVALID_FIELD, "a max-frame-size under 512")
            self._remote_max_frame = min(max_frame, self._settings.max_frame_size)
        else:
            self._remote_max_frame = min(_UINT_MAX, self._settings.max_frame_size)
        _optional_uint(fields[3], "channel-max")
        idle = _optional_uint(fields[4], "idle-time-out")
        self._remote_idle = (idle or 0) / 1000
        hostname = fields[1]
        self._emit(RemoteOpened(hostname if isinstance(hostname, str) else None))

    def _on_close(self, fields: list[object]) -> None:
        self._closed_remote = True
        self._emit(RemoteClosed(_describe(fields[0])))

    def _on_begin(self, channel: int, fields: list[object]) -> None:
        if fields[0] is not None:
            raise _Violation(NOT_ALLOWED, "dpsd begins no sessions for a client to answer")
        if self._session_on(channel) is not None:
            raise _Violation(NOT_ALLOWED, f"a second BEGIN on channel {channel}")
        if channel > self._settings.channel_max:
            raise _Violation(NOT_ALLOWED, f"channel {channel} is over the channel-max")
        next_outgoing_id = _uint(fields[1], "next-outgoing-id")
        session = _Session(SessionId(self._new_id()), channel, next_outgoing_id)
        session.remote_incoming_window = _uint(fields[2], "incoming-window")
        self._sessions = (*self._sessions, session)
        self._emit(SessionBegun(session.id))

    def _on_end(self, session: _Session) -> None:
        for link in session.links:
            link.incoming = None
        self._emit(SessionEnded(session.id))

    def _on_attach(
        self, session: _Session, fields: list[object], terminus: tuple[bytes, bytes]
    ) -> None:
        name = fields[0]
        handle = _uint(fields[1], "handle")
        role = fields[2]
        if not isinstance(name, str) or not isinstance(role, bool):
            raise _Violation(INVALID_FIELD, "an ATTACH without a name or role")
        if session.link_on(handle) is not None:
            raise _Violation("amqp:session:handle-in-use", f"handle {handle} is in use")
        sending = role  # the client receives: dpsd sends
        link = _Link(LinkId(self._new_id()), session, handle, sending)
        mode = fields[3]
        if isinstance(mode, int) and not isinstance(mode, bool) and 0 <= mode <= 2:
            link.snd_settle_mode = mode
        if not sending:
            link.delivery_count = _optional_uint(fields[9], "initial-delivery-count") or 0
        link.requested = (name, *terminus)
        session.links = (*session.links, link)
        address = _address(fields[_SOURCE_FIELD if sending else _TARGET_FIELD])
        self._emit(LinkAttached(link.id, session.id, sending, address))

    def _on_detach(self, session: _Session, fields: list[object]) -> None:
        link = session.link_on(_uint(fields[0], "handle"))
        if link is None:
            raise _Violation("amqp:session:unattached-handle", "DETACH of an unattached handle")
        link.incoming = None
        if link.detached:
            session.forget(link)
            return
        link.remote_detached = True  # until dpsd's DETACH answers
        self._emit(LinkDetached(link.id))

    def _on_flow(self, session: _Session, fields: list[object]) -> None:
        next_incoming_id = _optional_uint(fields[0], "next-incoming-id") or 0
        window = _uint(fields[1], "incoming-window")
        session.remote_incoming_window = next_incoming_id + window - session.next_outgoing_id
        handle = _optional_uint(fields[4], "handle")
        link = None if handle is None else session.link_on(handle)
        if handle is not None and link is None:
            raise _Violation("amqp:session:unattached-handle", "FLOW for an unattached handle")
        if link is not None and link.sending and not link.detached:
            delivery_count = _optional_uint(fields[5], "delivery-count") or 0
            credit = _optional_uint(fields[6], "link-credit") or 0
            link.credit = delivery_count + credit - link.delivery_count
            self._emit(CreditGranted(link.id))
            if fields[8] is True:  # drain: what credit the answers leave is used up
                self._draining = (*(self._draining or ()), link)
        if session.waiting:
            self._release_waiting(session)
        if fields[9] is True:  # echo
            self._write_flow(session, link)

    def _on_transfer(self, session: _Session, fields: list[object], payload: bytes) -> None:
        if session.incoming_window <= 0:
            raise _Violation("amqp:session:window-violation", "a TRANSFER beyond the window")
        session.incoming_window -= 1
        session.next_incoming_id = (session.next_incoming_id + 1) & _UINT_MAX
        link = session.link_on(_uint(fields[0], "handle"))
        if link is None or link.sending:
            raise _Violation("amqp:session:unattached-handle", "TRANSFER on no receiving link")
        if link.detached:
            return
        incoming = link.incoming
        if incoming is None:
            incoming = link.incoming = _Incoming(_uint(fields[1], "delivery-id"))
            link.credit -= 1
            link.delivery_count = (link.delivery_count + 1) & _UINT_MAX
        incoming.payload += payload
        incoming.settled = incoming.settled or fields[4] is True
        if fields[9] is True:  # aborted
            link.incoming = None
        elif fields[5] is True:  # more to come
            self._emit(TransferGrowing(link.id, len(incoming.payload)))
        else:
            link.incoming = None
            self._arrived(link, incoming)
        if session.incoming_window < _INCOMING_WINDOW // 2:
            self._write_flow(session, None)

    def _arrived(self, link: _Link, incoming: _Incoming) -> None:
        delivery = DeliveryId(self._new_id())
        if self._deliveries is None:
            self._deliveries = {}
        self._deliveries[delivery] = (link.session, incoming.delivery_id, incoming.settled)
        self._emit(TransferArrived(delivery, link.id, bytes(incoming.payload)))

    def _release_waiting(self, session: _Session) -> None:
        """Transfers wait while the client's session window is shut, and go when it opens."""
        waiting = session.waiting or []
        session.waiting = None
        while waiting and session.remote_incoming_window > 0:
            link, payload = waiting.pop(0)
            if not link.detached:
                self._transfer(link, payload)
        if waiting or session.remote_incoming_window <= 0:
            session.waiting = waiting

    # --- ids and failures -------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _session_by_id(self, session: SessionId) -> _Session | None:
        for found in self._sessions:
            if found.id == session:
                return found
        return None

    def _session_on(self, channel: int) -> _Session | None:
        for found in self._sessions:
            if found.channel == channel:
                return found
        return None

    def _link(self, link: LinkId) -> _Link | None:
        for session in self._sessions:
            for found in session.links:
                if found.id == link:
                    return found
        return None

    def _fail(self, error: AmqpError) -> None:
        if self._failed:
            return
        self.close(error)
        self._failed = True
        self._input = b""
        self._emit(TransportFailed(f"{error.condition}: {error.description}"))


# --- reading fields -------------------------------------------------------------------------


def _performative(body: bytes) -> tuple[int, list[object], list[int], int]:
    """A frame body's performative: its code, fields (padded with nulls), where each field
    starts, and where the performative ends (a TRANSFER's payload follows)."""
    try:
        if body[0] != 0x00:
            raise _Violation(DECODE_ERROR, "a frame body is not a described performative")
        descriptor, at = types.decode(body, 1)
        fields, starts, end = types.decode_list_spans(body, at)
    except DecodeError as error:
        raise _Violation(DECODE_ERROR, str(error)) from error
    code = _NAMES.get(descriptor) if isinstance(descriptor, str) else descriptor
    count = _FIELD_COUNTS.get(code) if isinstance(code, int) else None
    if count is None or isinstance(code, bool):
        raise _Violation(NOT_IMPLEMENTED, f"the performative {descriptor!r}")
    assert isinstance(code, int)
    missing = count - len(fields)
    if missing > 0:
        fields.extend([None] * missing)
        starts.extend([starts[-1]] * missing)
    return code, fields, starts, end


def _uint(value: object, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _UINT_MAX:
        return value
    raise _Violation(INVALID_FIELD, f"the {name} must be an unsigned integer")


def _optional_uint(value: object, name: str) -> int | None:
    return None if value is None else _uint(value, name)


def _address(terminus: object) -> str | None:
    """The address of a source or target (``amqp:source:list``, ``amqp:target:list``)."""
    if not isinstance(terminus, Described) or not isinstance(terminus.value, list):
        return None
    fields = terminus.value
    return fields[0] if fields and isinstance(fields[0], str) else None


def _error(error: AmqpError) -> bytes:
    info = types.NULL
    if error.info:
        info = types.map_of([(types.symbol(key), types.string(value)) for key, value in error.info])
    return types.described(
        _ERROR,
        types.list_of(types.symbol(error.condition), types.string(error.description), info),
    )


def _describe(error: object) -> str | None:
    if not isinstance(error, Described) or not isinstance(error.value, list):
        return None
    fields = [*error.value, None, None][:2]
    return f"{fields[0]}: {fields[1]}"
