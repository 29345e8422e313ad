"""The transport that hands dpsd's hub requests to its own ASGI app in process: what the
app sees of a request, and what the client gets back, failures included."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from dpsd.integrations.in_process import InProcessTransport


class Echo:
    """Answers with what it received; keeps the scope and every message."""

    def __init__(self) -> None:
        self.scope: Scope = {}
        self.messages: list[Message] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        first = await receive()
        self.messages.append(first)
        await send(
            {
                "type": "http.response.start",
                "status": 201,
                "headers": [(b"content-type", b"application/json"), (b"x-seen", b"1")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"got":', "more_body": True})
        await send({"type": "http.response.body", "body": first["body"] + b"}"})
        self.messages.append(await receive())


async def test_the_app_gets_the_request_and_the_client_its_answer() -> None:
    app = Echo()
    async with InProcessTransport(app) as transport:
        request = httpx.Request(
            "PUT",
            "https://hub.example:8443/devices/a%2Fb?api-version=2021-04-12",
            headers={"Authorization": "token", "If-Match": '"*"'},
            content=b'"body"',
        )
        response = await transport.handle_async_request(request)
        await response.aread()
    assert response.status_code == 201
    assert response.headers["x-seen"] == "1"
    assert response.json() == {"got": "body"}
    scope = app.scope
    assert (scope["type"], scope["method"], scope["scheme"]) == ("http", "PUT", "https")
    assert scope["raw_path"] == b"/devices/a%2Fb"
    assert scope["path"] == "/devices/a/b"
    assert scope["query_string"] == b"api-version=2021-04-12"
    assert scope["server"] == ("hub.example", 8443)
    headers = dict(scope["headers"])
    assert headers[b"host"] == b"hub.example:8443"
    assert headers[b"authorization"] == b"token"
    assert headers[b"if-match"] == b'"*"'
    assert app.messages == [
        {"type": "http.request", "body": b'"body"', "more_body": False},
        {"type": "http.disconnect"},
    ]


@pytest.mark.parametrize("started", [False, True])
async def test_an_app_that_fails_answers_500_or_what_it_began(started: bool) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        if started:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("broken")

    transport = InProcessTransport(failing)
    response = await transport.handle_async_request(httpx.Request("GET", "https://h/x"))
    assert response.status_code == (200 if started else 500)
    assert response.content == b""


async def test_a_head_request_reaches_the_app_as_head() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["method"] = scope["method"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    transport = InProcessTransport(app)
    response = await transport.handle_async_request(httpx.Request("HEAD", "https://h/x"))
    assert (seen["method"], response.status_code) == ("HEAD", 204)
