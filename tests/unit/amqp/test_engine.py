"""dpsd's AMQP engine against proton's client engine: what a device's connection needs beyond
the common exchange (messages over several frames both ways, unsettled answers, a client
that leaves link by link)."""

from __future__ import annotations

from typing import Any

from proton import Link

from dpsd.amqp.connection import AmqpConnection, AmqpLimits, State
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
