"""Request heads on dpsd's HTTP listener (uvicorn with dpsd's protocol, on 127.0.0.1:0): a head
larger than the limit gets 431, a head not complete within the deadline 408, bytes that are
not HTTP 400, each with a DPS error body, and the connection is closed; well-behaved
requests on the same listener are served throughout."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from dpsd.http.server_protocol import HEAD_LIMIT_BYTES, BoundedHeadProtocol
from tests.conftest import API, ServiceApi

HEAD_TIMEOUT = 0.5


class QuickHeads(BoundedHeadProtocol):
    head_timeout = HEAD_TIMEOUT


@dataclass
class Listener:
    port: int
    api: ServiceApi

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    def request(self, path: str = "/enrollments/dev-1", **headers: str) -> bytes:
        lines = [f"GET {path}{API} HTTP/1.1", "Host: localhost", *self._auth(), *_lines(headers)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def _auth(self) -> list[str]:
        return [f"{name}: {value}" for name, value in self.api.auth().items()]


def _lines(headers: dict[str, str]) -> list[str]:
    return [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]


@pytest.fixture
async def listener(service_api: ServiceApi) -> AsyncIterator[Listener]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(
        service_api.runtime.asgi_app,
        http=QuickHeads,
        ws=service_api.runtime.websockets,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:  # the socket listens already: connections wait in its backlog until uvicorn serves
        yield Listener(sock.getsockname()[1], service_api)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def error(self) -> dict[str, object]:
        assert self.headers["content-type"].startswith("application/json"), self.headers
        error: dict[str, object] = json.loads(self.body)
        assert error["trackingId"] == self.headers["x-ms-request-id"]
        assert str(error["errorCode"]) == self.headers["x-ms-error-code"]
        return error


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
    status_line, *header_lines = head.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in header_lines)
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return Answer(int(status_line.split(" ")[1]), headers, body)


async def closed(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        return await asyncio.wait_for(reader.read(), timeout=10) == b""
    return True


async def served(listener: Listener) -> None:
    """A well-behaved client is answered (404: no such enrollment)."""
    reader, writer = await listener.open()
    writer.write(listener.request())
    assert (await read_answer(reader)).status == 404
    writer.close()


async def test_a_head_within_the_limit_is_served(listener: Listener) -> None:
    reader, writer = await listener.open()
    filler = {f"x-filler-{n}": "f" * 1000 for n in range(HEAD_LIMIT_BYTES // 1100)}
    writer.write(listener.request(**filler))
    assert (await read_answer(reader)).status == 404
    writer.close()


async def test_a_large_body_is_not_taken_for_a_head(listener: Listener) -> None:
    body = json.dumps(
        {
            "registrationId": "dev-1",
            "attestation": {"type": "symmetricKey"},
            "optionalDeviceInformation": {"notes": "n" * 90_000},
        }
    ).encode()
    head = listener.request(content_type="application/json", content_length=str(len(body)))
    reader, writer = await listener.open()
    writer.write(head.replace(b"GET ", b"PUT ", 1) + body)
    assert (await read_answer(reader)).status == 200
    writer.close()


async def test_a_head_over_the_limit_is_refused(listener: Listener) -> None:
    """One byte over: 431 and the connection closed (an endless head is cut there too: see
    the unit tests and tests/integration/test_hostile_load.py)."""
    reader, writer = await listener.open()
    head = f"GET /enrollments/dev-1{API} HTTP/1.1\r\nHost: localhost\r\n".encode()
    line = b"x-filler: " + b"f" * 1014 + b"\r\n"
    head += line * ((HEAD_LIMIT_BYTES - len(head)) // len(line) + 1)
    writer.write(head[: HEAD_LIMIT_BYTES + 1])
    answer = await read_answer(reader)
    assert answer.status == 431
    error = answer.error()
    assert error["errorCode"] == 431000
    assert f"{HEAD_LIMIT_BYTES // 1024} KB" in str(error["message"])
    assert answer.headers["connection"] == "close"
    assert await closed(reader)
    await served(listener)


async def test_a_head_trickled_past_the_deadline_gets_408(listener: Listener) -> None:
    reader, writer = await listener.open()
    started = time.monotonic()
    writer.write(f"GET /enrollments/dev-1{API} HTTP/1.1\r\n".encode())
    for n in range(4):  # bytes keep coming until just before the deadline
        await asyncio.sleep(HEAD_TIMEOUT / 5)
        writer.write(f"x-line-{n}: 1\r\n".encode())
    answer = await read_answer(reader)
    assert HEAD_TIMEOUT <= time.monotonic() - started < 5
    assert answer.status == 408
    assert answer.error()["errorCode"] == 408000
    assert await closed(reader)
    await served(listener)


async def test_a_connection_that_sends_nothing_is_closed_at_the_deadline(
    listener: Listener,
) -> None:
    reader, writer = await listener.open()
    started = time.monotonic()
    answer = await read_answer(reader)
    assert answer.status == 408
    assert await closed(reader)
    assert HEAD_TIMEOUT <= time.monotonic() - started < 5
    writer.close()


async def test_each_head_of_a_kept_alive_connection_has_its_own_deadline(
    listener: Listener,
) -> None:
    """Requests spaced over several deadlines are served, each head arriving in time; a
    later head that does not is refused."""
    reader, writer = await listener.open()
    for _ in range(4):
        writer.write(listener.request())
        assert (await read_answer(reader)).status == 404
        await asyncio.sleep(HEAD_TIMEOUT / 2)
    writer.write(listener.request()[:20])
    answer = await read_answer(reader)
    assert answer.status == 408
    writer.close()


@pytest.mark.parametrize("character", ["\x01", "\x7f", "\x1b"])
async def test_a_control_character_in_authorization_gets_a_dps_error(
    listener: Listener, character: str
) -> None:
    reader, writer = await listener.open()
    request = listener.request().replace(b"sr=", f"sr={character}".encode("latin-1"))
    writer.write(request)
    answer = await read_answer(reader)
    assert answer.status == 400
    assert answer.error()["errorCode"] == 400004
    assert await closed(reader)
    await served(listener)


async def test_a_websocket_is_left_to_its_device_protocol(listener: Listener) -> None:
    """Once upgraded, the connection is MQTT's (its CONNECT deadline, 10 s here): the head
    deadline no longer applies."""
    reader, writer = await listener.open()
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Protocol": "mqtt",
    }
    lines = ["GET /$iothub/websocket HTTP/1.1", "Host: localhost", *_lines(upgrade)]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    assert (await read_answer(reader)).status == 101
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), timeout=3 * HEAD_TIMEOUT)
    writer.close()
