"""One device's AMQP connection as a state machine: bytes in, events and bytes out, no I/O.

1. The protocol header. ``AMQP 3.1.0.0`` starts SASL (dpsd's own, ``dpsd.amqp.sasl``);
   ``AMQP 0.1.0.0`` goes straight to AMQP (X.509 devices, known by their TLS certificate);
   anything else gets dpsd's SASL header back, as the specification asks, and is closed.
2. SASL: mechanisms, init, any challenges, the outcome, then the client's ``AMQP 0.1.0.0``.
3. AMQP itself, in proton's engine (``dpsd.amqp.engine``). The application decides the
   OPEN, each link (by its address) and answers each request message; the answers are sent
   in order on the session's link towards the client, as far as the client's credit goes.

Every limit closes only this connection: SASL frames over ``max_sasl_frame_size``, more
than ``max_buffered`` bytes waiting for a SASL decision, frames over the engine's
max-frame-size, messages over ``max_message_size``, more sessions or links than allowed,
and a client that sends more requests than it was given credit for or leaves more than
``max_backlog`` answers unread.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from dpsd.amqp.codec import (
    AMQP_HEADER,
    HEADER_SIZE,
    SASL_HEADER,
    SaslDecodeError,
    could_be_header,
    read_frame,
)
from dpsd.amqp.engine import (
    AmqpError,
    CreditGranted,
    DeliveryId,
    EngineEvent,
    EngineSettings,
    LinkAttached,
    LinkDetached,
    LinkId,
    ProtonEngine,
    RemoteClosed,
    RemoteOpened,
    SessionBegun,
    SessionEnded,
    SessionId,
    TransferArrived,
    TransferGrowing,
    TransportFailed,
)
from dpsd.amqp.messages import (
    MalformedMessage,
    RequestMessage,
    ResponseMessage,
    decode_request,
    encode_response,
)
from dpsd.amqp.sasl import MECHANISMS, MechanismFactory, SaslEvidence, SaslExchange, SaslState

RESOURCE_LIMIT = "amqp:resource-limit-exceeded"
_LINK_EVENTS = (LinkAttached, LinkDetached, CreditGranted, TransferArrived, TransferGrowing)


class State(enum.Enum):
    AWAITING_HEADER = "awaiting the protocol header"
    SASL = "authenticating (SASL)"
    AWAITING_AMQP_HEADER = "awaiting the AMQP header after SASL"
    OPENING = "awaiting the OPEN, or its acceptance"
    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class SaslEvidenceReceived:
    """The application decides: ``accept_sasl()``, ``refuse_sasl()`` or ``challenge_sasl()``."""

    evidence: SaslEvidence


@dataclass(frozen=True, slots=True)
class OpenRequested:
    """The application decides: ``accept_open()`` or ``refuse_open(error)``."""

    hostname: str | None


@dataclass(frozen=True, slots=True)
class LinkRequested:
    """The application decides: ``accept_link(link)`` or ``refuse_link(link, error)``.
    ``sending``: dpsd would send on it (the answers); else the client sends requests."""

    link: LinkId
    address: str | None
    sending: bool


@dataclass(frozen=True, slots=True)
class RequestReceived:
    """The application answers: ``respond(request, message)`` or ``reject(request, error)``."""

    request: DeliveryId
    message: RequestMessage


@dataclass(frozen=True, slots=True)
class Closed:
    reason: str


Event = SaslEvidenceReceived | OpenRequested | LinkRequested | RequestReceived | Closed


@dataclass(frozen=True, slots=True)
class AmqpLimits:
    max_sasl_frame_size: int = 4096
    max_buffered: int = 64 * 1024
    max_message_size: int = 96 * 1024
    max_sessions: int = 4
    max_links: int = 8
    receiver_credit: int = 10
    max_backlog: int = 20
    engine: EngineSettings = field(default_factory=EngineSettings)


@dataclass(frozen=True, slots=True)
class _Link:
    session: SessionId
    sending: bool


class AmqpConnection:
    def __init__(
        self,
        limits: AmqpLimits | None = None,
        mechanisms: Mapping[str, MechanismFactory] = MECHANISMS,
    ) -> None:
        self.limits = limits or AmqpLimits()
        self.state = State.AWAITING_HEADER
        self._sasl = SaslExchange(mechanisms)
        self._engine: ProtonEngine | None = None
        self._buffer = bytearray()
        self._outbound = bytearray()
        self._sessions: set[SessionId] = set()
        self._sessions_to_begin: list[SessionId] = []
        self._requested: dict[LinkId, LinkAttached] = {}
        self._links: dict[LinkId, _Link] = {}
        self._reply_links: dict[SessionId, LinkId] = {}
        self._answers: dict[SessionId, deque[bytes]] = {}
        self._in_flight: dict[DeliveryId, tuple[LinkId, SessionId]] = {}

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> list[Event]:
        if self.closed:
            return []
        self._buffer += data
        events: list[Event] = []
        self._advance(events)
        if not self.closed and len(self._buffer) > self.limits.max_buffered:
            events.append(self._close("too many bytes before the SASL decision"))
        return events

    def data_to_send(self) -> bytes:
        data = bytes(self._outbound)
        self._outbound.clear()
        if self._engine is not None:
            data += self._engine.data_to_send()
        return data

    def tick(self, now: float) -> float | None:
        """Heartbeats and the idle timeout at ``now`` (seconds, any monotonic clock); the
        time of the next tick, or None."""
        if self._engine is None or self.closed:
            return None
        deadline = self._engine.tick(now)
        self._handle_engine(self._engine.events(), [])
        if self._engine.finished:
            self.state = State.CLOSED
        return deadline or None

    def close(self, error: AmqpError | None = None) -> Closed:
        if self._engine is not None and not self.closed:
            self._engine.close(error)
        return self._close(error.description if error else "closed by dpsd")

    # --- SASL decisions ---------------------------------------------------------------------

    def accept_sasl(self) -> list[Event]:
        """The outcome ``ok``; the events of bytes that waited for the decision."""
        if self.state is not State.SASL or self._sasl.state is not SaslState.DECIDING:
            return []
        self._outbound += self._sasl.accept()
        self.state = State.AWAITING_AMQP_HEADER
        events: list[Event] = []
        self._advance(events)
        return events

    def refuse_sasl(self) -> Closed:
        self._outbound += self._sasl.refuse()
        return self._close("SASL authentication refused")

    def challenge_sasl(self, data: bytes) -> None:
        """A server-driven challenge (a mechanism such as TPM); the response goes to the
        mechanism, whose next evidence comes as another SaslEvidenceReceived."""
        if self.state is State.SASL and self._sasl.state is SaslState.DECIDING:
            self._outbound += self._sasl.challenge(data)

    # --- AMQP decisions ---------------------------------------------------------------------

    def accept_open(self) -> None:
        if self.state is not State.OPENING or self._engine is None:
            return
        self._engine.open()
        self.state = State.OPEN
        for session in self._sessions_to_begin:
            self._engine.begin(session)
        self._sessions_to_begin.clear()

    def refuse_open(self, error: AmqpError) -> Closed:
        if self.state is State.OPENING and self._engine is not None:
            self._engine.open(refusal=error)
        return self._close(f"OPEN refused: {error.description}")

    def accept_link(self, link: LinkId) -> None:
        attached = self._requested.pop(link, None)
        if attached is None or self._engine is None or self.closed:
            return
        limits = self.limits
        self._engine.attach(
            link, credit=limits.receiver_credit, max_message_size=limits.max_message_size
        )
        self._links[link] = _Link(attached.session, attached.sending)
        if attached.sending and attached.session not in self._reply_links:
            self._reply_links[attached.session] = link
            self._flush(attached.session)

    def refuse_link(self, link: LinkId, error: AmqpError) -> None:
        if self._requested.pop(link, None) is not None and self._engine is not None:
            self._engine.refuse(link, error)

    def respond(self, request: DeliveryId, message: ResponseMessage) -> None:
        """Settle the request ``accepted`` and queue the answer for the client."""
        found = self._in_flight.pop(request, None)
        if found is None or self._engine is None or self.closed:
            return
        link, session = found
        self._engine.settle(request)
        self._answers.setdefault(session, deque()).append(encode_response(message))
        self._flush(session)
        self._top_up(link)

    def reject(self, request: DeliveryId, error: AmqpError) -> None:
        found = self._in_flight.pop(request, None)
        if found is None or self._engine is None or self.closed:
            return
        self._engine.settle(request, error)
        self._top_up(found[0])

    # --- reading ----------------------------------------------------------------------------

    def _advance(self, events: list[Event]) -> None:
        progressed = True
        while progressed and not self.closed:
            match self.state:
                case State.AWAITING_HEADER:
                    progressed = self._read_header(events)
                case State.SASL:
                    progressed = self._read_sasl(events)
                case State.AWAITING_AMQP_HEADER:
                    progressed = self._read_amqp_header(events)
                case _:
                    self._feed_engine(events)
                    progressed = False

    def _read_header(self, events: list[Event]) -> bool:
        head = bytes(self._buffer[:HEADER_SIZE])
        if not could_be_header(head):
            return self._refuse_header(events, "not an AMQP protocol header")
        if len(head) < HEADER_SIZE:
            return False
        del self._buffer[:HEADER_SIZE]
        if head == SASL_HEADER:
            self.state = State.SASL
            self._outbound += self._sasl.start()
            return True
        if head == AMQP_HEADER:
            self._start_engine()
            return True
        return self._refuse_header(events, f"unsupported protocol header {head!r}")

    def _refuse_header(self, events: list[Event], reason: str) -> bool:
        self._outbound += SASL_HEADER
        events.append(self._close(reason))
        return False

    def _read_sasl(self, events: list[Event]) -> bool:
        if self._sasl.state not in (SaslState.AWAITING_INIT, SaslState.CHALLENGED):
            return False  # the application is judging the evidence: the bytes wait
        try:
            frame, used = read_frame(self._buffer, self.limits.max_sasl_frame_size)
        except SaslDecodeError as error:
            events.append(self._close(f"SASL: {error}"))
            return False
        if not used:
            return False
        del self._buffer[:used]
        if frame is None:
            return True  # an empty frame
        evidence, outbound = self._sasl.receive(frame)
        self._outbound += outbound
        if self._sasl.failed:
            events.append(self._close("SASL authentication failed"))
            return False
        if evidence is not None:
            events.append(SaslEvidenceReceived(evidence))
            return False
        return True

    def _read_amqp_header(self, events: list[Event]) -> bool:
        head = bytes(self._buffer[:HEADER_SIZE])
        if head != AMQP_HEADER[: len(head)]:
            self._outbound += AMQP_HEADER
            events.append(self._close("SASL must be followed by the AMQP header"))
            return False
        if len(head) < HEADER_SIZE:
            return False
        del self._buffer[:HEADER_SIZE]
        self._start_engine()
        return True

    def _start_engine(self) -> None:
        self._engine = ProtonEngine(self.limits.engine)
        self._buffer[:0] = AMQP_HEADER
        self.state = State.OPENING

    def _feed_engine(self, events: list[Event]) -> None:
        assert self._engine is not None
        data = bytes(self._buffer)
        self._buffer.clear()
        self._handle_engine(self._engine.receive(data), events)
        if not self.closed and self._engine.finished:
            events.append(self._close("the AMQP engine closed the connection"))

    # --- what the engine reports ------------------------------------------------------------

    def _handle_engine(self, engine_events: list[EngineEvent], events: list[Event]) -> None:
        for event in engine_events:
            if self.closed:
                return
            if isinstance(event, _LINK_EVENTS):
                self._on_link_event(event, events)
            else:
                self._on_connection_event(event, events)

    def _on_connection_event(self, event: EngineEvent, events: list[Event]) -> None:
        match event:
            case RemoteOpened(hostname=hostname):
                events.append(OpenRequested(hostname))
            case SessionBegun(session=session):
                self._on_session(session, events)
            case SessionEnded(session=session):
                self._on_session_end(session)
            case RemoteClosed(error=error):
                self._engine_close()
                events.append(self._close(f"the client closed the connection ({error})"))
            case TransportFailed(error=error):
                events.append(self._close(error))

    def _on_link_event(self, event: EngineEvent, events: list[Event]) -> None:
        match event:
            case LinkAttached():
                self._on_attach(event, events)
            case LinkDetached(link=link):
                self._on_detach(link)
            case CreditGranted(link=link):
                found = self._links.get(link)
                if found is not None:
                    self._flush(found.session)
            case TransferArrived():
                self._on_transfer(event, events)
            case TransferGrowing(size=size) if size > self.limits.max_message_size:
                events.append(self._limit("amqp:link:message-size-exceeded", "too large"))

    def _on_session(self, session: SessionId, events: list[Event]) -> None:
        if len(self._sessions) >= self.limits.max_sessions:
            events.append(self._limit(RESOURCE_LIMIT, "too many sessions"))
            return
        self._sessions.add(session)
        if self.state is State.OPEN:
            assert self._engine is not None
            self._engine.begin(session)
        else:
            self._sessions_to_begin.append(session)

    def _on_session_end(self, session: SessionId) -> None:
        assert self._engine is not None
        self._engine.end(session)
        self._sessions.discard(session)
        self._answers.pop(session, None)
        self._reply_links.pop(session, None)

    def _on_attach(self, attached: LinkAttached, events: list[Event]) -> None:
        if len(self._links) + len(self._requested) >= self.limits.max_links:
            events.append(self._limit(RESOURCE_LIMIT, "too many links"))
            return
        self._requested[attached.link] = attached
        events.append(LinkRequested(attached.link, attached.address, attached.sending))

    def _on_detach(self, link: LinkId) -> None:
        assert self._engine is not None
        self._engine.detach(link)
        self._requested.pop(link, None)
        found = self._links.pop(link, None)
        if found is not None and self._reply_links.get(found.session) == link:
            del self._reply_links[found.session]
            others = [
                other
                for other, candidate in self._links.items()
                if candidate.sending and candidate.session == found.session
            ]
            if others:
                self._reply_links[found.session] = others[0]
                self._flush(found.session)

    def _on_transfer(self, transfer: TransferArrived, events: list[Event]) -> None:
        assert self._engine is not None
        link = self._links.get(transfer.link)
        if link is None or link.sending:
            self._engine.settle(transfer.delivery, AmqpError("amqp:not-allowed", "not attached"))
            return
        if self._engine.credit(transfer.link) < 0 or self._backlog >= self.limits.max_backlog:
            events.append(self._limit("amqp:link:transfer-limit-exceeded", "no credit left"))
            return
        if len(transfer.payload) > self.limits.max_message_size:
            events.append(self._limit("amqp:link:message-size-exceeded", "too large"))
            return
        try:
            message = decode_request(transfer.payload)
        except MalformedMessage as error:
            self._engine.settle(transfer.delivery, AmqpError("amqp:decode-error", str(error)))
            self._top_up(transfer.link)
            return
        self._in_flight[transfer.delivery] = (transfer.link, link.session)
        events.append(RequestReceived(transfer.delivery, message))

    # --- sending ----------------------------------------------------------------------------

    @property
    def _backlog(self) -> int:
        """Requests not answered yet, and answers the client has not taken yet."""
        return len(self._in_flight) + sum(len(queue) for queue in self._answers.values())

    def _flush(self, session: SessionId) -> None:
        link = self._reply_links.get(session)
        queue = self._answers.get(session)
        if link is None or not queue or self._engine is None:
            return
        while queue and self._engine.credit(link) > 0:
            self._engine.send(link, queue.popleft())

    def _top_up(self, link: LinkId) -> None:
        """More credit for the client's requests while it takes its answers."""
        engine, wanted = self._engine, self.limits.receiver_credit
        if engine is None or link not in self._links or self._backlog >= self.limits.max_backlog:
            return
        credit = engine.credit(link)
        if credit <= wanted // 2:
            engine.flow(link, wanted - credit)

    # --- closing ----------------------------------------------------------------------------

    def _limit(self, condition: str, description: str) -> Closed:
        return self.close(AmqpError(condition, description))

    def _engine_close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _close(self, reason: str) -> Closed:
        self.state = State.CLOSED
        return Closed(reason)
