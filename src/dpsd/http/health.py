"""Liveness and readiness probes, in front of everything the HTTP listeners serve.

- ``GET /healthz``: the process serves requests. Always ``200 {"status": "ok"}``.
- ``GET /readyz``: the store answers a trivial query within ``timeout`` seconds:
  ``200 {"status": "ready"}``, else ``503 {"status": "unavailable", "store":
  "unavailable"}`` (the cause is logged, not told).

No credentials are asked for, and any Host is answered (a built-in hub's name too). No DPS
or IoT hub route has a single segment of these names (a test checks), so the probes shadow
nothing; any other method on these paths goes on to the app. Probes are neither logged nor
counted as requests: orchestrators send them every few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from dpsd.http.exchange import HttpResponse, json_response

LIVENESS_PATH = "/healthz"
READINESS_PATH = "/readyz"
READINESS_TIMEOUT = 2.0
_NOT_CACHED = {"cache-control": "no-store"}
logger = logging.getLogger("dpsd.http.health")


class HealthProbes:
    """``app`` with the probes in front; ``store_answers`` raises when the store does not."""

    def __init__(
        self,
        app: ASGIApp,
        store_answers: Callable[[], Awaitable[None]],
        timeout: float = READINESS_TIMEOUT,
    ) -> None:
        self._app = app
        self._store_answers = store_answers
        self._timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path = scope["path"]
            if path == LIVENESS_PATH:
                await json_response({"status": "ok"}, 200, _NOT_CACHED).send(send)
                return
            if path == READINESS_PATH:
                await (await self.readiness()).send(send)
                return
        await self._app(scope, receive, send)

    async def readiness(self) -> HttpResponse:
        try:
            async with asyncio.timeout(self._timeout):
                await self._store_answers()
        except TimeoutError:
            return self._unready(f"the store did not answer within {self._timeout:g} s")
        except Exception as error:  # noqa: BLE001 - any failure of the store means not ready
            return self._unready(f"the store failed: {type(error).__name__}")
        return json_response({"status": "ready"}, 200, _NOT_CACHED)

    def _unready(self, reason: str) -> HttpResponse:
        logger.warning("not ready: %(reason)s", {"event": "not_ready", "reason": reason})
        body = {"status": "unavailable", "store": "unavailable"}
        return json_response(body, 503, _NOT_CACHED)
