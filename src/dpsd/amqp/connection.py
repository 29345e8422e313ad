"""One device's AMQP connection as a state machine: bytes in, events and bytes out, no I/O.

1. The protocol header. ``AMQP 3.1.0.0`` starts SASL (dpsd's own, ``dpsd.amqp.sasl``);
   ``AMQP 0.1.0.0`` goes straight to AMQP (X.509 devices, known by their TLS certificate);
   anything else gets dpsd's SASL header back, as the specification asks, and is closed.
2. SASL: mechanisms, init, any challenges, the outcome, then the client's ``AMQP 0.1.0.0``.
3. AMQP itself, in dpsd's engine (``dpsd.amqp.engine``). The application decides the
   OPEN, each link (by its address) and answers each request message; the answers are sent
   in order on the session's link towards the client, as far as the client's credit goes.

Every limit closes only this connection: SASL frames over ``max_sasl_frame_size``, more
than ``max_buffered`` bytes waiting for a SASL decision, frames over the engine's
max-frame-size, and the limits on sessions, links, messages and credit of
``dpsd.amqp.links``.
"""

from __future__ import annotations

import enum
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
    Engine,
    EngineEvent,
    EngineSettings,
    LinkAttached,
    LinkDetached,
    LinkId,
    RemoteClosed,
    RemoteOpened,
    SessionBegun,
    SessionEnded,
    TransferArrived,
    TransferGrowing,
    TransportFailed,
)
from dpsd.amqp.links import LimitExceeded, LinkLimits, LinkRequested, Links, RequestReceived
from dpsd.amqp.messages import ResponseMessage
from dpsd.amqp.sasl import MECHANISMS, MechanismFactory, SaslEvidence, SaslExchange, SaslState

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
class Closed:
    reason: str


Event = SaslEvidenceReceived | OpenRequested | LinkRequested | RequestReceived | Closed


@dataclass(frozen=True, slots=True)
class AmqpLimits:
    max_sasl_frame_size: int = 4096
    max_buffered: int = 64 * 1024
    links: LinkLimits = field(default_factory=LinkLimits)
    engine: EngineSettings = field(default_factory=EngineSettings)


class AmqpConnection:
    __slots__ = (
        "_buffer",
        "_deadline",
        "_engine",
        "_links",
        "_mechanisms",
        "_outbound",
        "_sasl",
        "limits",
        "state",
    )

    def __init__(
        self,
        limits: AmqpLimits | None = None,
        mechanisms: Mapping[str, MechanismFactory] = MECHANISMS,
    ) -> None:
        self.limits = limits or AmqpLimits()
        self.state = State.AWAITING_HEADER
        self._mechanisms = mechanisms
        self._sasl: SaslExchange | None = None  # while authenticating
        self._engine: Engine | None = None
        self._links: Links | None = None
        self._buffer = b""
        self._outbound = b""
        self._deadline: float | None = None

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
        data, self._outbound = self._outbound, b""
        if self._engine is not None:
            data += self._engine.data_to_send()
        return data

    def tick(self, now: float) -> float | None:
        """Heartbeats and the idle timeout at ``now`` (seconds, any monotonic clock); the
        time of the next tick, or None.

        Before the deadline the engine named last, nothing is due: bytes read or written since
        only move its deadlines later (the client's idle timeout, which brings heartbeats,
        is known once its OPEN is accepted, and the deadline is computed anew then)."""
        if self._engine is None or self.closed:
            return None
        if self._deadline is not None and now < self._deadline:
            return self._deadline
        self._deadline = self._engine.tick(now) or None
        self._handle_engine(self._engine.events(), [])
        if self._engine.finished:
            self.state = State.CLOSED
        return self._deadline

    def close(self, error: AmqpError | None = None) -> Closed:
        if self._engine is not None and not self.closed:
            self._engine.close(error)
        return self._close(error.description if error else "closed by dpsd")

    # --- SASL decisions ---------------------------------------------------------------------

    def accept_sasl(self) -> list[Event]:
        """The outcome ``ok``; the events of bytes that waited for the decision."""
        sasl = self._sasl
        if self.state is not State.SASL or sasl is None or sasl.state is not SaslState.DECIDING:
            return []
        self._outbound += sasl.accept()
        self._sasl = None
        self.state = State.AWAITING_AMQP_HEADER
        events: list[Event] = []
        self._advance(events)
        return events

    def refuse_sasl(self, additional_data: bytes | None = None) -> Closed:
        if self._sasl is not None:
            self._outbound += self._sasl.refuse(additional_data)
        return self._close("SASL authentication refused")

    def challenge_sasl(self, data: bytes) -> None:
        """A server-driven challenge (a mechanism such as TPM); the response goes to the
        mechanism, whose next evidence comes as another SaslEvidenceReceived."""
        sasl = self._sasl
        if self.state is State.SASL and sasl is not None and sasl.state is SaslState.DECIDING:
            self._outbound += sasl.challenge(data)

    # --- AMQP decisions ---------------------------------------------------------------------

    def accept_open(self) -> None:
        if self.state is not State.OPENING or self._engine is None or self._links is None:
            return
        self._engine.open()
        self.state = State.OPEN
        self._deadline = None  # the client's idle timeout is known now
        self._links.open()

    def refuse_open(self, error: AmqpError) -> Closed:
        if self.state is State.OPENING and self._engine is not None:
            self._engine.open(refusal=error)
        return self._close(f"OPEN refused: {error.description}")

    def accept_link(self, link: LinkId) -> None:
        if self._links is not None and not self.closed:
            self._links.accept(link)

    def refuse_link(self, link: LinkId, error: AmqpError) -> None:
        if self._links is not None and not self.closed:
            self._links.refuse(link, error)

    def respond(self, request: DeliveryId, message: ResponseMessage) -> None:
        """Settle the request ``accepted`` and queue the answer for the client."""
        if self._links is not None and not self.closed:
            self._links.respond(request, message)

    def reject(self, request: DeliveryId, error: AmqpError) -> None:
        if self._links is not None and not self.closed:
            self._links.reject(request, error)

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
        self._buffer = self._buffer[HEADER_SIZE:]
        if head == SASL_HEADER:
            self.state = State.SASL
            self._sasl = SaslExchange(self._mechanisms)
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
        sasl = self._sasl
        assert sasl is not None
        if sasl.state not in (SaslState.AWAITING_INIT, SaslState.CHALLENGED):
            return False  # the application is judging the evidence: the bytes wait
        try:
            frame, used = read_frame(self._buffer, self.limits.max_sasl_frame_size)
        except SaslDecodeError as error:
            events.append(self._close(f"SASL: {error}"))
            return False
        if not used:
            return False
        self._buffer = self._buffer[used:]
        if frame is None:
            return True  # an empty frame
        evidence, outbound = sasl.receive(frame)
        self._outbound += outbound
        if sasl.failed:
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
        self._buffer = self._buffer[HEADER_SIZE:]
        self._start_engine()
        return True

    def _start_engine(self) -> None:
        self._engine = Engine(self.limits.engine)
        self._links = Links(self._engine, self.limits.links)
        self.state = State.OPENING

    def _feed_engine(self, events: list[Event]) -> None:
        assert self._engine is not None
        data, self._buffer = self._buffer, b""
        self._handle_engine(self._engine.receive(data), events)
        if not self.closed and self._engine.finished:
            events.append(self._close("the AMQP engine closed the connection"))

    # --- what the engine reports ------------------------------------------------------------

    def _handle_engine(self, engine_events: list[EngineEvent], events: list[Event]) -> None:
        assert self._links is not None
        for event in engine_events:
            if self.closed:
                return
            try:
                if isinstance(event, _LINK_EVENTS):
                    self._on_link_event(self._links, event, events)
                else:
                    self._on_connection_event(self._links, event, events)
            except LimitExceeded as exceeded:
                events.append(self.close(exceeded.error))

    def _on_connection_event(self, links: Links, event: EngineEvent, events: list[Event]) -> None:
        match event:
            case RemoteOpened(hostname=hostname):
                events.append(OpenRequested(hostname))
            case SessionBegun(session=session):
                links.session_begun(session)
            case SessionEnded(session=session):
                links.session_ended(session)
            case RemoteClosed(error=error):
                self._engine_close()
                events.append(self._close(f"the client closed the connection ({error})"))
            case TransportFailed(error=error):
                events.append(self._close(error))

    def _on_link_event(self, links: Links, event: EngineEvent, events: list[Event]) -> None:
        match event:
            case LinkAttached():
                events.append(links.attached(event))
            case LinkDetached(link=link):
                links.detached(link)
            case CreditGranted(link=link):
                links.credit_granted(link)
            case TransferArrived():
                request = links.arrived(event)
                if request is not None:
                    events.append(request)
            case TransferGrowing(size=size):
                links.growing(size)

    # --- closing ----------------------------------------------------------------------------

    def _engine_close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def _close(self, reason: str) -> Closed:
        self.state = State.CLOSED
        return Closed(reason)
