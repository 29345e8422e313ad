"""dpsd's Prometheus metrics, and the ASGI app that serves them at ``GET /metrics``.

Each dpsd process counts into a registry of its own (tests run many in one process). The
workers of ``dpsd serve --workers N`` count together instead: prometheus-client's
multiprocess mode, each worker writing its values into files of one directory the
supervisor made, and any worker answering a scrape with the sum over all of them (a worker
that died keeps its counts; its open connections are dropped). Their process's CPU, memory
and garbage collector are then not served: a scrape would describe whichever worker
answered it. The
service API's hot path pays a dictionary lookup, a counter increment and a histogram
observation per request: the labelled children are made once per label set and kept, since
``labels(...)`` itself costs several times as much. The README's table documents each
metric.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    make_asgi_app,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric

from dpsd.version import dpsd_version

METRICS_PATH = "/metrics"
REQUEST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
REGISTRATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60)
DEVICE_PROTOCOLS = ("mqtt", "amqp")
_VALUES_HEADER = 8  # a worker's file starts with how much of it is used (prometheus-client)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
AsgiApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


def count_in_shared_files(directory: Path) -> None:
    """From now on, every metric this process makes keeps its values in files of
    ``directory``, which the other worker processes share (before any Metrics is made)."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def forget_process(directory: Path, pid: int) -> None:
    """A worker process has ended: its gauges of things open now no longer count."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


class SharedFilesCollector:
    """The sum of the values every worker keeps in the files of ``directory``: what
    prometheus-client's ``MultiProcessCollector`` serves, but for a file a worker is making
    at that moment. Such a file is empty until the worker sizes it, and the library's
    collector fails on it (a worker starting beside another, or a scrape as a worker counts
    something for the first time); it holds no value yet and is left for the next scrape.
    A file that goes while the files are read (the supervisor forgets a worker that ended)
    has them listed again."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterable[Metric]:
        for _ in range(2):
            with contextlib.suppress(FileNotFoundError):  # gone since listed: list again
                return _merged(self._written_files())
        return _merged(self._written_files())

    def _written_files(self) -> list[str]:
        files = []
        for path in self._directory.glob("*.db"):
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_size >= _VALUES_HEADER:
                    files.append(str(path))
        return files


def _merged(files: list[str]) -> Iterable[Metric]:
    merged: Iterable[Metric] = multiprocess.MultiProcessCollector.merge(  # type: ignore[no-untyped-call]
        files, accumulate=True
    )
    return merged


class Metrics:
    """The metrics of one dpsd process. ``process``: also the process's CPU, memory and
    open files, the Python platform and garbage collector (what the default registry of
    prometheus-client would have). ``shared``: the directory of the workers counting
    together (count_in_shared_files), whose sum this registry serves."""

    def __init__(self, *, process: bool = False, shared: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        if shared is not None:
            registry = CollectorRegistry(auto_describe=True)  # counts, served from the files
            self.registry.register(SharedFilesCollector(shared))
        elif process:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        Gauge(
            "dpsd_info",
            "The dpsd version serving",
            ["version"],
            registry=registry,
            multiprocess_mode="max",
        ).labels(dpsd_version()).set(1)
        self._requests = Counter(
            "dpsd_http_requests",
            "HTTP requests answered, by API (dps: service and device API; hub: built-in IoT "
            "hubs), operation (method and route template) and status",
            ["api", "operation", "status"],
            registry=registry,
        )
        self._request_seconds = Histogram(
            "dpsd_http_request_duration_seconds",
            "Time from an HTTP request's arrival to its answer, by API and operation",
            ["api", "operation"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self._registrations = Counter(
            "dpsd_registrations",
            "Device registrations, by protocol, attestation and outcome (assigned, failed, "
            "disabled, refused, error)",
            ["protocol", "attestation", "outcome"],
            registry=registry,
        )
        self._registration_seconds = Histogram(
            "dpsd_registration_duration_seconds",
            "Time from a register request to the end of its operation, by protocol and outcome",
            ["protocol", "outcome"],
            buckets=REGISTRATION_BUCKETS,
            registry=registry,
        )
        self._connections = Gauge(
            "dpsd_device_connections",
            "Device connections open now, by protocol (TLS and WebSockets together)",
            ["protocol"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._throttled = Counter(
            "dpsd_device_requests_throttled",
            "Device requests answered 429 (throttled), by protocol, request (register, poll, "
            "status) and the limit that refused them (in_flight, registration_rate, "
            "device_poll_rate)",
            ["protocol", "request", "limit"],
            registry=registry,
        )
        self._in_flight = Gauge(
            "dpsd_registrations_in_flight",
            "Registrations let in whose operation has not settled yet",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self._shared = shared is not None
        self._in_flight_count: Callable[[], int] | None = None
        self._shed = Counter(
            "dpsd_device_connections_shed",
            "Device connections closed before TLS because dpsd ran late (--max-loop-delay), "
            "by protocol",
            ["protocol"],
            registry=registry,
        )
        self._store_errors = Counter(
            "dpsd_store_errors", "Store statements that failed", registry=registry
        )
        for protocol in DEVICE_PROTOCOLS:
            self._connections.labels(protocol)
        # Children by label values, as the lookup of a label set costs a lock and a tuple.
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._registration_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}

    def request(self, api: str, operation: str, status: int, seconds: float) -> None:
        """An HTTP request answered; ``operation``: its method and route template."""
        key = (api, operation, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self._requests.labels(api, operation, str(status)),
                self._request_seconds.labels(api, operation),
            )
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def registration(
        self, protocol: str, attestation: str, outcome: str, seconds: float | None = None
    ) -> None:
        """A registration ended (or was refused: no ``seconds``)."""
        key = (protocol, attestation, outcome)
        children = self._registration_children.get(key)
        if children is None:
            children = (
                self._registrations.labels(protocol, attestation, outcome),
                self._registration_seconds.labels(protocol, outcome),
            )
            self._registration_children[key] = children
        children[0].inc()
        if seconds is not None:
            children[1].observe(seconds)

    def throttled(self, protocol: str, request: str, limit: str) -> None:
        """A device request answered 429."""
        self._throttled.labels(protocol, request, limit).inc()

    def watch_in_flight(self, count: Callable[[], int]) -> None:
        """Where the gauge of registrations in flight reads its value (when scraped; when
        counting with other workers, at each ``refresh``)."""
        if self._shared:
            self._in_flight_count = count
            self.refresh()
        else:
            self._in_flight.set_function(count)

    def refresh(self) -> None:
        """Write the values read from functions where the other workers' scrapes read them
        (workers call this every second); nothing for a process counting alone."""
        if self._in_flight_count is not None:
            self._in_flight.set(self._in_flight_count())

    def connection_shed(self, protocol: str) -> None:
        self._shed.labels(protocol).inc()

    def connection_opened(self, protocol: str) -> None:
        self._connections.labels(protocol).inc()

    def connection_closed(self, protocol: str) -> None:
        self._connections.labels(protocol).dec()

    def store_error(self) -> None:
        self._store_errors.inc()


def metrics_app(metrics: Metrics) -> AsgiApp:
    """Serves ``GET /metrics`` in Prometheus's text format (OpenMetrics when asked for, gzip
    when accepted); any other path is 404."""
    exposition: AsgiApp = make_asgi_app(metrics.registry)

    async def app(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == METRICS_PATH and scope["method"] in ("GET", "HEAD"):
            await exposition(scope, receive, send)
            return
        body = b"Not found: metrics are at /metrics\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8")]
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app
