"""A HubTransport that hands each request to an ASGI application in this process.

dpsd writes devices into the IoT hubs it serves itself with the same requests it sends to
Azure IoT Hub (``integrations.iothub``), through this transport instead of a socket: the
application gets an ``http`` scope as from a client of the hub's HTTPS listener (method,
path and query, the Host header that picks the hub, the SAS), the whole body in one
``http.request`` message, and its answer is collected whole. httpx's own
``ASGITransport`` does the same for httpx requests, but building and reading httpx's
Request and Response objects cost more than the hub's handling of the request.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message

from dpsd.integrations.hub_http import HubRequest, HubResponse

_SCOPE_BASE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1"}
_HTTPS_PORT = 443


class InProcessTransport:
    """Requests go to ``app`` as from ``client`` (an address and port, as in a scope)."""

    def __init__(self, app: ASGIApp, client: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self._app = app
        self._client = client

    async def send(self, request: HubRequest) -> HubResponse:
        path, _, query = request.target.partition("?")
        headers = [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in request.headers
        ]
        if request.body:
            headers.append((b"content-length", str(len(request.body)).encode("ascii")))
        scope: dict[str, Any] = {
            **_SCOPE_BASE,
            "method": request.method,
            "headers": headers,
            "scheme": "https",
            "path": unquote(path),
            "raw_path": path.encode("latin-1"),
            "query_string": query.encode("latin-1"),
            "server": _server(request.host),
            "client": self._client,
            "root_path": "",
        }
        exchange = _Exchange(request.body)
        try:
            await self._app(scope, exchange.receive, exchange.send)
        except Exception:  # noqa: BLE001 - an app that fails answers 500, as over a socket
            exchange.answered.set()
            if exchange.status is None:
                return HubResponse(500)
        return HubResponse(exchange.status or 500, b"".join(exchange.body))

    async def aclose(self) -> None:
        """Nothing to release: there is no connection."""


def _server(host: str) -> tuple[str, int]:
    """The (host, port) of a Host header value, as a scope's ``server``."""
    name, colon, port = host.rpartition(":")
    if colon and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name.strip("[]"), int(port)
    return host.strip("[]"), _HTTPS_PORT


class _Exchange:
    """One request's ASGI messages: the body in one message, the answer collected."""

    def __init__(self, body: bytes) -> None:
        self._request: Message | None = {"type": "http.request", "body": body, "more_body": False}
        self.answered = asyncio.Event()
        self.status: int | None = None
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
        elif message["type"] == "http.response.body":
            chunk = message.get("body", b"")
            if chunk:
                self.body.append(chunk)
            if not message.get("more_body", False):
                self.answered.set()
