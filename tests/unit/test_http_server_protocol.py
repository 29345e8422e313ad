"""The HTTP protocol's bound on request heads, fed bytes directly: an endless head is cut
as soon as it passes the limit, whatever the size of the reads, and a body never counts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from dpsd.http.server_protocol import HEAD_LIMIT_BYTES, BoundedHeadProtocol
from tests.integration.test_coalescing_transport import RecordingTransport

LINE = b"x-filler: " + b"f" * 1014 + b"\r\n"


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def connected() -> tuple[BoundedHeadProtocol, RecordingTransport]:
    config = uvicorn.Config(_app, lifespan="off", log_level="warning")
    protocol = BoundedHeadProtocol(config=config, server_state=ServerState(), app_state={})
    transport = RecordingTransport()
    protocol.connection_made(transport)
    return protocol, transport


@pytest.mark.parametrize("read_size", [1, 100, 1026, 9000])
async def test_an_endless_head_is_cut_just_past_the_limit(read_size: int) -> None:
    protocol, transport = connected()
    stream = b"GET / HTTP/1.1\r\nhost: x\r\n" + LINE * (2 * HEAD_LIMIT_BYTES // len(LINE))
    fed = 0
    while not transport.closing:
        protocol.data_received(stream[fed : fed + read_size])
        fed += read_size
    assert HEAD_LIMIT_BYTES < fed <= HEAD_LIMIT_BYTES + read_size
    await asyncio.sleep(0)  # the coalesced write leaves
    answer, closed = transport.events
    assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b'"errorCode":431000' in answer
    assert closed == "close"
    protocol.connection_lost(None)


async def test_a_body_after_its_head_is_not_counted() -> None:
    protocol, transport = connected()
    body = b"b" * 60_000  # past the head limit, short of uvicorn's flow control
    head = b"PUT / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % len(body)
    protocol.data_received(head + body)
    assert not transport.closing
    protocol.connection_lost(None)
