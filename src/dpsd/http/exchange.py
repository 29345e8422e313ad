"""The request and response of one HTTP exchange, straight on ASGI.

Starlette's Request and Response objects cost a few microseconds each per request (header
views built and searched per lookup, a header object per response); the handlers need far
less: the headers once as a dict, the body, and a response sent as two ASGI messages. The
bytes on the wire are those Starlette's Response wrote: the given headers, then
``content-length`` (not for 1xx, 204 and 304) and ``content-type`` when there is one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

JSON = "application/json; charset=utf-8"
RawHeaders = list[tuple[bytes, bytes]]

_encoder = msgspec.json.Encoder()
_JSON_TYPE = (b"content-type", JSON.encode("latin-1"))


class HttpRequest:
    """The scope, the headers by (lower-case) name, the first of each kept, and the body."""

    __slots__ = ("_receive", "headers", "method", "scope")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self._receive = receive
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            key = name.decode("latin-1")
            if key not in headers:
                headers[key] = value.decode("latin-1")
        self.headers = headers

    async def body(self, limit: int) -> bytearray | None:
        """The whole body, or None as soon as it grows beyond ``limit`` bytes."""
        body = bytearray()
        while True:
            message = await self._receive()
            if message["type"] == "http.request":
                body += message.get("body", b"")
                if len(body) > limit:
                    return None
                if not message.get("more_body", False):
                    return body
            elif message["type"] == "http.disconnect":
                raise ClientDisconnect()


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    headers: RawHeaders = field(default_factory=list)

    async def send(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body})


def json_bytes_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    """A JSON body already encoded."""
    raw: RawHeaders = (
        []
        if headers is None
        else [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    )
    if not (status < 200 or status in (204, 304)):
        raw.append((b"content-length", str(len(body)).encode("latin-1")))
    raw.append(_JSON_TYPE)
    return HttpResponse(status, body, raw)


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    return json_bytes_response(_encoder.encode(body), status, headers)


def empty_response(status: int = 204) -> HttpResponse:
    """No body, no content type (and no content-length: 204 takes none)."""
    return HttpResponse(status)
