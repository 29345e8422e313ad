"""dpsd's AMQP engine against proton's client engine: what a device's connection needs beyond
the common exchange (messages over several frames both ways, unsettled answers, a client
that leaves link by link)."""

from __future__ import annotations

import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from proton import Link

from dpsd.amqp import types
from dpsd.amqp.codec import AMQP_HEADER
from dpsd.amqp.connection import AmqpConnection, AmqpLimits, Closed, State
from dpsd.amqp.engine import EngineSettings
from dpsd.amqp.links import RequestReceived
from dpsd.amqp.messages import ResponseMessage
from tests.amqp_peer import REGISTER, ProtonPeer
from tests.unit.amqp.test_connection import (
    ADDRESS,
    PASSWORD,
    USER,
    Application,
    connected,
    run,
)
from tests.unit.support import FAST


class LargeAnswers(Application):
    """Answers every request with ``size`` bytes."""

    size = 5000

    def handle(self, events: list[Any]) -> None:
        for event in events:
            self.events.append(event)
            if isinstance(event, RequestReceived):
                answer = ResponseMessage(b"a" * self.size, event.message.correlation_id)
                self.connection.respond(event.request, answer)
            else:
                self._decide(event)


def test_a_request_over_several_frames_arrives_whole() -> None:
    small_frames = AmqpLimits(engine=EngineSettings(max_frame_size=512))
    peer, connection, app = connected(limits=small_frames)
    body = b'{"registrationId":"dev-1","payload":"' + b"p" * 3000 + b'"}'
    peer.request(REGISTER, body, correlation_id="c-1")
    run(peer, connection, app)
    (request,) = app.of(RequestReceived)
    assert request.message.body == body
    assert [message.correlation_id for message in peer.messages] == ["c-1"]


def test_an_answer_over_the_clients_frame_size_goes_in_several_frames() -> None:
    peer = ProtonPeer(USER, PASSWORD)
    peer.transport.max_frame_size = 512
    peer.open_links(f"amqps://localhost/{ADDRESS}")
    connection = AmqpConnection()
    app = LargeAnswers(connection)
    run(peer, connection, app)
    peer.request(REGISTER, b"{}", correlation_id="c-2")
    run(peer, connection, app)
    (answer,) = peer.messages
    assert bytes(answer.body) == b"a" * LargeAnswers.size
    assert answer.correlation_id == "c-2"


def test_unsettled_answers_when_the_client_asks_for_them() -> None:
    peer = ProtonPeer(USER, PASSWORD)
    peer.open_links(f"amqps://localhost/{ADDRESS}")
    peer.receiver.snd_settle_mode = Link.SND_UNSETTLED
    connection = AmqpConnection()
    app = Application(connection)
    run(peer, connection, app)
    unsettled: list[bool] = []
    original = peer._on

    def record(event: Any) -> None:
        delivery = getattr(event, "delivery", None)
        if delivery is not None and not delivery.link.is_sender and delivery.readable:
            unsettled.append(not delivery.settled)
        original(event)

    peer._on = record  # type: ignore[method-assign]
    for number in range(3):
        peer.request(REGISTER, b"{}", correlation_id=f"c-{number}")
        run(peer, connection, app)
    assert [message.correlation_id for message in peer.messages] == ["c-0", "c-1", "c-2"]
    assert unsettled == [True, True, True]
    assert connection.state is State.OPEN


def test_a_client_leaving_link_by_link_is_answered_at_each_step() -> None:
    peer, connection, app = connected()
    peer.sender.close()
    peer.receiver.close()
    run(peer, connection, app)
    assert peer.sender.state & Link.REMOTE_CLOSED
    assert peer.receiver.state & Link.REMOTE_CLOSED
    peer.session.close()
    run(peer, connection, app)
    assert peer.session.state & Link.REMOTE_CLOSED
    peer.connection.close()
    run(peer, connection, app)
    assert peer.connection.state & Link.REMOTE_CLOSED
    assert connection.closed


def test_a_new_session_after_the_first_ended_gets_new_links() -> None:
    peer, connection, app = connected()
    peer.session.close()
    run(peer, connection, app)
    peer.session = peer.connection.session()
    peer.session.open()
    peer.open_links(f"amqps://localhost/{ADDRESS}")
    run(peer, connection, app)
    peer.request(REGISTER, b"{}", correlation_id="again")
    run(peer, connection, app)
    assert [message.correlation_id for message in peer.messages] == ["again"]


# --- well-framed nonsense -------------------------------------------------------------------

field_values = st.one_of(
    st.none().map(lambda _: types.NULL),
    st.booleans().map(types.boolean),
    st.integers(0, 2**32 - 1).map(types.uint),
    st.integers(0, 5).map(types.uint),
    st.integers(0, 2**64 - 1).map(types.ulong),
    st.text(max_size=20).map(types.string),
    st.sampled_from([ADDRESS, f"amqps://localhost/{ADDRESS}"]).map(types.string),
    st.binary(max_size=20).map(types.binary),
    st.sampled_from(["amqp:x", "a"]).map(types.symbol),
    st.builds(
        types.described,
        st.sampled_from([0x1D, 0x24, 0x25, 0x28, 0x29, 0x99]),
        st.lists(st.just(types.string(ADDRESS)), max_size=2).map(
            lambda items: types.list_of(*items)
        ),
    ),
)


@st.composite
def performatives(draw: st.DrawFn) -> bytes:
    """A well-framed performative (ATTACH to CLOSE, or an unknown one) with any fields, on
    channel 0 or 1, a TRANSFER sometimes with a payload."""
    code = draw(st.sampled_from([0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x30]))
    fields = draw(st.lists(field_values, max_size=12))
    payload = draw(st.binary(max_size=40)) if code == 0x14 else b""
    body = types.described(code, types.list_of(*fields)) + payload
    channel = draw(st.integers(0, 1))
    return struct.pack(">IBBH", 8 + len(body), 2, 0, channel) + body


small = st.integers(0, 3).map(types.uint)
flags = st.booleans().map(types.boolean)
terminus = st.sampled_from([0x28, 0x29]).map(
    lambda code: types.described(code, types.list_of(types.string(ADDRESS)))
)
PLAUSIBLE = {  # each performative's fields in the types they should have, values at random
    0x12: [st.just(types.string("link")), small, flags, small, small, terminus, terminus],
    0x13: [small, small, small, small, small, small, small, small, flags, flags],
    0x14: [small, small, st.just(types.binary(b"t")), small, flags, flags],
    0x15: [flags, small, small, flags, st.just(types.described(0x24, types.list_of()))],
    0x16: [small, flags],
    0x17: [],
}


@st.composite
def plausible_performatives(draw: st.DrawFn) -> bytes:
    """A performative whose fields have the right types and any values."""
    code = draw(st.sampled_from(sorted(PLAUSIBLE)))
    fields = [draw(strategy) for strategy in PLAUSIBLE[code]]
    payload = draw(st.binary(max_size=40)) if code == 0x14 else b""
    return framed(types.described(code, types.list_of(*fields)) + payload)


OPEN = types.described(0x10, types.list_of(types.string("fuzz")))
BEGIN = types.described(0x11, types.list_of(types.NULL, types.uint(0), types.uint(100)))


def framed(body: bytes, channel: int = 0) -> bytes:
    return struct.pack(">IBBH", 8 + len(body), 2, 0, channel) + body


@FAST
@given(st.lists(performatives() | plausible_performatives(), max_size=12))
def test_any_performatives_after_open_end_in_a_clean_close_or_a_wait(frames: list[bytes]) -> None:
    connection = AmqpConnection()
    app = Application(connection)
    start = AMQP_HEADER + framed(OPEN) + framed(BEGIN)
    for data in [start, *frames]:
        app.handle(connection.receive_data(data))
        connection.data_to_send()
        connection.tick(100.0)
    assert all(not isinstance(event, Closed) for event in app.events[:-1])


def test_a_drain_is_answered_with_the_credit_used_up() -> None:
    peer, connection, app = connected()
    peer.receiver.drain(0)  # the credit it gave (10), drained
    run(peer, connection, app)
    assert not peer.receiver.draining()
    assert peer.receiver.credit == 0
    peer.receiver.flow(3)
    peer.request(REGISTER, b"{}", correlation_id="after the drain")
    run(peer, connection, app)
    assert [message.correlation_id for message in peer.messages] == ["after the drain"]


def test_answers_waiting_go_before_a_drain_is_answered() -> None:
    peer, connection, app = connected()
    peer.request(REGISTER, b"{}", correlation_id="before the drain")
    peer.receiver.drain(0)
    run(peer, connection, app)
    assert [message.correlation_id for message in peer.messages] == ["before the drain"]
    assert not peer.receiver.draining()


@FAST
@given(st.integers(min_value=1, max_value=40))
def test_bytes_in_any_pieces_read_as_whole(piece: int) -> None:
    peer = ProtonPeer(USER, PASSWORD)
    peer.open_links(f"amqps://localhost/{ADDRESS}")
    connection = AmqpConnection()
    app = Application(connection)
    for _ in range(50):
        outgoing = peer.outgoing()
        for start in range(0, len(outgoing), piece):
            app.handle(connection.receive_data(outgoing[start : start + piece]))
        answer = connection.data_to_send()
        peer.incoming(answer)
        if not outgoing and not answer:
            break
        if connection.state is State.OPEN and not peer.messages and not app.answered:
            peer.request(REGISTER, b"{}", correlation_id="in pieces")
    assert [message.correlation_id for message in peer.messages] == ["in pieces"]
