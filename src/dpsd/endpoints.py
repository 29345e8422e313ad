"""The endpoints a running ``dpsd serve`` records in its data dir (``endpoints.json``), so
that ``dpsd info`` and the client commands reach the ports it really bound.

Only the standard library (and the settings): the client commands read this on every start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from dpsd.settings import Settings


@dataclass(frozen=True, slots=True)
class Endpoints:
    https: str
    http: str | None
    mqtt: str | None = None
    amqp: str | None = None
    metrics: str | None = None

    def as_json(self) -> dict[str, str | None]:
        """The two endpoints ``dpsd info --json`` promises; MQTT's, AMQP's and the metrics'
        are in the file."""
        return {"https": self.https, "http": self.http}


def endpoints_file(data_dir: Path) -> Path:
    """Written while a server runs, so that ``dpsd info`` reports the ports it really bound."""
    return data_dir / "endpoints.json"


def record_endpoints(
    data_dir: Path, endpoints: Endpoints, workers: list[int] | None = None
) -> None:
    """Written by the process that clients' tools should see as the server (the supervisor
    of several workers, with their process ids)."""
    path = endpoints_file(data_dir)
    draft = path.with_suffix(".tmp")
    recorded: dict[str, object] = {
        **endpoints.as_json(),
        "mqtt": endpoints.mqtt,
        "amqp": endpoints.amqp,
        "metrics": endpoints.metrics,
        "pid": os.getpid(),
    }
    if workers is not None:
        recorded["workers"] = workers
    draft.write_text(json.dumps(recorded))
    draft.replace(path)


def running_endpoints(data_dir: Path) -> Endpoints | None:
    """The endpoints of the dpsd process serving ``data_dir``, if one is alive."""
    path = endpoints_file(data_dir)
    try:
        recorded = json.loads(path.read_text())
        os.kill(int(recorded["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Endpoints(
        https=str(recorded["https"]),
        http=recorded.get("http"),
        mqtt=recorded.get("mqtt"),
        amqp=recorded.get("amqp"),
        metrics=recorded.get("metrics"),
    )


def serving_endpoints(settings: Settings) -> Endpoints:
    """The endpoints of the server running on the settings' data dir, else those the
    settings name."""
    running = running_endpoints(settings.data_dir)
    if running is not None:
        return running
    http = (
        None if settings.http_port is None else f"http://{settings.hostname}:{settings.http_port}"
    )
    return Endpoints(https=f"https://{settings.hostname}:{settings.https_port}", http=http)
