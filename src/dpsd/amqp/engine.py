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

The work done for every frame goes through proton's C binding (``cproton``, the functions
its Python classes call) on the raw sessions, links and deliveries: the Python classes wrap
each object and event anew (several allocations and reference counts each time), which cost
more CPU than the rest of a device's AMQP handling. The rare paths (OPEN, CLOSE, refusals,
rejections) keep the Python classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NewType

from cproton import (
    PN_ACCEPTED,
    PN_CONNECTION_REMOTE_CLOSE,
    PN_CONNECTION_REMOTE_OPEN,
    PN_DELIVERY,
    PN_LINK_FLOW,
    PN_LINK_REMOTE_CLOSE,
    PN_LINK_REMOTE_DETACH,
    PN_LINK_REMOTE_OPEN,
    PN_RCV_FIRST,
    PN_SESSION_REMOTE_CLOSE,
    PN_SESSION_REMOTE_OPEN,
    PN_SND_UNSETTLED,
    PN_TRANSPORT_ERROR,
    isnull,
    pn_collector,
    pn_collector_free,
    pn_collector_peek,
    pn_collector_pop,
    pn_connection,
    pn_connection_collect,
    pn_connection_set_container,
    pn_decref,
    pn_delivery,
    pn_delivery_aborted,
    pn_delivery_link,
    pn_delivery_partial,
    pn_delivery_pending,
    pn_delivery_readable,
    pn_delivery_remote_state,
    pn_delivery_settle,
    pn_delivery_settled,
    pn_delivery_update,
    pn_event_delivery,
    pn_event_link,
    pn_event_session,
    pn_event_type,
    pn_link_advance,
    pn_link_close,
    pn_link_credit,
    pn_link_flow,
    pn_link_is_sender,
    pn_link_open,
    pn_link_recv,
    pn_link_remote_snd_settle_mode,
    pn_link_remote_source,
    pn_link_remote_target,
    pn_link_send,
    pn_link_session,
    pn_link_set_max_message_size,
    pn_link_set_rcv_settle_mode,
    pn_link_source,
    pn_link_target,
    pn_session_close,
    pn_session_open,
    pn_terminus_copy,
    pn_terminus_get_address,
    pn_transport,
    pn_transport_bind,
    pn_transport_capacity,
    pn_transport_closed,
    pn_transport_peek,
    pn_transport_pending,
    pn_transport_pop,
    pn_transport_push,
    pn_transport_require_auth,
    pn_transport_set_channel_max,
    pn_transport_set_idle_timeout,
    pn_transport_set_max_frame,
    pn_transport_set_server,
    pn_transport_tick,
)
from proton import (
    Condition,
    Connection,
    Delivery,
    Described,
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
    """Integer ids for proton's raw objects (C pointers, which compare by address), both
    ways. The connection owns the objects; dpsd forgets them when they end."""

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

    def forget(self, known: int) -> Any:
        thing = self.objects.pop(known, None)
        if thing is not None:
            self._ids.pop(thing, None)
        return thing


class ProtonEngine:
    """One server connection's AMQP engine: bytes in, events and bytes out."""

    def __init__(self, settings: EngineSettings) -> None:
        transport = pn_transport()
        pn_transport_set_server(transport)
        pn_transport_require_auth(transport, False)  # dpsd's own SASL layer ran before
        pn_transport_set_max_frame(transport, settings.max_frame_size)
        pn_transport_set_channel_max(transport, settings.channel_max)
        # proton advertises half its local idle timeout and closes after the whole of it.
        pn_transport_set_idle_timeout(transport, int(settings.idle_timeout * 2 * 1000))
        connection = pn_connection()
        pn_connection_set_container(connection, settings.container_id)
        collector = pn_collector()
        pn_connection_collect(connection, collector)
        pn_transport_bind(transport, connection)
        self._raw_transport: Any = transport
        self._raw_connection: Any = connection
        self._raw_collector: Any = collector
        self._wrapped_connection: Any = None
        self._sessions = _Ids()
        self._links = _Ids()
        self._deliveries = _Ids()
        self._sent = 0

    def __del__(self) -> None:
        """Release the C objects made here (proton frees each once nothing holds it)."""
        pn_decref(self._raw_transport)
        pn_decref(self._raw_connection)
        pn_collector_free(self._raw_collector)

    @property
    def _connection(self) -> Any:
        """proton's Python Connection, for OPEN, CLOSE and their properties and errors."""
        if self._wrapped_connection is None:
            self._wrapped_connection = _PYTHON_CONNECTION.wrap(self._raw_connection)
        return self._wrapped_connection

    # --- bytes ------------------------------------------------------------------------------

    def receive(self, data: bytes) -> list[EngineEvent]:
        transport = self._raw_transport
        view = memoryview(data)
        while view and not self.finished:
            capacity = pn_transport_capacity(transport)
            if capacity <= 0:
                return [*self.events(), TransportFailed("the engine takes no more bytes")]
            pn_transport_push(transport, view[:capacity])
            view = view[capacity:]
        return self.events()

    def data_to_send(self) -> bytes:
        transport = self._raw_transport
        chunks = []
        while (pending := pn_transport_pending(transport)) > 0:
            _, chunk = pn_transport_peek(transport, pending)
            chunks.append(bytes(chunk))
            pn_transport_pop(transport, pending)
        return b"".join(chunks)

    @property
    def finished(self) -> bool:
        """proton will neither read nor write any more."""
        transport = self._raw_transport
        return bool(pn_transport_closed(transport)) or pn_transport_capacity(transport) < 0

    def tick(self, now: float) -> float:
        """Heartbeats and the idle timeout at ``now`` (seconds); the next deadline, or 0."""
        return float(pn_transport_tick(self._raw_transport, int(now * 1000))) / 1000

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
        pn_session_open(self._sessions.objects[session])

    def end(self, session: SessionId) -> None:
        found = self._sessions.forget(session)
        if found is not None:
            pn_session_close(found)

    # --- links ------------------------------------------------------------------------------

    def attach(self, link: LinkId, *, credit: int, max_message_size: int) -> None:
        """Attach echoing the client's source and target; a link dpsd receives on settles
        first and gets ``credit``."""
        found = self._links.objects[link]
        pn_terminus_copy(pn_link_source(found), pn_link_remote_source(found))
        pn_terminus_copy(pn_link_target(found), pn_link_remote_target(found))
        pn_link_set_rcv_settle_mode(found, PN_RCV_FIRST)
        receiving = not pn_link_is_sender(found)
        if receiving:
            pn_link_set_max_message_size(found, max_message_size)
        pn_link_open(found)
        if receiving:
            pn_link_flow(found, credit)

    def refuse(self, link: LinkId, error: AmqpError) -> None:
        """Attach with null source and target, then detach with ``error`` (AMQP 2.6.3)."""
        found = _PYTHON_LINK.wrap(self._links.forget(link))
        found.source.type = Terminus.UNSPECIFIED
        found.target.type = Terminus.UNSPECIFIED
        found.open()
        found.condition = _condition(error)
        found.close()

    def detach(self, link: LinkId) -> None:
        found = self._links.forget(link)
        if found is not None:
            pn_link_close(found)

    def credit(self, link: LinkId) -> int:
        found = self._links.objects.get(link)
        return int(pn_link_credit(found)) if found is not None else 0

    def flow(self, link: LinkId, credit: int) -> None:
        pn_link_flow(self._links.objects[link], credit)

    def send(self, link: LinkId, payload: bytes) -> None:
        """One message, pre-settled unless the client asked for unsettled transfers (it then
        settles them; the disposition ends the delivery here)."""
        found = self._links.objects[link]
        self._sent += 1
        delivery = pn_delivery(found, str(self._sent).encode())
        pn_link_send(found, payload)
        pn_link_advance(found)
        if pn_link_remote_snd_settle_mode(found) != PN_SND_UNSETTLED:
            pn_delivery_settle(delivery)

    def settle(self, delivery: DeliveryId, rejection: AmqpError | None = None) -> None:
        """Settle a received message ``accepted``, or ``rejected`` with ``rejection``."""
        found = self._deliveries.forget(delivery)
        if found is None:
            return
        if rejection is None:
            pn_delivery_update(found, PN_ACCEPTED)
            pn_delivery_settle(found)
            return
        wrapped = _PYTHON_DELIVERY.wrap(found)
        wrapped.local.condition = _condition(rejection)
        wrapped.update(Delivery.REJECTED)
        wrapped.settle()

    # --- events -----------------------------------------------------------------------------

    def events(self) -> list[EngineEvent]:
        """What happened since the last call. proton's collector reports every state change
        (some 26 events in a device's life, most of them dpsd's own doing); only the event
        type is read until one matters."""
        events: list[EngineEvent] = []
        collector = self._raw_collector
        while not isnull(raw := pn_collector_peek(collector)):
            kind = pn_event_type(raw)
            if kind in _WANTED:
                translated = self._translate(kind, raw)
                if translated is not None:
                    events.append(translated)
            pn_collector_pop(collector)
        return events

    def _translate(self, kind: int, raw: Any) -> EngineEvent | None:
        if kind == PN_DELIVERY:
            return self._delivery(pn_event_delivery(raw))
        if kind == PN_LINK_FLOW:
            link = pn_event_link(raw)
            return (
                CreditGranted(LinkId(self._links.id_of(link))) if pn_link_is_sender(link) else None
            )
        if kind == PN_LINK_REMOTE_OPEN:
            return self._attached(pn_event_link(raw))
        if kind in (PN_LINK_REMOTE_CLOSE, PN_LINK_REMOTE_DETACH):
            return LinkDetached(LinkId(self._links.id_of(pn_event_link(raw))))
        if kind == PN_SESSION_REMOTE_OPEN:
            return SessionBegun(SessionId(self._sessions.id_of(pn_event_session(raw))))
        if kind == PN_SESSION_REMOTE_CLOSE:
            return SessionEnded(SessionId(self._sessions.id_of(pn_event_session(raw))))
        if kind == PN_CONNECTION_REMOTE_OPEN:
            return RemoteOpened(self._connection.remote_hostname)
        if kind == PN_CONNECTION_REMOTE_CLOSE:
            return RemoteClosed(_describe(self._connection.remote_condition))
        condition = _PYTHON_TRANSPORT.wrap(self._raw_transport).condition
        return TransportFailed(_describe(condition) or "transport error")

    def _attached(self, link: Any) -> LinkAttached:
        sending = bool(pn_link_is_sender(link))
        terminus = pn_link_remote_source(link) if sending else pn_link_remote_target(link)
        address = pn_terminus_get_address(terminus)
        return LinkAttached(
            LinkId(self._links.id_of(link)),
            SessionId(self._sessions.id_of(pn_link_session(link))),
            sending,
            str(address) if address is not None else None,
        )

    def _delivery(self, delivery: Any) -> EngineEvent | None:
        link = pn_delivery_link(delivery)
        if pn_link_is_sender(link):
            if pn_delivery_remote_state(delivery) or pn_delivery_settled(delivery):
                pn_delivery_settle(delivery)  # the client settled an unsettled answer
            return None
        if pn_delivery_aborted(delivery):
            pn_link_advance(link)
            pn_delivery_settle(delivery)
            return None
        link_id = LinkId(self._links.id_of(link))
        if pn_delivery_partial(delivery):
            return TransferGrowing(link_id, int(pn_delivery_pending(delivery)))
        if not pn_delivery_readable(delivery) or self._deliveries.has(delivery):
            return None
        _, payload = pn_link_recv(link, pn_delivery_pending(delivery))
        pn_link_advance(link)
        return TransferArrived(
            DeliveryId(self._deliveries.id_of(delivery)), link_id, bytes(payload)
        )


# proton's Python classes, for the rare paths (their ``wrap`` has no type hints).
_PYTHON_CONNECTION: Any = Connection
_PYTHON_TRANSPORT: Any = Transport
_PYTHON_LINK: Any = Link
_PYTHON_DELIVERY: Any = Delivery

_WANTED = frozenset(
    (
        PN_DELIVERY,
        PN_LINK_FLOW,
        PN_LINK_REMOTE_OPEN,
        PN_LINK_REMOTE_CLOSE,
        PN_LINK_REMOTE_DETACH,
        PN_SESSION_REMOTE_OPEN,
        PN_SESSION_REMOTE_CLOSE,
        PN_CONNECTION_REMOTE_OPEN,
        PN_CONNECTION_REMOTE_CLOSE,
        PN_TRANSPORT_ERROR,
    )
)


def _condition(error: AmqpError) -> Any:
    info: Any = {symbol(key): value for key, value in error.info} or None
    return Condition(error.condition, error.description, info)


def _describe(condition: Any) -> str | None:
    if condition is None:
        return None
    return f"{condition.name}: {condition.description}"
