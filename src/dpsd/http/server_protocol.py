"""The HTTP/1.1 protocol of dpsd's HTTPS and HTTP listeners: uvicorn's httptools protocol
(with client certificates and coalesced writes, ``dpsd.client_tls``), with bounds on request
heads and DPS error bodies for what it refuses before any application sees a request.

uvicorn bounds neither the size of a request head (``h11_max_incomplete_event_size`` is the
h11 protocol's; httptools buffers a header line of any length) nor the time a head may take
(its keep-alive timeout only covers the silence between requests, and stops at the first
byte). So here:

- A head may take ``head_limit`` bytes: past them, 431 and the connection closes. The bytes
  are counted as they arrive, before the parser buffers them (those of a read in which a
  head began after another request are not: a head may take one read more).
- A head must be complete ``head_timeout`` seconds after its first byte (a new
  connection's first head: after the connection opens), however its bytes trickle: else
  408 and the connection closes. One timer per connection, re-armed only when it fires, so
  a request costs a clock reading and no timer of its own.
- Bytes that are not HTTP/1.1 (a control character in a header value, say) get 400 with a
  DPS error body instead of uvicorn's plain text.

Each refusal carries the DPS error body: the listener cannot yet know whether a request is
for the DPS or a built-in hub (docs/compatibility.md).
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from dpsd.client_tls import ClientCertificateProtocol
from dpsd.http.errors import (
    HttpError,
    MalformedRequest,
    RequestHeadTimeout,
    RequestHeadTooLarge,
    closing_response,
    status_and_code,
)
from dpsd.telemetry.tracking import tracking

HEAD_LIMIT_BYTES = 32 * 1024
HEAD_TIMEOUT_SECONDS = 10.0
logger = logging.getLogger("dpsd.http")


class BoundedHeadProtocol(ClientCertificateProtocol):
    head_limit = HEAD_LIMIT_BYTES
    head_timeout = HEAD_TIMEOUT_SECONDS

    _head_since: float | None = None
    """When the head being read began; None while no head is awaited (a request is being
    served, or the connection idles between requests under uvicorn's keep-alive timeout)."""
    _head_bytes = 0
    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.head_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._head_since is not None:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._head_since is not None and self._head_bytes > self.head_limit:
            self._refuse(RequestHeadTooLarge(_too_large_message(self.head_limit)))

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_since = self.loop.time()

    def on_headers_complete(self) -> None:
        self._head_since = None
        self._head_bytes = 0
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the connection over: its own deadlines apply."""
        self._stop_head_timer()
        super().handle_websocket_upgrade()

    def send_400_response(self, msg: str) -> None:
        """The parser refused the bytes (uvicorn logs ``msg``)."""
        self._refuse(
            MalformedRequest(
                "The request is not valid HTTP/1.1: its request line or a header is "
                "malformed (a control character in a header value, for example)"
            )
        )

    def _check_head(self) -> None:
        since = self._head_since
        now = self.loop.time()
        if since is not None and now - since >= self.head_timeout:
            self._head_timer = None
            self._refuse(
                RequestHeadTimeout(
                    f"The request head was not complete within {self.head_timeout:g} seconds"
                )
            )
            return
        due = self.head_timeout if since is None else since + self.head_timeout - now
        self._head_timer = self.loop.call_later(due, self._check_head)

    def _refuse(self, error: HttpError) -> None:
        """Answer ``error`` and close; a response already under way cannot be followed by
        another, so then the connection just closes."""
        self._stop_head_timer()
        self._head_since = None
        if self.transport.is_closing():
            return
        with tracking() as tracking_id:
            _log_refusal(error, self.client)
            if self.cycle is None or self.cycle.response_complete:
                now = datetime.now(UTC)
                headers = self.server_state.default_headers
                self.transport.write(closing_response(error, tracking_id, now, headers))
        self.transport.close()

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


def _too_large_message(limit: int) -> str:
    return f"The request head (request line and headers) is larger than {limit // 1024} KB"


def _log_refusal(error: HttpError, client: tuple[str, int] | None) -> None:
    status, code = status_and_code(error)
    facts = {
        "event": "request_refused",
        "status": status,
        "error_code": code,
        "reason": error.message,
        "client": client[0] if client else None,
    }
    logger.info("request refused before routing: %(reason)s", facts)
