"""An httpx transport that hands each request to an ASGI application in this process.

dpsd writes devices into the IoT hubs it serves itself with the same httpx requests it
sends to Azure IoT Hub, through this transport instead of a socket. httpx has its own
(``httpx.ASGITransport``), built for tests and for any async library: it looks up which
async library runs (sniffio) and creates an event per request, streams the request body
in chunks and hands back a streamed response, and all of that came to about a tenth of
the CPU of landing a device. This one does what dpsd needs and nothing more: one
``http.request`` message with the whole body, the response collected whole and handed
back with its content read, on asyncio only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from starlette.types import ASGIApp, Message

_SCOPE_BASE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1"}


class InProcessTransport(httpx.AsyncBaseTransport):
    """Requests go to ``app`` as from ``client`` (an address and port, as in a scope)."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self._app = app
        self._client = client

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scope: dict[str, Any] = {
            **_SCOPE_BASE,
            "method": request.method,
            "headers": [(name.lower(), value) for name, value in request.headers.raw],
            "scheme": url.scheme,
            "path": url.path,
            "raw_path": url.raw_path.split(b"?", 1)[0],
            "query_string": url.query,
            "server": (url.host, url.port),
            "client": self._client,
            "root_path": "",
        }
        exchange = _Exchange(await request.aread())
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:  # noqa: BLE001 - an app that fails answers 500, as over a socket
            exchange.answered.set()
            if exchange.status is None:
                return httpx.Response(500, request=request)
        return httpx.Response(
            exchange.status or 500,
            headers=exchange.headers,
            content=b"".join(exchange.body),
            request=request,
        )


class _Exchange:
    """One request's ASGI messages: the body in one message, the answer collected."""

    def __init__(self, body: bytes) -> None:
        self._request: Message | None = {"type": "http.request", "body": body, "more_body": False}
        self.answered = asyncio.Event()
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []

    async def receive(self) -> Message:
        message, self._request = self._request, None
        if message is not None:
            return message
        await self.answered.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.body.append(chunk)
            if not message.get("more_body", False):
                self.answered.set()
