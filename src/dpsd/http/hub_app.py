"""The ASGI application of the IoT hubs dpsd serves itself: one request, addressed to one
built-in hub, through routing, authentication and errors.

Which hub a request is for is decided in front of this app (http.host_dispatch, by the
Host header); here the request is served as that hub: any api-version is accepted (the
service clients send 2021-04-12, Microsoft's e2e helper 2018-06-30), the caller must hold
a SharedAccessSignature of one of the hub's policies with the right the route names, and
every error becomes IoT Hub's classic error body (http.hub_errors).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from datetime import datetime

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.domain.hub import HUB_RIGHT_NAMES, HubAccessRights, LinkedHub
from dpsd.http.app import request_host
from dpsd.http.exchange import HttpRequest, HttpResponse
from dpsd.http.hub_api import HUB_PARAM, HubHandlers
from dpsd.http.hub_errors import error_response, new_tracking_id
from dpsd.http.routing import Router
from dpsd.service.auth import authenticate, require_rights
from dpsd.service.hub_registry import HubRegistryService

logger = logging.getLogger("dpsd.http.hub")


class HubApiApp:
    """Serves the routes of ``router`` as whichever built-in hub a request is for."""

    def __init__(self, router: Router[HubAccessRights], now: Callable[[], datetime]) -> None:
        self._router = router
        self._now = now

    def for_hub(self, hub: LinkedHub) -> ASGIApp:
        """An ASGI app serving HTTP requests as ``hub``."""
        return functools.partial(self.serve, hub)

    async def serve(self, hub: LinkedHub, scope: Scope, receive: Receive, send: Send) -> None:
        tracking_id = new_tracking_id()
        try:
            response = await self._handle(hub, HttpRequest(scope, receive))
        except Exception as error:  # noqa: BLE001 - the one place hub errors become responses
            response = self._error_response(error, tracking_id)
        await response.send(send)

    async def _handle(self, hub: LinkedHub, request: HttpRequest) -> HttpResponse:
        route, params = self._router.resolve(request.method, request.scope.get("raw_path") or b"/")
        policy = authenticate(
            request.headers.get("authorization"),
            hub.policy,
            now=int(self._now().timestamp()),
            host=request_host(hub.host_name),
        )
        needed = route.right(request) if callable(route.right) else route.right
        if needed is not None:
            require_rights(policy.name, policy.rights, needed, HUB_RIGHT_NAMES)
        params[HUB_PARAM] = hub.host_name
        return await route.handler(request, params)

    def _error_response(self, error: Exception, tracking_id: str) -> HttpResponse:
        response = error_response(error, tracking_id, self._now())
        if response.status >= 500:
            logger.exception("IoT hub request %s failed", tracking_id, exc_info=error)
        return response


def build_hub_app(service: HubRegistryService, now: Callable[[], datetime]) -> HubApiApp:
    """The hub app serving the devices, twins and queries of ``service``'s hubs."""
    return HubApiApp(Router(HubHandlers(service).routes(), "the IoT hub API"), now)
