"""The sessions, links and messages of one AMQP connection, sans I/O: which links the
application accepted, the requests it has yet to answer, and the answers waiting for the
client's credit.

Answers go in order on the session's first accepted link towards the client, as far as the
client's credit goes. The client's requests get credit (``receiver_credit``) topped up while
it takes its answers, so a client that stops reading stops being given credit; one that
sends anyway, or leaves more than ``max_backlog`` requests and answers waiting, exceeds a
limit, as do too many sessions or links and messages over ``max_message_size``.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from dpsd.amqp.engine import (
    AmqpError,
    DeliveryId,
    LinkAttached,
    LinkId,
    ProtonEngine,
    SessionId,
    TransferArrived,
)
from dpsd.amqp.messages import (
    MalformedMessage,
    RequestMessage,
    ResponseMessage,
    decode_request,
    encode_response,
)

RESOURCE_LIMIT = "amqp:resource-limit-exceeded"
MESSAGE_SIZE_LIMIT = "amqp:link:message-size-exceeded"
TRANSFER_LIMIT = "amqp:link:transfer-limit-exceeded"


class LimitExceeded(Exception):
    """The client went past a limit: the connection closes with ``error``."""

    def __init__(self, condition: str, description: str) -> None:
        super().__init__(description)
        self.error = AmqpError(condition, description)


@dataclass(frozen=True, slots=True)
class LinkLimits:
    max_sessions: int = 4
    max_links: int = 8
    max_message_size: int = 96 * 1024
    receiver_credit: int = 10
    max_backlog: int = 20


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
class _Link:
    session: SessionId
    sending: bool


class Links:
    def __init__(self, engine: ProtonEngine, limits: LinkLimits) -> None:
        self._engine = engine
        self._limits = limits
        self._sessions: set[SessionId] = set()
        self._sessions_to_begin: list[SessionId] = []
        self._open = False
        self._requested: dict[LinkId, LinkAttached] = {}
        self._accepted: dict[LinkId, _Link] = {}
        self._reply_links: dict[SessionId, LinkId] = {}
        self._answers: dict[SessionId, deque[bytes]] = {}
        self._in_flight: dict[DeliveryId, tuple[LinkId, SessionId]] = {}

    # --- sessions ---------------------------------------------------------------------------

    def open(self) -> None:
        """The connection is open: begin the sessions the client began meanwhile."""
        self._open = True
        for session in self._sessions_to_begin:
            self._engine.begin(session)
        self._sessions_to_begin.clear()

    def session_begun(self, session: SessionId) -> None:
        if len(self._sessions) >= self._limits.max_sessions:
            raise LimitExceeded(RESOURCE_LIMIT, "too many sessions")
        self._sessions.add(session)
        if self._open:
            self._engine.begin(session)
        else:
            self._sessions_to_begin.append(session)

    def session_ended(self, session: SessionId) -> None:
        self._engine.end(session)
        self._sessions.discard(session)
        self._answers.pop(session, None)
        self._reply_links.pop(session, None)

    # --- links ------------------------------------------------------------------------------

    def attached(self, attached: LinkAttached) -> LinkRequested:
        if len(self._accepted) + len(self._requested) >= self._limits.max_links:
            raise LimitExceeded(RESOURCE_LIMIT, "too many links")
        self._requested[attached.link] = attached
        return LinkRequested(attached.link, attached.address, attached.sending)

    def accept(self, link: LinkId) -> None:
        attached = self._requested.pop(link, None)
        if attached is None:
            return
        limits = self._limits
        self._engine.attach(
            link, credit=limits.receiver_credit, max_message_size=limits.max_message_size
        )
        self._accepted[link] = _Link(attached.session, attached.sending)
        if attached.sending and attached.session not in self._reply_links:
            self._reply_links[attached.session] = link
            self._flush(attached.session)

    def refuse(self, link: LinkId, error: AmqpError) -> None:
        if self._requested.pop(link, None) is not None:
            self._engine.refuse(link, error)

    def detached(self, link: LinkId) -> None:
        self._engine.detach(link)
        self._requested.pop(link, None)
        found = self._accepted.pop(link, None)
        if found is None or self._reply_links.get(found.session) != link:
            return
        del self._reply_links[found.session]
        for other, candidate in self._accepted.items():
            if candidate.sending and candidate.session == found.session:
                self._reply_links[found.session] = other
                self._flush(found.session)
                return

    def credit_granted(self, link: LinkId) -> None:
        found = self._accepted.get(link)
        if found is not None:
            self._flush(found.session)

    # --- messages ---------------------------------------------------------------------------

    def growing(self, size: int) -> None:
        if size > self._limits.max_message_size:
            raise LimitExceeded(MESSAGE_SIZE_LIMIT, "the message is too large")

    def arrived(self, transfer: TransferArrived) -> RequestReceived | None:
        """The request for the application, if it is one."""
        link = self._accepted.get(transfer.link)
        if link is None or link.sending:
            self._engine.settle(transfer.delivery, AmqpError("amqp:not-allowed", "not attached"))
            return None
        if self._engine.credit(transfer.link) < 0 or self._backlog >= self._limits.max_backlog:
            raise LimitExceeded(TRANSFER_LIMIT, "no credit left")
        self.growing(len(transfer.payload))
        try:
            message = decode_request(transfer.payload)
        except MalformedMessage as error:
            self._engine.settle(transfer.delivery, AmqpError("amqp:decode-error", str(error)))
            self._top_up(transfer.link)
            return None
        self._in_flight[transfer.delivery] = (transfer.link, link.session)
        return RequestReceived(transfer.delivery, message)

    def respond(self, request: DeliveryId, message: ResponseMessage) -> None:
        """Settle the request ``accepted`` and queue the answer for the client."""
        found = self._in_flight.pop(request, None)
        if found is None:
            return
        link, session = found
        self._engine.settle(request)
        self._answers.setdefault(session, deque()).append(encode_response(message))
        self._flush(session)
        self._top_up(link)

    def reject(self, request: DeliveryId, error: AmqpError) -> None:
        found = self._in_flight.pop(request, None)
        if found is not None:
            self._engine.settle(request, error)
            self._top_up(found[0])

    @property
    def _backlog(self) -> int:
        """Requests not answered yet, and answers the client has not taken yet."""
        return len(self._in_flight) + sum(len(queue) for queue in self._answers.values())

    def _flush(self, session: SessionId) -> None:
        link = self._reply_links.get(session)
        queue = self._answers.get(session)
        while link is not None and queue and self._engine.credit(link) > 0:
            self._engine.send(link, queue.popleft())

    def _top_up(self, link: LinkId) -> None:
        """More credit for the client's requests while it takes its answers."""
        wanted = self._limits.receiver_credit
        if link not in self._accepted or self._backlog >= self._limits.max_backlog:
            return
        credit = self._engine.credit(link)
        if credit <= wanted // 2:
            self._engine.flow(link, wanted - credit)
