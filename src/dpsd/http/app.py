"""The ASGI application: routing, api-version, authentication, body limits and errors.

Handlers only translate between the wire and the use cases; everything a request must
pass before reaching one happens here, once. Each request is served under a tracking id
(``x-ms-request-id``, the ``trackingId`` of its error body, every log line about it) and
ends in the access log (``dpsd.http.access``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from urllib.parse import unquote_plus

from starlette.types import Receive, Scope, Send

from dpsd.domain.sas import SharedAccessPolicy
from dpsd.http.access import UNMATCHED, AccessLog
from dpsd.http.errors import (
    ERROR_CODE_HEADER,
    REQUEST_ID_HEADER,
    InvalidApiVersion,
    advice_headers,
    error_details,
    message_of,
    status_and_code,
    unexpected,
)
from dpsd.http.exchange import HttpRequest, HttpResponse, json_response
from dpsd.http.routing import Route, Router
from dpsd.service.auth import ServiceAuthenticator, require
from dpsd.telemetry.tracking import TRACKING_ID, new_tracking_id

logger = logging.getLogger("dpsd.http")

SERVICE_API_VERSIONS = frozenset(
    {
        "2017-11-15",
        "2018-04-01",
        "2018-09-01-preview",
        "2018-11-01",
        "2019-03-31",
        "2021-06-01",
        "2021-10-01",
        "2021-11-01-preview",
    }
)


class ServiceApiApp:
    """An ASGI app serving one route table with DPS authentication and error handling."""

    def __init__(
        self,
        router: Router,
        policies: Mapping[str, SharedAccessPolicy],
        own_names: Iterable[str],
        now: Callable[[], datetime],
        access: AccessLog | None = None,
    ) -> None:
        """``own_names``: the host names and addresses of this service, one of which a
        token's audience must name; ``access`` logs and counts the requests. (Device
        WebSockets never reach it: ``dpsd.devices.websocket`` serves them.)"""
        self._router = router
        names = (request_host(name) for name in own_names)
        self._authenticator = ServiceAuthenticator(policies, names)
        self._now = now
        self._access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._not_http(scope, receive, send)
            return
        started = time.perf_counter()
        request_id = new_tracking_id()
        token = TRACKING_ID.set(request_id)
        try:
            operation, response = await self._respond(HttpRequest(scope, receive), request_id)
            response.headers.append((REQUEST_ID_HEADER, request_id.encode("latin-1")))
            if self._access is not None:
                self._access.exchange(scope, operation, response, started)
            await response.send(send)
        finally:
            TRACKING_ID.reset(token)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _respond(self, request: HttpRequest, request_id: str) -> tuple[str, HttpResponse]:
        """The operation the request names (its route's), and the answer."""
        operation = UNMATCHED
        try:
            route, params = self._router.resolve(
                request.method, request.scope.get("raw_path") or b"/"
            )
            operation = route.operation
            return operation, await self._handle(request, route, params)
        except Exception as error:  # noqa: BLE001 - the one place errors become responses
            return operation, self._error_response(error, request_id)

    async def _handle(
        self, request: HttpRequest, route: Route, params: dict[str, str]
    ) -> HttpResponse:
        _check_api_version(request.scope.get("query_string", b""))
        if route.right is not None:
            policy = self._authenticator.authenticate(
                request.headers.get("authorization"), now=int(self._now().timestamp())
            )
            require(policy, route.right(request) if callable(route.right) else route.right)
        return await route.handler(request, params)

    def _error_response(self, error: Exception, request_id: str) -> HttpResponse:
        status, code = status_and_code(error)
        message = message_of(error)
        if unexpected(error, status):
            logger.error("dpsd failed to answer a request", exc_info=error)
            message = "The service failed to handle the request; the tracking id identifies it"
        body = error_details(code, message, request_id, self._now())
        headers = {ERROR_CODE_HEADER: str(code), **advice_headers(error)}
        return json_response(body, status, headers)


def request_host(host_header: str) -> str:
    """The host name of a Host header: ``localhost:8443`` and ``[::1]:8443`` alike."""
    if host_header.startswith("["):
        return host_header[1 : host_header.find("]")].lower()
    return (
        host_header.rsplit(":", 1)[0].lower()
        if host_header.count(":") == 1
        else host_header.lower()
    )


def _api_version(query_string: bytes) -> str | None:
    for part in query_string.split(b"&"):
        if part.startswith(b"api-version="):
            value = part[12:].decode("latin-1")
            return unquote_plus(value) if "%" in value or "+" in value else value
    return None


def _check_api_version(query_string: bytes) -> None:
    version = _api_version(query_string)
    if not version:
        raise InvalidApiVersion("The api-version query parameter is required (2021-10-01)")
    if version not in SERVICE_API_VERSIONS:
        known = ", ".join(sorted(SERVICE_API_VERSIONS))
        raise InvalidApiVersion(f"api-version {version!r} is not supported; use one of {known}")


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
