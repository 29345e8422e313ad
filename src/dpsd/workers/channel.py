"""What the supervisor and its workers tell each other, over one socket pair per worker:
one JSON object a line, ``{"kind": ...}`` and the kind's facts.

- ``ready`` (worker to supervisor): the worker serves its listeners.
- ``trust`` (a worker to the supervisor, which passes it to every other worker): the worker
  has come to trust these device certificates (PEM, ``certificates``).
"""

from __future__ import annotations

import json
from typing import Any

READY = "ready"
TRUST = "trust"
MAX_LINE = 16 * 1024 * 1024
"""A line longer than this is no message (a certificate is a few kilobytes)."""


def message(kind: str, **facts: Any) -> bytes:
    return json.dumps({"kind": kind, **facts}).encode() + b"\n"


class ChannelError(Exception):
    """The other side sent something that is no message."""


class Lines:
    """Splits bytes read into whole messages."""

    def __init__(self) -> None:
        self._partial = b""

    def feed(self, data: bytes) -> list[tuple[bytes, dict[str, Any]]]:
        """Each complete line, as read and as parsed."""
        *lines, self._partial = (self._partial + data).split(b"\n")
        if len(self._partial) > MAX_LINE:
            raise ChannelError("a line longer than any message")
        parsed = []
        for line in lines:
            try:
                content = json.loads(line)
            except ValueError as error:
                raise ChannelError(f"a line that is no JSON: {error}") from None
            if not isinstance(content, dict) or not isinstance(content.get("kind"), str):
                raise ChannelError("a line that is no message")
            parsed.append((line + b"\n", content))
        return parsed
