"""A device connection on a stream transport (dpsd's TLS, a WebSocket, or plain TCP), without
sockets: admission, bytes answered in order however they come, no task while idle, the
deadlines, flow control and the end."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dpsd.devices.listener import Admission, ConnectionLimits, DeviceListener
from dpsd.telemetry.metrics import Metrics
from tests.log_capture import captured_logs, events


def test_admission_counts_per_address_and_in_all() -> None:
    admission = Admission(ConnectionLimits(max_connections=3, max_connections_per_address=2))
    assert admission.admit("a")
    assert admission.admit("a")
    assert not admission.admit("a")
    assert admission.admit("b")
    assert not admission.admit("c")  # three open in all
    assert not admission.has_room("c")
    admission.release("a")
    assert admission.admit("c")
    admission.release("b")
    assert admission.admit("a")


class EchoConnection:
    """Established by its first bytes; answers bytes with them in brackets, after ``gate``
    opens when there is one; after ``idle`` seconds of silence it says b"bye" and finishes."""

    def __init__(self, gate: asyncio.Event | None = None, idle: float | None = 5.0) -> None:
        self.established = False
        self.finished = False
        self.registration_id: str | None = None
        self.close_reason: str | None = None
        self.gate = gate
        self.idle = idle
        self.received: list[bytes] = []

    def wait_time(self) -> float | None:
        return self.idle

    async def receive(self, data: bytes) -> bytes:
        self.received.append(data)
        if self.gate is not None:
            await self.gate.wait()
        self.established = True
        self.registration_id = "dev-1"
        return b"<" + data + b">"

    def time_passed(self) -> bytes:
        self.finished = True
        self.close_reason = "the device was silent"
        return b"bye"


class FakeTransport(asyncio.Transport):
    """Records what is written; ``backed_up`` is what it says of its write buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.reading = True
        self.closed = asyncio.get_running_loop().create_future()
        self.how: str | None = None
        self.backed_up = 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("10.0.0.7", 4242) if name == "peername" else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self._end("close")

    def abort(self) -> None:
        self._end("abort")

    def _end(self, how: str) -> None:
        if self.how is None:
            self.how = how
            self.closed.set_result(how)

    def is_closing(self) -> bool:
        return self.how is not None

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return self.backed_up


def listener(
    connection: EchoConnection,
    admission: Admission | None = None,
    handshake_timeout: float = 5.0,
    write_timeout: float = 5.0,
    metrics: Metrics | None = None,
) -> DeviceListener:
    return DeviceListener(
        lambda _chain: connection,
        admission or Admission(),
        "mqtt",
        handshake_timeout=handshake_timeout,
        write_timeout=write_timeout,
        metrics=metrics,
    )


def connected(device_listener: DeviceListener) -> tuple[asyncio.Protocol, FakeTransport]:
    protocol = device_listener.connection_protocol()
    transport = FakeTransport()
    protocol.connection_made(transport)
    return protocol, transport


async def answering(
    first: bytes, kind: type[EchoConnection] = EchoConnection
) -> tuple[asyncio.Event, EchoConnection, asyncio.Protocol, FakeTransport]:
    """A connection (of ``kind``) whose answer to ``first`` is under way, held until the
    gate opens."""
    gate = asyncio.Event()
    connection = kind(gate)
    protocol, transport = connected(listener(connection))
    protocol.data_received(first)
    await asyncio.sleep(0)
    return gate, connection, protocol, transport


async def settled() -> None:
    """Until every task but this one is done."""
    while others := asyncio.all_tasks() - {asyncio.current_task()}:
        await asyncio.wait(others)


async def test_bytes_are_answered_and_an_idle_connection_holds_no_task() -> None:
    connection = EchoConnection()
    protocol, transport = connected(listener(connection))
    protocol.data_received(b"hello")
    await settled()
    assert bytes(transport.written) == b"<hello>"
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert transport.reading
    assert transport.how is None


async def test_bytes_that_come_during_an_answer_wait_with_reading_paused_then_go_in_order() -> None:
    gate, connection, protocol, transport = await answering(b"one")
    protocol.data_received(b"two")
    protocol.data_received(b"three")
    assert not transport.reading
    gate.set()
    await settled()
    assert connection.received == [b"one", b"twothree"]
    assert bytes(transport.written) == b"<one><twothree>"
    assert transport.reading


async def test_the_end_of_stream_after_waiting_bytes_answers_them_first() -> None:
    gate, _, protocol, transport = await answering(b"one")
    with captured_logs() as stream:
        protocol.data_received(b"two")
        protocol.eof_received()
        gate.set()
        assert await asyncio.wait_for(transport.closed, 5) == "close"
    assert bytes(transport.written) == b"<one><two>"
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the device closed the connection"
    assert line["registration_id"] == "dev-1"


class InPlaceEchoConnection(EchoConnection):
    """Answers b"ping..." in place, without a coroutine; the rest as EchoConnection."""

    def receive(self, data: bytes) -> bytes | Coroutine[Any, Any, bytes]:  # type: ignore[override]
        if data.startswith(b"ping"):
            self.received.append(data)
            return b"[" + data + b"]"
        return super().receive(data)


async def test_the_end_of_stream_after_bytes_answered_in_place_ends_the_connection() -> None:
    gate, _, protocol, transport = await answering(b"one", InPlaceEchoConnection)
    with captured_logs() as stream:
        protocol.data_received(b"ping")
        protocol.eof_received()
        gate.set()
        assert await asyncio.wait_for(transport.closed, 5) == "close"
    assert bytes(transport.written) == b"<one>[ping]"
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the device closed the connection"


async def test_no_handshake_within_the_deadline_ends_the_connection() -> None:
    connection = EchoConnection(idle=None)
    _, transport = connected(listener(connection, handshake_timeout=0.05))
    with captured_logs() as stream:
        assert await asyncio.wait_for(transport.closed, 5) == "close"
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "no handshake within 0.05 s"
    assert connection.received == []


async def test_silence_after_the_handshake_is_the_protocols_to_answer() -> None:
    connection = EchoConnection(idle=0.05)
    protocol, transport = connected(listener(connection))
    with captured_logs() as stream:
        protocol.data_received(b"hello")
        assert await asyncio.wait_for(transport.closed, 5) == "close"
    assert bytes(transport.written) == b"<hello>bye"
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the device was silent"


async def test_bytes_move_the_silence_deadline() -> None:
    connection = EchoConnection(idle=0.2)
    protocol, transport = connected(listener(connection))
    protocol.data_received(b"hello")
    for _ in range(4):  # 0.4 s in all, never 0.2 s silent
        await asyncio.sleep(0.1)
        protocol.data_received(b"ping")
    assert transport.how is None
    assert await asyncio.wait_for(transport.closed, 5) == "close"
    assert bytes(transport.written).endswith(b"<ping>bye")


async def test_nothing_is_read_while_the_device_does_not_read_what_was_written() -> None:
    connection = EchoConnection()
    protocol, transport = connected(listener(connection))
    protocol.data_received(b"hello")
    await settled()
    protocol.pause_writing()
    protocol.data_received(b"more")
    await settled()
    assert connection.received == [b"hello"]
    assert not transport.reading
    protocol.resume_writing()
    await settled()
    assert connection.received == [b"hello", b"more"]
    assert transport.reading


async def test_a_device_that_reads_nothing_is_dropped_after_the_write_timeout() -> None:
    connection = EchoConnection()
    protocol, transport = connected(listener(connection, write_timeout=0.05))
    protocol.data_received(b"hello")
    await settled()
    transport.backed_up = 1 << 20
    with captured_logs() as stream:
        protocol.pause_writing()
        assert await asyncio.wait_for(transport.closed, 5) == "abort"
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the device read nothing dpsd wrote for 0.05 s"


async def test_a_connection_over_the_limits_is_closed_before_any_byte() -> None:
    admission = Admission(ConnectionLimits(max_connections_per_address=0))
    connection = EchoConnection()
    protocol, transport = connected(listener(connection, admission))
    assert transport.how == "close"
    protocol.data_received(b"hello")
    protocol.connection_lost(None)
    await settled()
    assert connection.received == []
    assert transport.written == b""


async def test_a_lost_connection_is_released_once() -> None:
    admission = Admission(ConnectionLimits(max_connections=1))
    connection = EchoConnection()
    protocol, _ = connected(listener(connection, admission))
    protocol.connection_lost(ConnectionResetError())
    protocol.connection_lost(None)
    assert admission.admit("10.0.0.7")
    assert not admission.admit("10.0.0.8")


async def test_what_the_device_sent_before_it_left_is_still_answered() -> None:
    """A device that sends more while an answer is under way and then leaves: what it sent
    stands (a register goes on), though no answer reaches it."""
    gate, connection, protocol, _ = await answering(b"connect")
    protocol.data_received(b"register")
    protocol.eof_received()
    protocol.connection_lost(None)
    gate.set()
    await settled()
    assert connection.received == [b"connect", b"register"]


async def test_a_last_answer_the_device_has_not_read_yet_is_not_dropped() -> None:
    """The protocol finishes with an answer that leaves the transport's buffer above its
    high-water mark: the connection closes once the device reads it, not before (closing
    with bytes still buffered would abort it, and the answer with it)."""

    class Finishing(EchoConnection):
        async def receive(self, data: bytes) -> bytes:
            self.finished = True
            return b"refused"

    class BackingUp(FakeTransport):
        def write(self, data: bytes | bytearray | memoryview) -> None:
            super().write(data)
            self.backed_up = len(self.written)
            protocol.pause_writing()

    connection = Finishing()
    protocol = listener(connection).connection_protocol()
    transport = BackingUp()
    protocol.connection_made(transport)
    protocol.data_received(b"hello")
    await settled()
    assert not transport.closed.done()
    transport.backed_up = 0
    protocol.resume_writing()
    assert transport.closed.result() == "close"
    assert bytes(transport.written) == b"refused"


Step = tuple[str, bytes]
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("data"), st.binary(min_size=1, max_size=8)),
        st.tuples(st.sampled_from(["yield", "pause_writing", "resume_writing"]), st.just(b"")),
    ),
    max_size=25,
)


async def driven(steps: list[Step], leave: str, gated: bool) -> None:
    """Steps against one connection, then the device leaves (``eof``: its end of stream, then
    the connection lost; ``lost``: lost at once): what it sent is answered, in order, once,
    and the connection is let go exactly once."""
    admission = Admission(ConnectionLimits(max_connections=1))
    gate = asyncio.Event()
    connection = EchoConnection(gate if gated else None)
    protocol, transport = connected(listener(connection, admission))
    sent = bytearray()
    for step, data in steps:
        if step == "data":
            sent += data
            protocol.data_received(data)
        elif step == "yield":
            await asyncio.sleep(0)
        else:
            getattr(protocol, step)()
    if leave == "eof":
        protocol.eof_received()
    protocol.connection_lost(None)
    gate.set()
    await settled()
    assert b"".join(connection.received) == bytes(sent)
    assert transport.how is not None
    assert admission.admit("10.0.0.9")  # released: one may connect again


@settings(max_examples=150, deadline=None)
@given(steps=STEPS, leave=st.sampled_from(["eof", "lost"]), gated=st.booleans())
def test_whatever_comes_in_whatever_order_every_byte_is_answered_once_in_order(
    steps: list[Step], leave: str, gated: bool
) -> None:
    asyncio.run(driven(steps, leave, gated))
