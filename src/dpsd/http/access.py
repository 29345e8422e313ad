"""The access log and request metrics of the HTTP edge: one line and one count per request.

A line names the method, the path with its query (values other than ``api-version``
blotted out: a query may carry a signature), the status, the error code (DPS's, or the
IoT hub error name), the duration, the operation (method and route template) and the
client's address; like every line logged while the request is served, it carries the
request's tracking id, which is also the ``x-ms-request-id`` header and the
``trackingId`` of a DPS error body. Headers and bodies are never logged.

Requests that dpsd sends to itself in process (its writes into the IoT hubs it serves,
marked in their scope by ``IN_PROCESS``) are counted alike but logged at DEBUG: the device
registration that made them has its own line, and two more lines per registration at INFO
cost a tenth of what the hub write costs.

Cheap on the hot path: a clock read and a counter per request, and the line is built only
when the ``dpsd.access`` logger is enabled for its level.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from starlette.types import Scope

from dpsd.http.exchange import HttpResponse

if TYPE_CHECKING:
    from dpsd.telemetry.metrics import Metrics

logger = logging.getLogger("dpsd.access")
UNMATCHED = "unmatched"
"""The operation of a request that matched no route."""
_SHOWN_QUERY = frozenset({"api-version"})
IN_PROCESS = "dpsd.in_process"
"""The scope key that marks a request dpsd sent to its own HTTP application."""


class AccessLog:
    """Counts and logs the requests of one API (``dps``, ``hub``); ``error_header``: the
    response header that names the error (lower case)."""

    def __init__(self, api: str, error_header: str, metrics: Metrics | None = None) -> None:
        self._api = api
        self._error_header = error_header.encode("latin-1")
        self._metrics = metrics

    def exchange(
        self, scope: Scope, operation: str, response: HttpResponse, started: float
    ) -> None:
        """A request answered; ``started``: ``time.perf_counter()`` at its arrival."""
        seconds = time.perf_counter() - started
        if self._metrics is not None:
            self._metrics.request(self._api, operation, response.status, seconds)
        level = logging.DEBUG if scope.get(IN_PROCESS) else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "%(method)s %(target)s %(status)d %(duration_ms).1fms",
                {
                    "method": scope["method"],
                    "target": loggable_target(scope),
                    "status": response.status,
                    "duration_ms": seconds * 1000,
                    "error": self._error_of(response),
                    "api": self._api,
                    "operation": operation,
                    "client": (scope.get("client") or ("",))[0] or None,
                },
            )

    def _error_of(self, response: HttpResponse) -> str | None:
        for name, value in response.headers:
            if name == self._error_header:
                return value.decode("latin-1")
        return None


def loggable_target(scope: Scope) -> str:
    """The request's path and query, each query value but ``api-version``'s replaced by
    ``***``."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    path = raw.decode("latin-1").split("?", 1)[0]
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return path
    parts = []
    for part in query.split("&"):
        name, has_value, _ = part.partition("=")
        if name in _SHOWN_QUERY:
            parts.append(part)
        else:
            parts.append(f"{name}=***" if has_value else "***")
    return f"{path}?{'&'.join(parts)}"
