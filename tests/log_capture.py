"""dpsd's log lines captured as ``dpsd serve`` writes them (``configure_logging``), with the
root logger put back as it was afterwards."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dpsd.telemetry.logs import DPSD_LOGGER, LogFormat, LogLevel, configure_logging


@contextmanager
def captured_logs(
    log_format: LogFormat = LogFormat.JSON,
    level: LogLevel = LogLevel.DEBUG,
    worker: int | None = None,
) -> Iterator[io.StringIO]:
    root, dpsd = logging.getLogger(), logging.getLogger(DPSD_LOGGER)
    saved = (list(root.handlers), root.level, dpsd.level)
    stream = io.StringIO()
    configure_logging(level, log_format, stream, worker)
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        dpsd.setLevel(saved[2])


def json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines written so far."""
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def events(stream: io.StringIO, event: str, **facts: Any) -> list[dict[str, Any]]:
    """The JSON lines of ``event`` whose facts include ``facts``."""
    return [
        line
        for line in json_lines(stream)
        if line.get("event") == event and all(line.get(k) == v for k, v in facts.items())
    ]
