"""The tracking id of the request being served.

Each request gets one when it arrives: an HTTP request (the ``x-ms-request-id`` header and
the ``trackingId`` of a DPS error body), an MQTT or AMQP device request, a device's
connection attempt. The edge sets it here for as long as it serves the request, so every
log line emitted meanwhile carries it, the use cases' included, and so does the rest of a
registration that a request started in the background (a task copies the context it is
created in).
"""

from __future__ import annotations

import os
from contextvars import ContextVar, Token

TRACKING_ID: ContextVar[str | None] = ContextVar("dpsd_tracking_id", default=None)
"""Set and reset it directly on hot paths (``token = TRACKING_ID.set(...)``)."""


def new_tracking_id() -> str:
    """A random (version 4) UUID as text, as ``str(uuid.uuid4())`` writes it."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


class tracking:  # noqa: N801 - used as a function: ``with tracking() as tracking_id:``
    """Serve a request under ``tracking_id`` (a new one by default). A class rather than a
    generator: every device request enters one."""

    __slots__ = ("_id", "_token")

    def __init__(self, tracking_id: str | None = None) -> None:
        self._id = tracking_id or new_tracking_id()
        self._token: Token[str | None] | None = None

    def __enter__(self) -> str:
        self._token = TRACKING_ID.set(self._id)
        return self._id

    def __exit__(self, *_exc: object) -> None:
        assert self._token is not None
        TRACKING_ID.reset(self._token)


def current_tracking_id() -> str:
    """The tracking id of the request being served; a new one outside any."""
    return TRACKING_ID.get() or new_tracking_id()
