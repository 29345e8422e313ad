"""The shell shared by the device edges, without sockets: admission, the handshake deadline,
protocol waits, and WebSocket dispatch by subprotocol."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from dpsd.devices.listener import (
    Admission,
    ConnectionLimits,
    DeviceListener,
    WebSocketDispatch,
)
from dpsd.telemetry.metrics import Metrics
from tests.log_capture import captured_logs, events


def test_admission_counts_per_address_and_in_all() -> None:
    admission = Admission(ConnectionLimits(max_connections=3, max_connections_per_address=2))
    assert admission.admit("a")
    assert admission.admit("a")
    assert not admission.admit("a")
    assert admission.admit("b")
    assert not admission.admit("c")  # three open in all
    admission.release("a")
    assert admission.admit("c")
    admission.release("b")
    assert admission.admit("a")


class ScriptedConnection:
    """A protocol that finishes its handshake on b"hello" and answers b"ping" with b"pong";
    after the handshake it waits ``idle`` seconds, then sends b"beat" once and finishes."""

    def __init__(self, idle: float = 0.0) -> None:
        self.established = False
        self.finished = False
        self.idle = idle
        self.registration_id: str | None = None
        self.close_reason: str | None = None

    def wait_time(self) -> float | None:
        return self.idle

    async def receive(self, data: bytes) -> bytes:
        if data == b"hello":
            self.established = True
            self.registration_id = "dev-1"
            return b"welcome"
        return b"pong" if data == b"ping" else b""

    def time_passed(self) -> bytes:
        self.finished = True
        self.close_reason = "the device was idle"
        return b"beat"


class WebSocketPeer:
    """An ASGI WebSocket client scripted with the messages it sends."""

    def __init__(self, subprotocols: list[str], messages: list[bytes]) -> None:
        self.scope: dict[str, Any] = {
            "type": "websocket",
            "subprotocols": subprotocols,
            "client": ("10.0.0.1", 1),
        }
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
        for message in messages:
            self.incoming.put_nowait({"type": "websocket.receive", "bytes": message})
        self.sent: list[dict[str, Any]] = []

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1000})

    async def run(self, app: Callable[..., Awaitable[None]]) -> None:
        await app(self.scope, self.receive, self.send)


def listener(
    connection: ScriptedConnection,
    admission: Admission | None = None,
    metrics: Metrics | None = None,
    write_timeout: float = 30.0,
) -> DeviceListener:
    return DeviceListener(
        lambda _chain: connection,
        admission or Admission(),
        "amqpwsb10",
        handshake_timeout=0.05,
        write_timeout=write_timeout,
        protocol="amqp",
        metrics=metrics,
    )


async def test_bytes_flow_both_ways_over_a_websocket() -> None:
    peer = WebSocketPeer(["AMQPWSB10"], [b"hello", b"ping"])
    connection = ScriptedConnection(idle=0.01)
    await peer.run(listener(connection).handle_websocket)
    assert peer.sent[0] == {"type": "websocket.accept", "subprotocol": "AMQPWSB10"}
    payloads = [message.get("bytes") for message in peer.sent[1:-1]]
    assert payloads == [b"welcome", b"pong", b"beat"]
    assert peer.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_a_handshake_not_finished_in_time_ends_the_connection() -> None:
    peer = WebSocketPeer(["amqpwsb10"], [b"trickle"])
    connection = ScriptedConnection()
    await asyncio.wait_for(peer.run(listener(connection).handle_websocket), timeout=5)
    assert not connection.established
    assert peer.sent[-1] == {"type": "websocket.close", "code": 1000}


async def test_a_hang_up_ends_the_connection() -> None:
    peer = WebSocketPeer(["amqpwsb10"], [b"hello"])
    peer.hang_up()
    await peer.run(listener(ScriptedConnection(idle=5)).handle_websocket)
    assert [message.get("bytes") for message in peer.sent[1:-1]] == [b"welcome"]


async def test_websocket_admission_is_shared() -> None:
    admission = Admission(ConnectionLimits(max_connections_per_address=0))
    peer = WebSocketPeer(["amqpwsb10"], [])
    await peer.run(listener(ScriptedConnection(), admission).handle_websocket)
    assert peer.sent == [{"type": "websocket.close", "code": 1013}]


async def test_dispatch_by_subprotocol() -> None:
    chosen: list[str] = []

    def app(name: str) -> Callable[..., Awaitable[None]]:
        async def serve(_scope: Any, _receive: Any, _send: Any) -> None:
            chosen.append(name)

        return serve

    dispatch = WebSocketDispatch({"mqtt": app("mqtt"), "AMQPWSB10": app("amqp")})
    await WebSocketPeer(["MQTT"], []).run(dispatch)
    await WebSocketPeer(["other", "amqpwsb10"], []).run(dispatch)
    assert chosen == ["mqtt", "amqp"]
    refused = WebSocketPeer(["chat"], [])
    await refused.run(dispatch)
    assert refused.sent == [{"type": "websocket.close", "code": 1002}]


def connections(metrics: Metrics) -> float | None:
    return metrics.registry.get_sample_value("dpsd_device_connections", {"protocol": "amqp"})


class CountingConnection(ScriptedConnection):
    """Notes how many connections the metrics count while it is open."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__(idle=0.01)
        self.metrics = metrics
        self.counted: float | None = None

    async def receive(self, data: bytes) -> bytes:
        self.counted = connections(self.metrics)
        return await super().receive(data)


async def test_each_connection_s_end_is_logged_with_its_device_and_reason() -> None:
    metrics = Metrics()
    connection = CountingConnection(metrics)
    with captured_logs() as stream:
        await WebSocketPeer(["AMQPWSB10"], [b"hello"]).run(
            listener(connection, metrics=metrics).handle_websocket
        )
    (line,) = events(stream, "disconnected")
    assert line["message"] == "amqp connection closed: the device was idle"
    assert (line["registration_id"], line["client"], line["transport"]) == (
        "dev-1",
        "10.0.0.1",
        "websocket",
    )
    assert line["duration_ms"] >= 0
    assert (connection.counted, connections(metrics)) == (1, 0)


async def test_the_shell_says_why_when_the_protocol_does_not() -> None:
    with captured_logs() as stream:
        await WebSocketPeer(["amqpwsb10"], [b"trickle"]).run(
            listener(ScriptedConnection()).handle_websocket
        )
        peer = WebSocketPeer(["amqpwsb10"], [b"hello"])
        peer.hang_up()
        await peer.run(listener(ScriptedConnection(idle=5)).handle_websocket)
    timed_out, hung_up = events(stream, "disconnected")
    assert timed_out["reason"] == "no handshake within 0.05 s"
    assert "registration_id" not in timed_out
    assert (hung_up["reason"], hung_up["registration_id"]) == (
        "the device closed the connection",
        "dev-1",
    )


async def test_refused_connections_are_logged_and_not_counted() -> None:
    metrics = Metrics()
    admission = Admission(ConnectionLimits(max_connections_per_address=0))
    with captured_logs() as stream:
        await WebSocketPeer(["amqpwsb10"], []).run(
            listener(ScriptedConnection(), admission, metrics).handle_websocket
        )
        dispatch = WebSocketDispatch({"mqtt": listener(ScriptedConnection()).handle_websocket})
        await WebSocketPeer(["chat", "superchat"], []).run(dispatch)
    full, unknown = events(stream, "connect_refused")
    assert (full["level"], full["protocol"], full["client"]) == ("WARNING", "amqp", "10.0.0.1")
    assert full["message"] == "amqp connection refused: too many device connections are open"
    assert (unknown["subprotocols"], unknown["client"]) == ("chat,superchat", "10.0.0.1")
    assert not events(stream, "disconnected")
    assert connections(metrics) == 0


class StuckPeer(WebSocketPeer):
    """A WebSocket peer that takes nothing after the accept: each send waits for ever."""

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)
        if message["type"] == "websocket.send":
            await asyncio.Event().wait()


async def test_a_peer_that_takes_nothing_is_dropped_after_the_write_timeout() -> None:
    peer = StuckPeer(["amqpwsb10"], [b"hello"])
    with captured_logs() as stream:
        await asyncio.wait_for(
            peer.run(listener(ScriptedConnection(idle=5), write_timeout=0.05).handle_websocket),
            timeout=5,
        )
    (line,) = events(stream, "disconnected")
    assert line["reason"] == "the device read nothing dpsd wrote for 0.05 s"
