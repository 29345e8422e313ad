"""``dpsd serve``: it builds the whole server, so this module imports it at once
(dpsd.cli.lazy imports it only for this command)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from dpsd.app import Runtime, build_runtime
from dpsd.cli.failures import USAGE, fail, warn
from dpsd.cli.options import (
    AmqpPort,
    Database,
    DataDir,
    DevicePollRate,
    Host,
    Hostname,
    HttpPort,
    HttpsPort,
    HubTimeout,
    Location,
    MaxLoopDelay,
    MaxRegistrationsInFlight,
    MetricsPort,
    MqttPort,
    RegistrationRate,
    RetryAfter,
    TlsNames,
    WebhookTimeout,
    Workers,
    make_settings,
    worker_count,
)
from dpsd.cli.store import opening_store
from dpsd.cli.supervised import record_workers, serve_supervised
from dpsd.data_dir import loose_permissions
from dpsd.endpoints import Endpoints
from dpsd.server import ListenError, serve
from dpsd.settings import (
    DEFAULT_AMQP_PORT,
    DEFAULT_HOST,
    DEFAULT_HTTPS_PORT,
    DEFAULT_HUB_TIMEOUT,
    DEFAULT_MAX_LOOP_DELAY,
    DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
    DEFAULT_MQTT_PORT,
    DEFAULT_RETRY_AFTER,
    DEFAULT_WEBHOOK_TIMEOUT,
    Settings,
    hostname_warning,
    remember_database,
)
from dpsd.storage.engine import sqlite_file
from dpsd.telemetry.logs import LogFormat, LogLevel, configure_logging
from dpsd.version import dpsd_version

LogLevelOption = Annotated[
    LogLevel,
    typer.Option(
        "--log-level",
        envvar="DPSD_LOG_LEVEL",
        case_sensitive=False,
        help="The least severe log lines dpsd writes (other libraries' from warning up).",
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="DPSD_LOG_FORMAT",
        case_sensitive=False,
        help="Log lines as text for a terminal, or as JSON objects, one a line.",
    ),
]


def _print_banner(
    console: Console, runtime: Runtime, endpoints: Endpoints, workers: list[int] | None = None
) -> None:
    port = int(endpoints.https.rsplit(":", 1)[1])
    console.print(
        f"[bold]dpsd[/bold] {dpsd_version()} is serving the Device Provisioning Service API"
    )
    console.print(f"  HTTPS endpoint     {endpoints.https}")
    console.print(f"  HTTP endpoint      {endpoints.http or 'off'}")
    console.print(f"  MQTT endpoint      {endpoints.mqtt or 'off'}")
    console.print(f"  AMQP endpoint      {endpoints.amqp or 'off'}")
    console.print(f"  Metrics endpoint   {endpoints.metrics or 'off'}")
    console.print(f"  ID scope           {runtime.id_scope}")
    console.print(f"  Connection string  {runtime.connection_string(port)}", soft_wrap=True)
    console.print(f"  CA certificate     {runtime.tls.ca_certificate}")
    store = "PostgreSQL" if runtime.settings.database else runtime.settings.database_url
    console.print(f"  Store              {store}")
    if workers is not None:
        pids = ", ".join(str(pid) for pid in workers)
        console.print(f"  Workers            {len(workers)} processes (pids {pids})")
    console.print("Stop with Ctrl+C.")


def _warn_at_start(settings: Settings) -> None:
    unreachable = hostname_warning(settings.host, settings.hostname)
    if unreachable is not None:
        warn(unreachable)
    for line in loose_permissions(settings.data_dir, sqlite_file(settings.database_url)):
        warn(line)


def _started(console: Console, runtime: Runtime, endpoints: Endpoints) -> None:
    """A server has started on the store: the data dir remembers it from now on."""
    if runtime.settings.database is not None:
        remember_database(runtime.settings.data_dir, runtime.settings.database)
    _print_banner(console, runtime, endpoints)


def _workers_serving(console: Console) -> Callable[[Runtime, Endpoints, list[int]], None]:
    """Every worker serves: the banner the first time, the endpoints file each time (with
    the process ids of the workers, which change as workers are started again)."""
    announced = False

    def serving(runtime: Runtime, endpoints: Endpoints, workers: list[int]) -> None:
        nonlocal announced
        record_workers(runtime.settings, endpoints, workers)
        if not announced:
            announced = True
            if runtime.settings.database is not None:
                remember_database(runtime.settings.data_dir, runtime.settings.database)
            _print_banner(console, runtime, endpoints, workers)

    return serving


def serve_command(
    data_dir: DataDir = None,
    database: Database = None,
    host: Host = DEFAULT_HOST,
    https_port: HttpsPort = DEFAULT_HTTPS_PORT,
    http_port: HttpPort = None,
    hostname: Hostname = None,
    tls_name: TlsNames = None,
    location: Location = None,
    retry_after: RetryAfter = DEFAULT_RETRY_AFTER,
    mqtt_port: MqttPort = DEFAULT_MQTT_PORT,
    webhook_timeout: WebhookTimeout = DEFAULT_WEBHOOK_TIMEOUT,
    hub_timeout: HubTimeout = DEFAULT_HUB_TIMEOUT,
    amqp_port: AmqpPort = DEFAULT_AMQP_PORT,
    metrics_port: MetricsPort = None,
    max_registrations_in_flight: MaxRegistrationsInFlight = DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
    registration_rate: RegistrationRate = None,
    device_poll_rate: DevicePollRate = None,
    max_loop_delay: MaxLoopDelay = DEFAULT_MAX_LOOP_DELAY,
    log_level: LogLevelOption = LogLevel.INFO,
    log_format: LogFormatOption = LogFormat.TEXT,
    workers: Workers = "1",
) -> None:
    """Serve the DPS service API and device registration over HTTPS (optionally HTTP too)
    and device registration over MQTT and AMQP; health probes at /healthz and /readyz."""
    settings = make_settings(
        data_dir,
        database,
        host,
        https_port,
        http_port,
        hostname,
        tls_name,
        location,
        retry_after,
        mqtt_port,
        webhook_timeout,
        hub_timeout,
        amqp_port,
        metrics_port,
        max_registrations_in_flight=max_registrations_in_flight,
        registration_rate=registration_rate,
        device_poll_rate=device_poll_rate,
        max_loop_delay=max_loop_delay,
        workers=worker_count(workers),
    )
    configure_logging(log_level, log_format)
    console = Console(highlight=False)
    if settings.workers > 1:
        serve_supervised(
            settings,
            database is not None,
            (log_level, log_format),
            lambda _runtime: _warn_at_start(settings),
            _workers_serving(console),
        )
        console.print("dpsd stopped.")
        return

    async def run() -> None:
        async with build_runtime(settings) as runtime:
            _warn_at_start(settings)
            await serve(runtime, lambda endpoints: _started(console, runtime, endpoints))

    try:
        with opening_store(settings, database is not None):
            asyncio.run(run())
    except ListenError as error:
        fail(str(error), USAGE)
    console.print("dpsd stopped.")
