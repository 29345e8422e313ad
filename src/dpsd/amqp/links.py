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

from dataclasses import dataclass

from dpsd.amqp.engine import (
    AmqpError,
    DeliveryId,
    Engine,
    LinkAttached,
    LinkId,
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


class Links:
    """What it knows of sessions and links it asks of the engine, which keeps them anyway;
    the queues are made only while they hold something: every connected device keeps one."""

    __slots__ = ("_answers", "_engine", "_in_flight", "_limits", "_open")

    def __init__(self, engine: Engine, limits: LinkLimits) -> None:
        self._engine = engine
        self._limits = limits
        self._open = False
        self._answers: dict[SessionId, list[bytes]] | None = None
        self._in_flight: dict[DeliveryId, tuple[LinkId, SessionId]] | None = None

    # --- sessions ---------------------------------------------------------------------------

    def open(self) -> None:
        """The connection is open: begin the sessions the client began meanwhile."""
        self._open = True
        for session in self._engine.sessions():
            self._engine.begin(session)

    def session_begun(self, session: SessionId) -> None:
        if len(self._engine.sessions()) > self._limits.max_sessions:
            raise LimitExceeded(RESOURCE_LIMIT, "too many sessions")
        if self._open:
            self._engine.begin(session)

    def session_ended(self, session: SessionId) -> None:
        self._engine.end(session)
        if self._answers is not None:
            self._answers.pop(session, None)

    # --- links ------------------------------------------------------------------------------

    def attached(self, attached: LinkAttached) -> LinkRequested:
        if self._engine.link_count() > self._limits.max_links:
            raise LimitExceeded(RESOURCE_LIMIT, "too many links")
        return LinkRequested(attached.link, attached.address, attached.sending)

    def accept(self, link: LinkId) -> None:
        state = self._engine.link_state(link)
        if state is None or state.answered:
            return
        limits = self._limits
        self._engine.attach(
            link, credit=limits.receiver_credit, max_message_size=limits.max_message_size
        )
        if state.sending:
            self._flush(state.session)

    def refuse(self, link: LinkId, error: AmqpError) -> None:
        state = self._engine.link_state(link)
        if state is not None and not state.answered:
            self._engine.refuse(link, error)

    def detached(self, link: LinkId) -> None:
        state = self._engine.link_state(link)
        self._engine.detach(link)
        if state is not None and state.sending and state.answered:
            self._flush(state.session)  # on the session's next link towards the client

    def credit_granted(self, link: LinkId) -> None:
        state = self._engine.link_state(link)
        if state is not None and state.answered:
            self._flush(state.session)

    # --- messages ---------------------------------------------------------------------------

    def growing(self, size: int) -> None:
        if size > self._limits.max_message_size:
            raise LimitExceeded(MESSAGE_SIZE_LIMIT, "the message is too large")

    def arrived(self, transfer: TransferArrived) -> RequestReceived | None:
        """The request for the application, if it is one."""
        state = self._engine.link_state(transfer.link)
        if state is None or not state.answered or state.sending:
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
        if self._in_flight is None:
            self._in_flight = {}
        self._in_flight[transfer.delivery] = (transfer.link, state.session)
        return RequestReceived(transfer.delivery, message)

    def respond(self, request: DeliveryId, message: ResponseMessage) -> None:
        """Settle the request ``accepted`` and queue the answer for the client."""
        found = self._answered(request)
        if found is None:
            return
        link, session = found
        self._engine.settle(request)
        if self._answers is None:
            self._answers = {}
        self._answers.setdefault(session, []).append(encode_response(message))
        self._flush(session)
        self._top_up(link)

    def reject(self, request: DeliveryId, error: AmqpError) -> None:
        found = self._answered(request)
        if found is not None:
            self._engine.settle(request, error)
            self._top_up(found[0])

    def _answered(self, request: DeliveryId) -> tuple[LinkId, SessionId] | None:
        if self._in_flight is None:
            return None
        found = self._in_flight.pop(request, None)
        if not self._in_flight:
            self._in_flight = None
        return found

    @property
    def _backlog(self) -> int:
        """Requests not answered yet, and answers the client has not taken yet."""
        in_flight = len(self._in_flight) if self._in_flight else 0
        answers = self._answers or {}
        return in_flight + sum(len(queue) for queue in answers.values())

    def _flush(self, session: SessionId) -> None:
        """Answers go on the session's first accepted link towards the client."""
        queue = self._answers.get(session) if self._answers else None
        if not queue:
            return
        link = self._engine.first_sending_link(session)
        while link is not None and queue and self._engine.credit(link) > 0:
            self._engine.send(link, queue.pop(0))
        if not queue and self._answers is not None:
            del self._answers[session]
            if not self._answers:
                self._answers = None

    def _top_up(self, link: LinkId) -> None:
        """More credit for the client's requests while it takes its answers."""
        wanted = self._limits.receiver_credit
        state = self._engine.link_state(link)
        if state is None or not state.answered or self._backlog >= self._limits.max_backlog:
            return
        credit = self._engine.credit(link)
        if credit <= wanted // 2:
            self._engine.flow(link, wanted - credit)
