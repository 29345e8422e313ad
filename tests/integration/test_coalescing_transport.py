"""The HTTP listener's transport sends each response's writes together, and nothing else
about the byte stream changes."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from dpsd.client_tls import ClientCertificateProtocol, CoalescingTransport


class RecordingTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.closing = False

    def write(self, data: Any) -> None:
        self.events.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True
        self.events.append("close")

    def abort(self) -> None:
        self.closing = True
        self.events.append("abort")

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 1)}.get(name, default)


async def test_writes_of_one_turn_leave_as_one() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw)
    transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    transport.write(bytearray(b"body"))
    assert raw.events == []
    assert transport.get_write_buffer_size() == 23
    await asyncio.sleep(0)
    assert raw.events == [b"HTTP/1.1 200 OK\r\n\r\nbody"]
    transport.write(b"next")
    await asyncio.sleep(0)
    assert raw.events[-1] == b"next"
    assert transport.get_extra_info("peername") == ("127.0.0.1", 1)


async def test_close_sends_what_is_held_first_and_abort_drops_it() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw)
    transport.write(b"last words")
    transport.close()
    assert raw.events == [b"last words", "close"]
    await asyncio.sleep(0)
    assert raw.events == [b"last words", "close"]

    raw = RecordingTransport()
    transport = CoalescingTransport(raw)
    transport.write(b"never sent")
    transport.abort()
    await asyncio.sleep(0)
    assert raw.events == ["abort"]


async def test_nothing_is_written_to_a_closing_transport() -> None:
    raw = RecordingTransport()
    transport = CoalescingTransport(raw)
    transport.write(b"too late")
    raw.closing = True
    await asyncio.sleep(0)
    assert raw.events == []


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for index in range(50):
            chunk = bytes([65 + index % 26]) * 10_000
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return
    answer = b"echo:" + body
    headers = [(b"content-length", str(len(answer)).encode()), (b"x-test", b"1")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture
async def server_url() -> AsyncIterator[str]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    config = uvicorn.Config(
        _app, http=ClientCertificateProtocol, lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        for _ in range(200):
            if server.started:
                break
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        listener.close()


async def test_responses_arrive_whole_over_a_kept_alive_connection(server_url: str) -> None:
    async with httpx.AsyncClient(base_url=server_url, timeout=10) as client:
        for index in range(20):
            response = await client.put("/echo", content=b"x" * index * 1000)
            assert response.status_code == 201
            assert response.headers["x-test"] == "1"
            assert response.content == b"echo:" + b"x" * index * 1000
        streamed = await client.get("/stream")
        assert streamed.content == b"".join(bytes([65 + i % 26]) * 10_000 for i in range(50))
        closing = await client.put("/echo", content=b"bye", headers={"connection": "close"})
        assert closing.content == b"echo:bye"
        assert closing.headers["connection"] == "close"
        again = await client.put("/echo", content=b"new connection")
        assert again.content == b"echo:new connection"


async def test_a_response_is_one_send_on_the_wire(server_url: str) -> None:
    host, port = server_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = b"PUT /echo HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\nhi"
        writer.write(request)
        await writer.drain()
        first = await asyncio.wait_for(reader.read(65536), 10)
        assert first.startswith(b"HTTP/1.1 201 Created\r\n")
        assert first.endswith(b"\r\n\r\necho:hi")
    finally:
        writer.close()
        await writer.wait_closed()
