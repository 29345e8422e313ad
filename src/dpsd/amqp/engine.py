"""python-qpid-proton's AMQP 1.0 engine, without I/O, behind the few typed calls dpsd needs.

Why proton: no maintained Python AMQP 1.0 server exists (uamqp and the Azure SDKs' private
``_pyamqp`` are clients only). proton's engine (``Transport(Transport.SERVER)`` with a
``Connection`` and a ``Collector``) is a maintained, complete implementation of framing,
sessions, links, flow control, settlement and idle timeouts that takes bytes and hands bytes
back, so it fits a sans-I/O core. dpsd runs it behind its own SASL layer (``dpsd.amqp.sasl``:
proton's built-in SASL cannot show a PLAIN password to Python), so proton sees each
connection from the client's ``AMQP 0.1.0.0`` header on and authenticates nothing itself.

proton has no type stubs: this module and ``dpsd.amqp.messages`` are the only ones that
import it. Links, sessions and deliveries are handed out as integer ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NewType

from proton import (
    Collector,
    Condition,
    Connection,
    Delivery,
    Described,
    Event,
    Link,
    Terminus,
    Transport,
    symbol,
    ulong,
)

LinkId = NewType("LinkId", int)
SessionId = NewType("SessionId", int)
DeliveryId = NewType("DeliveryId", int)
_ERROR_DESCRIPTOR = ulong(0x1D)  # amqp:error:list
OPEN_ERROR = symbol("com.microsoft:open-error")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    container_id: str = "dpsd"
    max_frame_size: int = 65536
    channel_max: int = 8191
    idle_timeout: float = 240.0
    """Seconds of silence the peer is told it may keep (proton closes after twice that)."""


@dataclass(frozen=True, slots=True)
class AmqpError:
    """An AMQP error: a condition (``amqp:unauthorized-access``) and a description."""

    condition: str
    description: str
    info: tuple[tuple[str, str], ...] = ()


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


class _Ids:
    """Integer ids for proton objects, both ways."""

    def __init__(self) -> None:
        self._next = 0
        self.objects: dict[int, Any] = {}
        self._ids: dict[Any, int] = {}

    def id_of(self, thing: Any) -> int:
        known = self._ids.get(thing)
        if known is None:
            self._next += 1
            known = self._ids[thing] = self._next
            self.objects[known] = thing
        return known

    def has(self, thing: Any) -> bool:
        return thing in self._ids

    def forget(self, known: int) -> None:
        thing = self.objects.pop(known, None)
        if thing is not None:
            self._ids.pop(thing, None)


class ProtonEngine:
    """One server connection's AMQP engine: bytes in, events and bytes out."""

    def __init__(self, settings: EngineSettings) -> None:
        transport = Transport(Transport.SERVER)
        transport.require_auth(False)  # dpsd's own SASL layer ran before
        transport.max_frame_size = settings.max_frame_size
        transport.channel_max = settings.channel_max
        # proton advertises half its local idle timeout and closes after the whole of it.
        transport.idle_timeout = settings.idle_timeout * 2
        connection = Connection()
        connection.container = settings.container_id
        self._collector = Collector()
        connection.collect(self._collector)
        transport.bind(connection)
        self._transport: Any = transport
        self._connection: Any = connection
        self._sessions = _Ids()
        self._links = _Ids()
        self._deliveries = _Ids()
        self._sent = 0

    # --- bytes ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[EngineEvent]:
        view = memoryview(data)
        while view and not self.finished:
            capacity = self._transport.capacity()
            if capacity <= 0:
                return [*self.events(), TransportFailed("the engine takes no more bytes")]
            self._transport.push(bytes(view[:capacity]))
            view = view[capacity:]
        return self.events()

    def data_to_send(self) -> bytes:
        chunks = []
        while (pending := self._transport.pending()) > 0:
            chunks.append(bytes(self._transport.peek(pending)))
            self._transport.pop(pending)
        return b"".join(chunks)

    @property
    def finished(self) -> bool:
        """proton will neither read nor write any more."""
        return bool(self._transport.closed) or self._transport.capacity() < 0

    def tick(self, now: float) -> float:
        """Heartbeats and the idle timeout at ``now`` (seconds); the next deadline, or 0."""
        return float(self._transport.tick(now))

    # --- the connection ---------------------------------------------------------------------

    def open(self, refusal: AmqpError | None = None) -> None:
        """Answer the client's OPEN; a refusal rides in ``com.microsoft:open-error``, as
        the real service sends it, and the connection closes with the same error."""
        if refusal is not None:
            described = Described(
                _ERROR_DESCRIPTOR, [symbol(refusal.condition), refusal.description, {}]
            )
            self._connection.properties = {OPEN_ERROR: described}
        self._connection.open()
        if refusal is not None:
            self.close(refusal)

    def close(self, error: AmqpError | None = None) -> None:
        if error is not None:
            self._connection.condition = _condition(error)
        self._connection.close()

    def begin(self, session: SessionId) -> None:
        self._sessions.objects[session].open()

    def end(self, session: SessionId) -> None:
        found = self._sessions.objects.get(session)
        if found is not None:
            found.close()
            self._sessions.forget(session)

    # --- links ------------------------------------------------------------------------------

    def attach(self, link: LinkId, *, credit: int, max_message_size: int) -> None:
        """Attach echoing the client's source and target; a link dpsd receives on settles
        first and gets ``credit``."""
        found = self._links.objects[link]
        found.source.copy(found.remote_source)
        found.target.copy(found.remote_target)
        found.rcv_settle_mode = Link.RCV_FIRST
        if found.is_receiver:
            found.max_message_size = max_message_size
        found.open()
        if found.is_receiver:
            found.flow(credit)

    def refuse(self, link: LinkId, error: AmqpError) -> None:
        """Attach with null source and target, then detach with ``error`` (AMQP 2.6.3)."""
        found = self._links.objects[link]
        found.source.type = Terminus.UNSPECIFIED
        found.target.type = Terminus.UNSPECIFIED
        found.open()
        found.condition = _condition(error)
        found.close()
        self._links.forget(link)

    def detach(self, link: LinkId) -> None:
        found = self._links.objects.get(link)
        if found is not None:
            found.close()
            self._links.forget(link)

    def credit(self, link: LinkId) -> int:
        found = self._links.objects.get(link)
        return int(found.credit) if found is not None else 0

    def flow(self, link: LinkId, credit: int) -> None:
        self._links.objects[link].flow(credit)

    def send(self, link: LinkId, payload: bytes) -> None:
        """One message, pre-settled unless the client asked for unsettled transfers (it then
        settles them; the disposition ends the delivery here)."""
        found = self._links.objects[link]
        self._sent += 1
        delivery = found.delivery(str(self._sent).encode())
        found.send(payload)
        found.advance()
        if found.remote_snd_settle_mode != Link.SND_UNSETTLED:
            delivery.settle()

    def settle(self, delivery: DeliveryId, rejection: AmqpError | None = None) -> None:
        """Settle a received message ``accepted``, or ``rejected`` with ``rejection``."""
        found = self._deliveries.objects.get(delivery)
        if found is None:
            return
        self._deliveries.forget(delivery)
        if rejection is None:
            found.update(Delivery.ACCEPTED)
        else:
            found.local.condition = _condition(rejection)
            found.update(Delivery.REJECTED)
        found.settle()

    # --- events -----------------------------------------------------------------------------

    def events(self) -> list[EngineEvent]:
        events: list[EngineEvent] = []
        while (event := self._collector.peek()) is not None:
            translated = self._translate(event)
            if translated is not None:
                events.append(translated)
            self._collector.pop()
        return events

    def _translate(self, event: Any) -> EngineEvent | None:
        kind = event.type
        if kind == Event.CONNECTION_REMOTE_OPEN:
            return RemoteOpened(event.connection.remote_hostname)
        if kind == Event.SESSION_REMOTE_OPEN:
            return SessionBegun(SessionId(self._sessions.id_of(event.session)))
        if kind == Event.SESSION_REMOTE_CLOSE:
            return SessionEnded(SessionId(self._sessions.id_of(event.session)))
        if kind == Event.LINK_REMOTE_OPEN:
            return self._attached(event.link)
        if kind in (Event.LINK_REMOTE_CLOSE, Event.LINK_REMOTE_DETACH):
            return LinkDetached(LinkId(self._links.id_of(event.link)))
        if kind == Event.LINK_FLOW and event.link.is_sender:
            return CreditGranted(LinkId(self._links.id_of(event.link)))
        if kind == Event.DELIVERY:
            return self._delivery(event.delivery)
        if kind == Event.CONNECTION_REMOTE_CLOSE:
            return RemoteClosed(_describe(event.connection.remote_condition))
        if kind == Event.TRANSPORT_ERROR:
            return TransportFailed(_describe(event.transport.condition) or "transport error")
        return None

    def _attached(self, link: Any) -> LinkAttached:
        terminus = link.remote_source if link.is_sender else link.remote_target
        address = terminus.address
        return LinkAttached(
            LinkId(self._links.id_of(link)),
            SessionId(self._sessions.id_of(link.session)),
            bool(link.is_sender),
            str(address) if address is not None else None,
        )

    def _delivery(self, delivery: Any) -> EngineEvent | None:
        link = delivery.link
        if link.is_sender:
            if delivery.remote_state or delivery.remote_settled:
                delivery.settle()  # the client settled an unsettled answer
            return None
        if delivery.aborted:
            link.advance()
            delivery.settle()
            return None
        link_id = LinkId(self._links.id_of(link))
        if delivery.partial:
            return TransferGrowing(link_id, int(delivery.pending))
        if not delivery.readable or self._deliveries.has(delivery):
            return None
        payload = bytes(link.recv(delivery.pending) or b"")
        link.advance()
        return TransferArrived(DeliveryId(self._deliveries.id_of(delivery)), link_id, payload)


def _condition(error: AmqpError) -> Any:
    info: Any = {symbol(key): value for key, value in error.info} or None
    return Condition(error.condition, error.description, info)


def _describe(condition: Any) -> str | None:
    if condition is None:
        return None
    return f"{condition.name}: {condition.description}"
