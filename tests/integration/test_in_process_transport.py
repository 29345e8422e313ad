"""The transport that hands dpsd's hub requests to its own ASGI app in process: what the
app sees of a request (as from a client of the HTTPS listener), and what the client gets
back, failures included."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.types import Message, Receive, Scope, Send

from dpsd.integrations.hub_http import HubRequest
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
    request = HubRequest(
        "PUT",
        "hub.example:8443",
        "/devices/a%2Fb?api-version=2021-04-12",
        [("host", "hub.example:8443"), ("authorization", "token"), ("if-match", '"*"')],
        b'"body"',
    )
    response = await InProcessTransport(app).send(request)
    assert response.status == 201
    assert response.body == b'{"got":"body"}'
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
    assert headers[b"content-length"] == b"6"
    assert app.messages == [
        {"type": "http.request", "body": b'"body"', "more_body": False},
        {"type": "http.disconnect"},
    ]


async def test_a_host_without_a_port_is_served_on_443() -> None:
    app = Echo()
    await InProcessTransport(app).send(HubRequest("GET", "hub.example", "/devices/d", []))
    assert app.scope["server"] == ("hub.example", 443)
    assert app.scope["query_string"] == b""
    assert b"content-length" not in dict(app.scope["headers"])


@pytest.mark.parametrize("started", [False, True])
async def test_an_app_that_fails_answers_500_or_what_it_began(started: bool) -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        if started:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        raise RuntimeError("broken")

    response = await InProcessTransport(failing).send(HubRequest("GET", "h", "/x", []))
    assert response.status == (200 if started else 500)
    assert response.body == b""


async def test_a_head_request_reaches_the_app_as_head() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["method"] = scope["method"]
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    response = await InProcessTransport(app).send(HubRequest("HEAD", "h", "/x", []))
    assert (seen["method"], response.status) == ("HEAD", 204)
