"""Options shared by the dpsd commands, each also read from a DPSD_* environment variable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

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
    default_data_dir,
    default_hostname,
    remembered_database,
)

if TYPE_CHECKING:
    from dpsd.service.throttling import Rate

HELP_OPTIONS: dict[str, object] = {"help_option_names": ["-h", "--help"]}


def command_group(help: str) -> typer.Typer:
    """A group of commands, with help as plain text: Rich's help panels cut long option
    names short, and loading them costs a tenth of a second at every ``--help``."""
    return typer.Typer(
        help=help,
        no_args_is_help=True,
        add_completion=False,
        rich_markup_mode=None,
        context_settings=HELP_OPTIONS,
    )


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", envvar="DPSD_DATA_DIR", help="Where dpsd keeps its state.", show_default=False
    ),
]
Database = Annotated[
    str | None,
    typer.Option(
        "--database",
        envvar="DPSD_DATABASE",
        help="postgresql://... to share one store between instances (default: SQLite).",
    ),
]
Host = Annotated[str, typer.Option("--host", envvar="DPSD_HOST", help="Address to listen on.")]
HttpsPort = Annotated[
    int,
    typer.Option("--https-port", envvar="DPSD_HTTPS_PORT", help="HTTPS port (0: any free port)."),
]
HttpPort = Annotated[
    int | None,
    typer.Option(
        "--http-port",
        envvar="DPSD_HTTP_PORT",
        help="Also serve plain HTTP on this port (off by default).",
    ),
]
Hostname = Annotated[
    str | None,
    typer.Option(
        "--hostname",
        envvar="DPSD_HOSTNAME",
        metavar="NAME",
        help="Name clients use to reach dpsd: in the connection string and the certificate"
        " (default: localhost, or the --host address when localhost does not reach it).",
        show_default=False,
    ),
]
MqttPort = Annotated[
    int | None,
    typer.Option(
        "--mqtt-port",
        envvar="DPSD_MQTT_PORT",
        help="MQTT over TLS port for devices (0: any free port; -1: off).",
    ),
]
AmqpPort = Annotated[
    int | None,
    typer.Option(
        "--amqp-port",
        envvar="DPSD_AMQP_PORT",
        help="AMQP over TLS port for devices (0: any free port; -1: off).",
    ),
]
MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        envvar="DPSD_METRICS_PORT",
        help="Serve Prometheus metrics at /metrics over plain HTTP on this port (0: any free "
        "port; off by default).",
    ),
]
Location = Annotated[
    str | None,
    typer.Option(
        "--location",
        envvar="DPSD_LOCATION",
        help="Where this service stands: geoLatency prefers hubs of the same location.",
    ),
]
RetryAfter = Annotated[
    int,
    typer.Option(
        "--retry-after",
        envvar="DPSD_RETRY_AFTER",
        help="Seconds devices are told to wait between polls of a registration.",
    ),
]
WebhookTimeout = Annotated[
    float,
    typer.Option(
        "--webhook-timeout",
        envvar="DPSD_WEBHOOK_TIMEOUT",
        help="Seconds a custom allocation webhook has to answer.",
    ),
]
HubTimeout = Annotated[
    float,
    typer.Option(
        "--hub-timeout",
        envvar="DPSD_HUB_TIMEOUT",
        help="Seconds an IoT hub has, in all, to take a provisioned device.",
    ),
]
MaxRegistrationsInFlight = Annotated[
    int,
    typer.Option(
        "--max-registrations-in-flight",
        envvar="DPSD_MAX_REGISTRATIONS_IN_FLIGHT",
        help="Registrations served at once; more are answered 429 with a retry-after (0: no cap).",
    ),
]
RegistrationRate = Annotated[
    str | None,
    typer.Option(
        "--registration-rate",
        envvar="DPSD_REGISTRATION_RATE",
        help="Register requests allowed, COUNT/SECONDS (Azure: 1000/60); more are answered "
        "429 (off by default).",
    ),
]
DevicePollRate = Annotated[
    str | None,
    typer.Option(
        "--device-poll-rate",
        envvar="DPSD_DEVICE_POLL_RATE",
        help="Polls and status lookups allowed per device, COUNT/SECONDS (Azure: 5/10); more "
        "are answered 429 (off by default).",
    ),
]
MaxLoopDelay = Annotated[
    float,
    typer.Option(
        "--max-loop-delay",
        envvar="DPSD_MAX_LOOP_DELAY",
        metavar="SECONDS",
        help="While dpsd runs this many seconds behind, new device connections are closed "
        "before TLS so that connected devices are served in time (0: never).",
    ),
]
Workers = Annotated[
    str,
    typer.Option(
        "--workers",
        envvar="DPSD_WORKERS",
        help="Processes serving the listeners together (auto: one per core).",
    ),
]
TlsNames = Annotated[
    list[str] | None,
    typer.Option(
        "--tls-name",
        envvar="DPSD_TLS_NAMES",
        help="More names or addresses for the server certificate.",
    ),
]


def make_settings(
    data_dir: Path | None,
    database: str | None,
    host: str = DEFAULT_HOST,
    https_port: int = DEFAULT_HTTPS_PORT,
    http_port: int | None = None,
    hostname: str | None = None,
    tls_names: list[str] | None = None,
    location: str | None = None,
    retry_after: int = DEFAULT_RETRY_AFTER,
    mqtt_port: int | None = DEFAULT_MQTT_PORT,
    webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
    hub_timeout: float = DEFAULT_HUB_TIMEOUT,
    amqp_port: int | None = DEFAULT_AMQP_PORT,
    metrics_port: int | None = None,
    *,
    max_registrations_in_flight: int = DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT,
    registration_rate: str | None = None,
    device_poll_rate: str | None = None,
    max_loop_delay: float = DEFAULT_MAX_LOOP_DELAY,
    workers: int = 1,
) -> Settings:
    """Without ``--database``, a data dir keeps the store it was first served with."""
    names = tuple(
        name.strip() for entry in tls_names or [] for name in entry.split(",") if name.strip()
    )
    folder = (data_dir or default_data_dir()).expanduser().resolve()
    database = database or remembered_database(folder)
    try:
        return Settings(
            data_dir=folder,
            host=host,
            https_port=https_port,
            http_port=http_port,
            database=database,
            hostname=hostname or default_hostname(host),
            tls_names=names,
            location=location,
            retry_after=retry_after,
            mqtt_port=_port_or_off(mqtt_port),
            amqp_port=_port_or_off(amqp_port),
            metrics_port=metrics_port,
            webhook_timeout=webhook_timeout,
            hub_timeout=hub_timeout,
            max_registrations_in_flight=max_registrations_in_flight or None,
            registration_rate=_rate_or_off(registration_rate),
            device_poll_rate=_rate_or_off(device_poll_rate),
            max_loop_delay=max_loop_delay or None,
            workers=workers,
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error


def _port_or_off(port: int | None) -> int | None:
    """A negative port turns its listener off."""
    return None if port is not None and port < 0 else port


def _rate_or_off(text: str | None) -> Rate | None:
    """``COUNT/SECONDS``; nothing, ``off`` or ``0``: no limit."""
    if text is None or text.strip().lower() in ("", "off", "0"):
        return None
    from dpsd.service.throttling import Rate

    return Rate.parse(text)


def worker_count(text: str) -> int:
    """``--workers``: a number, or ``auto`` for the cores this process may run on."""
    if text.strip().lower() == "auto":
        return len(os.sched_getaffinity(0))
    try:
        return int(text)
    except ValueError:
        raise typer.BadParameter(f"workers must be a number or auto, not {text!r}") from None
