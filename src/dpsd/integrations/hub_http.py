"""One HTTP exchange with an IoT hub's registry, and the transport that carries it over the
network (httpx).

dpsd's IoT hub client (``integrations.iothub``) makes each request, its SAS, headers and
body, and reads each answer, the same way for every hub; a HubTransport only carries the
exchange: over the network to an Azure IoT hub (HttpxHubTransport, on an httpx
transport), or in process to a hub dpsd serves itself (``integrations.in_process``), which
hands the same request to dpsd's own HTTP application. Keeping httpx's Request and
Response objects to the network side spares the in-process exchange their cost, which
was about a third of landing a device in a built-in hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx


@dataclass(frozen=True, slots=True)
class HubRequest:
    """``host``: the hub's host name, with a port when it is not 443 (the Host header and
    the URL's authority); ``target``: path and query; ``headers``: lower-case names."""

    method: str
    host: str
    target: str
    headers: Sequence[tuple[str, str]]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class HubResponse:
    status: int
    body: bytes = b""

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class HubUnreachable(Exception):
    """No answer: the hub could not be reached, or did not answer in time. The message
    reads after the hub's name (``could not be reached: ...``)."""


class HubTransport(Protocol):
    async def send(self, request: HubRequest) -> HubResponse: ...

    async def aclose(self) -> None: ...


class HttpxHubTransport:
    """Over the network, on an httpx transport (its connection pool and TLS); each step of
    a request (connect, send, each read) within ``timeout`` seconds."""

    def __init__(self, transport: httpx.AsyncBaseTransport, timeout: float = 10.0) -> None:
        self._transport = transport
        self._timeout = timeout
        self._extensions = {"timeout": httpx.Timeout(timeout).as_dict()}

    async def send(self, request: HubRequest) -> HubResponse:
        try:
            outgoing = httpx.Request(
                request.method,
                f"https://{request.host}{request.target}",
                headers=list(request.headers),
                content=request.body or None,
                extensions=self._extensions,
            )
            response = await self._transport.handle_async_request(outgoing)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except httpx.TimeoutException as error:
            raise HubUnreachable(f"did not answer within {self._timeout:g} s") from error
        except (httpx.HTTPError, httpx.InvalidURL) as error:
            reason = str(error) or type(error).__name__
            raise HubUnreachable(f"could not be reached: {reason}") from error
        return HubResponse(response.status_code, response.content)

    async def aclose(self) -> None:
        await self._transport.aclose()
