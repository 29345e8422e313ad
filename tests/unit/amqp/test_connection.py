"""The per-connection state machine, driven with bytes only: a proton client engine in memory
plays the device, and a small application decides as the handlers would."""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from proton import Condition, Delivery, Message

from dpsd.amqp.codec import (
    AMQP_HEADER,
    SASL_HEADER,
    SaslCode,
    SaslInit,
    SaslMechanisms,
    SaslOutcome,
    encode_frame,
    read_frame,
)
from dpsd.amqp.connection import (
    AmqpConnection,
    AmqpLimits,
    Closed,
    Event,
    OpenRequested,
    SaslEvidenceReceived,
    State,
)
from dpsd.amqp.engine import AmqpError
from dpsd.amqp.links import LinkLimits, LinkRequested, RequestReceived
from dpsd.amqp.messages import ResponseMessage
from dpsd.amqp.sasl import PlainCredentials
from tests.amqp_peer import POLL, REGISTER, ProtonPeer
from tests.unit.support import FAST

ADDRESS = "0ne00000001/registrations/dev-1"
USER = ADDRESS
PASSWORD = "SharedAccessSignature sr=0ne00000001%2Fregistrations%2Fdev-1&sig=x&se=1"


@dataclass
class Application:
    """Accepts the PLAIN user USER, links on ADDRESS, and answers each request with its
    number; records every event."""

    connection: AmqpConnection
    respond: bool = True
    events: list[Event] = field(default_factory=list)
    answered: int = 0

    def handle(self, events: list[Event]) -> None:
        for event in events:
            self.events.append(event)
            self._decide(event)

    def _decide(self, event: Event) -> None:
        connection = self.connection
        match event:
            case SaslEvidenceReceived(evidence=PlainCredentials(authcid=user)):
                if user == USER:
                    self.handle(connection.accept_sasl())
                else:
                    connection.refuse_sasl()
            case OpenRequested():
                connection.accept_open()
            case LinkRequested(link=link, address=address):
                if address is not None and address.endswith(ADDRESS):
                    connection.accept_link(link)
                else:
                    connection.refuse_link(link, AmqpError("amqp:unauthorized-access", "{}"))
            case RequestReceived(request=request, message=message) if self.respond:
                self.answered += 1
                body = json.dumps({"n": self.answered}).encode()
                answer = ResponseMessage(body, message.correlation_id, {"retry-after": "3"})
                connection.respond(request, answer)

    def of(self, kind: type[Any]) -> list[Any]:
        return [event for event in self.events if isinstance(event, kind)]


def run(peer: ProtonPeer, connection: AmqpConnection, app: Application) -> None:
    """Move bytes both ways until neither side has more to say."""
    for _ in range(50):
        outgoing = peer.outgoing()
        if outgoing:
            app.handle(connection.receive_data(outgoing))
        answer = connection.data_to_send()
        peer.incoming(answer)
        if not outgoing and not answer:
            return
    raise AssertionError("the exchange did not settle")


def connected(
    *, limits: AmqpLimits | None = None, credit: int = 10, respond: bool = True
) -> tuple[ProtonPeer, AmqpConnection, Application]:
    peer = ProtonPeer(USER, PASSWORD)
    peer.open_links(f"amqps://localhost/{ADDRESS}", credit=credit)
    connection = AmqpConnection(limits)
    app = Application(connection, respond=respond)
    run(peer, connection, app)
    assert connection.state is State.OPEN
    return peer, connection, app


def test_sasl_plain_then_open_links_and_requests() -> None:
    peer, connection, app = connected()
    (evidence,) = app.of(SaslEvidenceReceived)
    assert evidence.evidence == PlainCredentials("", USER, PASSWORD, None)
    assert [(e.address, e.sending) for e in app.of(LinkRequested)] == [
        (f"amqps://localhost/{ADDRESS}", False),
        (f"amqps://localhost/{ADDRESS}", True),
    ]
    # Attaches echo the client's addresses.
    assert [(link.remote_source.address, link.remote_target.address) for link in peer.attached] == [
        (None, f"amqps://localhost/{ADDRESS}"),
        (f"amqps://localhost/{ADDRESS}", None),
    ]
    correlation = str(uuid.uuid4())
    tag = peer.request(REGISTER, b'{"registrationId":"dev-1"}', correlation_id=correlation)
    run(peer, connection, app)
    (request,) = app.of(RequestReceived)
    assert request.message.correlation_id == correlation
    assert request.message.application_properties == {"iotdps-operation-type": REGISTER}
    assert request.message.body == b'{"registrationId":"dev-1"}'
    (answer,) = peer.messages
    assert answer.correlation_id == correlation
    assert bytes(answer.body) == b'{"n": 1}'
    assert answer.properties == {"retry-after": "3"}
    assert peer.outcomes[tag].remote_state == 36  # accepted


def test_answers_keep_the_correlation_id_type_and_order() -> None:
    peer, connection, app = connected()
    identifiers: list[Any] = [uuid.uuid4(), "text", b"bytes", None]
    for identifier in identifiers:
        peer.request(POLL, "", correlation_id=identifier, operation_id="4.x")
    run(peer, connection, app)
    assert [message.correlation_id for message in peer.messages] == identifiers
    assert [json.loads(bytes(m.body))["n"] for m in peer.messages] == [1, 2, 3, 4]
    assert isinstance(app.of(RequestReceived)[3].message.body, str)


def test_answers_wait_for_the_clients_credit() -> None:
    peer, connection, app = connected(credit=0)
    peer.request(REGISTER, b"{}")
    peer.request(REGISTER, b"{}")
    run(peer, connection, app)
    assert app.answered == 2
    assert peer.messages == []
    peer.receiver.flow(1)
    run(peer, connection, app)
    assert len(peer.messages) == 1
    peer.receiver.flow(5)
    run(peer, connection, app)
    assert len(peer.messages) == 2


def test_the_clients_credit_is_topped_up() -> None:
    peer, connection, app = connected()
    for _ in range(25):
        peer.request(REGISTER, b"{}")
        run(peer, connection, app)
    assert len(peer.messages) == 25
    assert not connection.closed


def test_a_rejected_request_carries_the_error() -> None:
    peer, connection, app = connected(respond=False)
    tag = peer.request(POLL, "")
    run(peer, connection, app)
    (request,) = app.of(RequestReceived)
    info = (("retry-after", "5"), ("Retry-After", "5"))
    connection.reject(
        request.request, AmqpError("amqp:internal-error", '{"errorCode":500000}', info)
    )
    run(peer, connection, app)
    outcome = peer.outcomes[tag]
    assert outcome.remote_state == 37  # rejected
    condition = outcome.remote.condition
    assert (condition.name, condition.description) == (
        "amqp:internal-error",
        '{"errorCode":500000}',
    )
    assert dict(condition.info) == {"retry-after": "5", "Retry-After": "5"}
    assert peer.messages == []


def test_a_link_for_another_address_is_refused_with_null_termini() -> None:
    peer, connection, app = connected()
    stranger = peer.session.sender("s2")
    stranger.target.address = "0ne00000001/registrations/dev-2"
    stranger.open()
    run(peer, connection, app)
    link = peer.attached[-1]
    assert link.remote_target.address is None
    assert link.remote_condition == Condition("amqp:unauthorized-access", "{}")
    assert not connection.closed


def test_without_sasl_the_open_is_the_applications_call() -> None:
    peer = ProtonPeer()
    connection = AmqpConnection()
    events = connection.receive_data(peer.outgoing())
    assert [type(event) for event in events] == [OpenRequested]
    assert connection.state is State.OPENING
    connection.refuse_open(AmqpError("amqp:unauthorized-access", '{"errorCode":401002}'))
    peer.incoming(connection.data_to_send())
    assert connection.closed
    assert peer.connection.remote_condition.description == '{"errorCode":401002}'
    error = peer.connection.remote_properties["com.microsoft:open-error"]
    assert error.value[:2] == ["amqp:unauthorized-access", '{"errorCode":401002}']


def test_a_refused_sasl_closes_after_the_auth_outcome() -> None:
    connection = AmqpConnection()
    init = encode_frame(SaslInit("PLAIN", b"\x00someone\x00pw"))
    events = connection.receive_data(SASL_HEADER + init)
    assert isinstance(events[0], SaslEvidenceReceived)
    connection.refuse_sasl()
    sent = connection.data_to_send()
    assert sent.startswith(SASL_HEADER)
    mechanisms, used = read_frame(sent[8:], 512)
    assert mechanisms == SaslMechanisms(("PLAIN", "TPM"))
    assert read_frame(sent[8 + used :], 512)[0] == SaslOutcome(SaslCode.AUTH)
    assert connection.closed
    assert connection.receive_data(AMQP_HEADER) == []


def test_bytes_sent_before_the_sasl_decision_wait_for_it() -> None:
    connection = AmqpConnection()
    peer = ProtonPeer()
    pipelined = encode_frame(SaslInit("PLAIN", f"\x00{USER}\x00pw".encode())) + peer.outgoing()
    events = connection.receive_data(SASL_HEADER + pipelined)
    assert [type(event) for event in events] == [SaslEvidenceReceived]
    assert [type(event) for event in connection.accept_sasl()] == [OpenRequested]


def test_a_heartbeat_is_sent_when_the_client_asks_for_one() -> None:
    peer = ProtonPeer(USER, PASSWORD, idle_timeout=2)
    connection = AmqpConnection()
    run(peer, connection, Application(connection))
    deadline = connection.tick(100.0)
    assert deadline is not None
    assert deadline <= 101.0
    connection.tick(101.0)
    assert connection.data_to_send() == b"\x00\x00\x00\x08\x02\x00\x00\x00"


def test_a_silent_client_is_closed_after_the_idle_timeout() -> None:
    peer = ProtonPeer(USER, PASSWORD)
    limits = AmqpLimits()
    connection = AmqpConnection(limits)
    run(peer, connection, Application(connection))
    connection.tick(1000.0)
    connection.tick(1000.0 + limits.engine.idle_timeout * 2 + 1)
    assert connection.closed
    peer.incoming(connection.data_to_send())
    assert peer.connection.remote_condition.name == "amqp:resource-limit-exceeded"


# --- hostile input --------------------------------------------------------------------------


def closed_with(connection: AmqpConnection, data: bytes) -> str:
    events = connection.receive_data(data)
    assert connection.closed
    assert isinstance(events[-1], Closed)
    return events[-1].reason


def test_garbage_instead_of_a_header_gets_the_sasl_header_and_a_close() -> None:
    connection = AmqpConnection()
    assert "not an AMQP" in closed_with(connection, b"GET / HTTP/1.1\r\n")
    assert connection.data_to_send() == SASL_HEADER


def test_an_unsupported_protocol_header_is_answered_and_closed() -> None:
    connection = AmqpConnection()
    assert "unsupported" in closed_with(connection, b"AMQP\x02\x01\x00\x00")
    assert connection.data_to_send() == SASL_HEADER


def test_garbage_after_the_sasl_header_closes() -> None:
    assert "SASL" in closed_with(AmqpConnection(), SASL_HEADER + b"\x00\x00\x00\x10garbage!")


def test_an_oversized_sasl_frame_closes() -> None:
    oversized = struct.pack(">IBBH", 1 << 20, 2, 1, 0)
    assert "exceeds" in closed_with(AmqpConnection(), SASL_HEADER + oversized)


def test_too_many_bytes_waiting_for_a_sasl_decision_close() -> None:
    connection = AmqpConnection(AmqpLimits(max_buffered=100))
    init = encode_frame(SaslInit("PLAIN", b"\x00u\x00p"))
    connection.receive_data(SASL_HEADER + init)
    assert "too many bytes" in closed_with(connection, b"\x00" * 200)


def test_something_other_than_amqp_after_sasl_closes() -> None:
    connection = AmqpConnection()
    connection.receive_data(SASL_HEADER + encode_frame(SaslInit("PLAIN", b"\x00u\x00p")))
    connection.accept_sasl()
    connection.data_to_send()
    assert "AMQP header" in closed_with(connection, SASL_HEADER)
    assert connection.data_to_send() == AMQP_HEADER


def test_garbage_after_the_amqp_header_closes_with_a_framing_error() -> None:
    connection = AmqpConnection()
    closed_with(connection, AMQP_HEADER + b"\x00\x00\x00\x0c\x07\x00\x00\x00garbage")
    assert b"framing-error" in connection.data_to_send()


def test_a_frame_over_the_max_frame_size_closes() -> None:
    connection = AmqpConnection()
    closed_with(connection, AMQP_HEADER + struct.pack(">IBBH", 1 << 20, 2, 0, 0))


def test_too_many_links_close() -> None:
    peer, connection, app = connected(limits=AmqpLimits(links=LinkLimits(max_links=3)))
    for index in range(2):
        peer.session.sender(f"extra-{index}").open()
    run(peer, connection, app)
    assert connection.closed
    assert peer.connection.remote_condition.name == "amqp:resource-limit-exceeded"


def test_too_many_sessions_close() -> None:
    peer, connection, app = connected(limits=AmqpLimits(links=LinkLimits(max_sessions=1)))
    peer.connection.session().open()
    run(peer, connection, app)
    assert connection.closed


def test_a_message_over_the_limit_closes() -> None:
    peer, connection, app = connected(limits=AmqpLimits(links=LinkLimits(max_message_size=1000)))
    peer.request(REGISTER, b"x" * 5000)
    run(peer, connection, app)
    assert connection.closed
    assert peer.connection.remote_condition.name == "amqp:link:message-size-exceeded"


def transfer(handle: int, delivery_id: int, payload: bytes) -> bytes:
    """A raw TRANSFER frame on channel 0, as a client that ignores credit would send it."""
    tag = str(delivery_id).encode()
    fields = (
        b"\x70" + handle.to_bytes(4, "big")
        + b"\x70" + delivery_id.to_bytes(4, "big")
        + b"\xa0" + bytes([len(tag)]) + tag
        + b"\x70" + bytes(4)
    )  # fmt: skip
    body = b"\x00\x53\x14\xc0" + bytes([len(fields) + 1, 4]) + fields + payload
    return struct.pack(">IBBH", 8 + len(body), 2, 0, 0) + body


def test_requests_beyond_the_credit_given_close() -> None:
    _, connection, _ = connected(
        limits=AmqpLimits(links=LinkLimits(receiver_credit=2, max_backlog=4))
    )
    message = bytes(Message(body="", properties={"iotdps-operation-type": POLL}).encode())
    flood = b"".join(transfer(0, number, message) for number in range(10))
    events = connection.receive_data(flood)
    assert connection.closed
    assert "credit" in events[-1].reason


def test_garbage_for_a_message_is_rejected_as_a_decode_error() -> None:
    peer, connection, app = connected()
    peer.sender.delivery("garbage")
    peer.sender.send(b"\x00\x53\x77\xff")
    peer.sender.advance()
    run(peer, connection, app)
    assert app.of(RequestReceived) == []
    outcome = peer.outcomes["garbage"]
    assert outcome.remote_state == Delivery.REJECTED
    assert outcome.remote.condition.name == "amqp:decode-error"
    assert connection.state is State.OPEN


@st.composite
def prefixed_bytes(draw: st.DrawFn) -> bytes:
    plain = encode_frame(SaslInit("PLAIN", f"\x00{USER}\x00pw".encode()))
    prefix = draw(
        st.sampled_from([b"", SASL_HEADER, AMQP_HEADER, SASL_HEADER + plain + AMQP_HEADER])
    )
    return prefix + draw(st.binary(max_size=400))


@FAST
@given(prefixed_bytes(), st.integers(min_value=1, max_value=64))
def test_any_bytes_end_in_a_clean_close_or_a_wait(data: bytes, chunk: int) -> None:
    connection = AmqpConnection(AmqpLimits(max_buffered=256))
    app = Application(connection)
    for start in range(0, len(data), chunk):
        app.handle(connection.receive_data(data[start : start + chunk]))
        connection.data_to_send()
        connection.tick(float(start))
    assert all(not isinstance(event, Closed) for event in app.events[:-1])
