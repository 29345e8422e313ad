"""The ASGI application of the IoT hubs dpsd serves itself: one request, addressed to one
built-in hub, through routing, authentication and errors.

Which hub a request is for is decided in front of this app (http.host_dispatch, by the
Host header); here the request is served as that hub: any api-version is accepted (the
service clients send 2021-04-12, Microsoft's e2e helper 2018-06-30), the caller must hold
a SharedAccessSignature of one of the hub's policies with the right the route names, and
every error becomes IoT Hub's classic error body (http.hub_errors). Each request is
served under a tracking id (the one in its error body, and in every log line about it)
and ends in the access log.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.domain.hub import HUB_RIGHT_NAMES, HubAccessRights, HubPolicy, LinkedHub
from dpsd.http.access import UNMATCHED, AccessLog
from dpsd.http.app import request_host
from dpsd.http.errors import unexpected
from dpsd.http.exchange import HttpRequest, HttpResponse
from dpsd.http.hub_api import HubHandlers
from dpsd.http.hub_errors import error_response, new_tracking_id
from dpsd.http.routing import Route, Router
from dpsd.service.auth import ServiceAuthenticator, require_rights
from dpsd.service.hub_registry import HubRegistryService
from dpsd.telemetry.tracking import TRACKING_ID

logger = logging.getLogger("dpsd.http.hub")
HubRoutes = Callable[[LinkedHub], list[Route[HubAccessRights]]]
# Hubs whose router and accepted tokens are kept at once; past this many, all are dropped.
_MAX_SERVED = 256


@dataclass(frozen=True, slots=True)
class _Served:
    """What serving one LinkedHub needs: its routes and the tokens it accepted."""

    hub: LinkedHub
    router: Router[HubAccessRights]
    tokens: ServiceAuthenticator[HubPolicy]


class HubApiApp:
    """Serves the routes ``routes(hub)`` gives for whichever built-in hub a request is for.

    The router of a hub is built when a request first comes for it and kept while the
    same LinkedHub is handed in (the host dispatch hands in the one it looked up for a
    few seconds), so the handlers act on the hub found without looking it up again; so
    are the tokens it accepted, so that a token sent again is not verified again. A hub
    whose policies changed is a new LinkedHub: its tokens are verified anew."""

    def __init__(
        self,
        routes: HubRoutes,
        now: Callable[[], datetime],
        access: AccessLog | None = None,
    ) -> None:
        self._access = access
        self._routes = routes
        self._served: dict[str, _Served] = {}
        self._now = now

    def for_hub(self, hub: LinkedHub) -> ASGIApp:
        """An ASGI app serving HTTP requests as ``hub``."""
        return functools.partial(self.serve, hub)

    async def serve(self, hub: LinkedHub, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        tracking_id = new_tracking_id()
        token = TRACKING_ID.set(tracking_id)
        try:
            request = HttpRequest(scope, receive)
            operation, response = await self._respond(hub, request, tracking_id)
            if self._access is not None:
                self._access.exchange(scope, operation, response, started)
            await response.send(send)
        finally:
            TRACKING_ID.reset(token)

    async def _respond(
        self, hub: LinkedHub, request: HttpRequest, tracking_id: str
    ) -> tuple[str, HttpResponse]:
        """The operation the request names (its route's), and the answer."""
        operation = UNMATCHED
        try:
            served = self._serving(hub)
            route, params = served.router.resolve(
                request.method, request.scope.get("raw_path") or b"/"
            )
            operation = route.operation
            return operation, await self._handle(served, request, route, params)
        except Exception as error:  # noqa: BLE001 - the one place hub errors become responses
            return operation, self._error_response(error, tracking_id)

    async def _handle(
        self,
        served: _Served,
        request: HttpRequest,
        route: Route[HubAccessRights],
        params: dict[str, str],
    ) -> HttpResponse:
        policy = served.tokens.authenticate(
            request.headers.get("authorization"), now=int(self._now().timestamp())
        )
        needed = route.right(request) if callable(route.right) else route.right
        if needed is not None:
            require_rights(policy.name, policy.rights, needed, HUB_RIGHT_NAMES)
        return await route.handler(request, params)

    def _serving(self, hub: LinkedHub) -> _Served:
        served = self._served.get(hub.host_name)
        if served is not None and served.hub is hub:
            return served
        if len(self._served) >= _MAX_SERVED:
            self._served.clear()
        served = _Served(
            hub,
            Router(self._routes(hub), "the IoT hub API"),
            ServiceAuthenticator(hub.policy, [request_host(hub.host_name)], capacity=1024),
        )
        self._served[hub.host_name] = served
        return served

    def _error_response(self, error: Exception, tracking_id: str) -> HttpResponse:
        response = error_response(error, tracking_id, self._now())
        if unexpected(error, response.status):
            logger.error("dpsd failed to answer an IoT hub request", exc_info=error)
        return response


def build_hub_app(
    service: HubRegistryService, now: Callable[[], datetime], access: AccessLog | None = None
) -> HubApiApp:
    """The hub app serving the devices, twins and queries of ``service``'s hubs."""
    return HubApiApp(lambda hub: HubHandlers(service, hub).routes(), now, access)
