"""Log lines in two formats: text for a terminal, JSON lines for a log pipeline.

dpsd logs with the standard library, each line's facts in one mapping passed as the
record's argument::

    logger.info("%(method)s %(target)s %(status)d", {"method": "GET", ..., "status": 200})

The message is formatted from the facts it names, and only when the line is emitted. The
text format appends the facts the message does not name as ``key=value`` (values with
spaces or quotes quoted as JSON strings); the JSON format writes every fact as a key of
its own. Facts that are None are left out. Either format adds the tracking id of the
request being served (``dpsd.telemetry.tracking``) and, in a worker of
``dpsd serve --workers N``, the worker's number (``worker``, 1 to N).

Text lines cannot be forged: characters that are not printable (a newline in an MQTT
client id, say) are written escaped.

A line costs tens of microseconds, most of it in the standard library's record keeping:
``configure_logging`` turns off what no dpsd line shows (the caller's file and line, thread
and process names), as the logging HOWTO's "Optimization" section describes.
"""

from __future__ import annotations

import enum
import json
import logging
import re
import sys
import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any, TextIO

from dpsd.telemetry.tracking import TRACKING_ID

DPSD_LOGGER = "dpsd"
OTHER_LIBRARIES_LEVEL = logging.WARNING
_NAMED = re.compile(r"%\((\w+)\)")
_BARE = re.compile(r"[\w.:/@+-]*")
_bare = _BARE.fullmatch


_LIBRARY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def configure_logging(
    level: LogLevel,
    log_format: LogFormat,
    stream: TextIO | None = None,
    worker: int | None = None,
) -> None:
    """Send every log line to ``stream`` (stderr) in ``log_format``: dpsd's own from
    ``level`` up, other libraries' (uvicorn, SQLAlchemy, httpx) from warnings up; each line
    names ``worker`` when this process is one of several serving together."""
    handler = logging.StreamHandler(stream or sys.stderr)
    json_lines = log_format is LogFormat.JSON
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(TrackingFilter())
    if worker is not None:
        handler.addFilter(WorkerFilter(worker))
    logging._srcfile = None  # no caller lookup: lines do not show it
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(OTHER_LIBRARIES_LEVEL)
    for name in _LIBRARY_LOGGERS:
        # uvicorn's own logging set-up gives its loggers handlers of their own and stops
        # them propagating; its lines go through ours instead
        library = logging.getLogger(name)
        for old in list(library.handlers):
            library.removeHandler(old)
        library.propagate = True
        library.setLevel(logging.NOTSET)
    logging.getLogger(DPSD_LOGGER).setLevel(level.value.upper())


class TrackingFilter(logging.Filter):
    """Marks each record with the tracking id of the request being served, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.tracking_id = TRACKING_ID.get()
        return True


class WorkerFilter(logging.Filter):
    """Marks each record with the number of the worker process that logs it."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def facts_of(record: logging.LogRecord) -> Mapping[str, Any]:
    """The facts a dpsd line carries (its argument mapping); none for other lines."""
    args = record.args
    if type(args) is dict or isinstance(args, Mapping):
        return args
    return {}


def timestamp(created: float) -> str:
    """UTC, to the millisecond: ``2026-12-01T10:00:00.123Z``."""
    seconds = int(created)
    return f"{_second(seconds)}.{int((created - seconds) * 1000):03d}Z"


@lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``, then any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        named = _named_in(record.msg) if isinstance(record.msg, str) else frozenset()
        facts = [
            f"{key}={text_value(value)}"
            for key, value in facts_of(record).items()
            if value is not None and key not in named
        ]
        tracking_id = getattr(record, "tracking_id", None)
        if tracking_id:
            facts.append(f"tracking_id={tracking_id}")
        worker = getattr(record, "worker", None)
        if worker is not None:
            facts.append(f"worker={worker}")
        line = f"{timestamp(record.created)} {record.levelname:<7} {record.name}: "
        line += printable(record.getMessage())
        if facts:
            line += "  " + " ".join(facts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message``, the facts,
    ``tracking_id``, ``worker`` and ``exception`` (a traceback) when there are."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in facts_of(record).items():
            if value is not None:
                entry.setdefault(key, value)
        tracking_id = getattr(record, "tracking_id", None)
        if tracking_id:
            entry.setdefault("tracking_id", tracking_id)
        worker = getattr(record, "worker", None)
        if worker is not None:
            entry["worker"] = worker  # the process's own, whatever a fact says
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


@lru_cache(maxsize=512)
def _named_in(template: str) -> frozenset[str]:
    """The facts a message template names (``%(name)s``)."""
    return frozenset(_NAMED.findall(template))


def printable(text: str) -> str:
    """``text`` with characters that are not printable escaped (``\\n``, ``\\x1b``)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)


def text_value(value: object) -> str:
    """A fact as the text format writes it: bare when it is one plain word, else quoted."""
    if type(value) is str:  # most facts: checked first
        text = value
    elif isinstance(value, int):
        return str(value)
    else:
        text = f"{value:.1f}" if isinstance(value, float) else str(value)
    if text and _bare(text):
        return text
    return json.dumps(text)
