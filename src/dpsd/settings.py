"""The one frozen settings object every part of dpsd is built from."""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

from dpsd.service.throttling import Rate, ThrottleLimits

DEFAULT_HTTPS_PORT = 8443
DEFAULT_MQTT_PORT = 8883
DEFAULT_AMQP_PORT = 5671
DEFAULT_HOST = "127.0.0.1"
DEFAULT_HOSTNAME = "localhost"
DEFAULT_RETRY_AFTER = 3
DEFAULT_WEBHOOK_TIMEOUT = 10.0
DEFAULT_HUB_TIMEOUT = 10.0
MIN_TIMEOUT = 0.1
DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT = 200
DEFAULT_MAX_LOOP_DELAY = 2.0
MAX_TIMEOUT = 120.0
MAX_WORKERS = 256


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "dpsd"


@dataclass(frozen=True, slots=True)
class Settings:
    """``hostname`` is the name clients use to reach dpsd: it goes into the service
    connection string and the server certificate. ``tls_names`` adds more names.
    ``location`` is where this service stands, for geoLatency allocation; ``retry_after``
    is how long devices are told to wait between polls; ``metrics_port`` is where Prometheus
    metrics are served over plain HTTP (None: nowhere); ``workers`` is how many processes
    serve the listeners together (dpsd.workers)."""

    data_dir: Path
    host: str = DEFAULT_HOST
    https_port: int = DEFAULT_HTTPS_PORT
    http_port: int | None = None
    mqtt_port: int | None = DEFAULT_MQTT_PORT
    amqp_port: int | None = DEFAULT_AMQP_PORT
    metrics_port: int | None = None
    database: str | None = None
    hostname: str = DEFAULT_HOSTNAME
    tls_names: tuple[str, ...] = ()
    location: str | None = None
    retry_after: int = DEFAULT_RETRY_AFTER
    webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT
    hub_timeout: float = DEFAULT_HUB_TIMEOUT
    """Seconds an IoT hub has, in all, to take a provisioned device."""
    max_registrations_in_flight: int | None = DEFAULT_MAX_REGISTRATIONS_IN_FLIGHT
    """Registrations served at once before more are answered 429 (None: no cap)."""
    registration_rate: Rate | None = None
    """Register requests allowed per instance (None: no limit)."""
    device_poll_rate: Rate | None = None
    """Polls and status lookups allowed per device (None: no limit)."""
    max_loop_delay: float | None = DEFAULT_MAX_LOOP_DELAY
    """Seconds the event loop may run late before new device connections are refused
    (None: never)."""
    workers: int = 1

    def __post_init__(self) -> None:
        ports = (
            ("https", self.https_port),
            ("http", self.http_port),
            ("mqtt", self.mqtt_port),
            ("amqp", self.amqp_port),
            ("metrics", self.metrics_port),
        )
        for name, port in ports:
            if port is not None and not 0 <= port <= 65535:
                raise ValueError(f"the {name} port must be between 0 and 65535, not {port}")
        if self.http_port is not None and self.http_port == self.https_port != 0:
            raise ValueError("the https and http listeners need different ports")
        if not 1 <= self.retry_after <= 300:
            raise ValueError(f"retry-after must be 1 to 300 seconds, not {self.retry_after}")
        for name, seconds in (("webhook", self.webhook_timeout), ("hub", self.hub_timeout)):
            if not MIN_TIMEOUT <= seconds <= MAX_TIMEOUT:
                raise ValueError(
                    f"the {name} timeout must be {MIN_TIMEOUT:g} to {MAX_TIMEOUT:g} seconds, "
                    f"not {seconds:g}"
                )
        _ = self.throttle_limits  # refuses limits the policy cannot work with
        if self.max_loop_delay is not None and not 0 < self.max_loop_delay <= MAX_TIMEOUT:
            raise ValueError(
                f"the loop delay bound must be more than 0 and at most {MAX_TIMEOUT:g} seconds, "
                f"not {self.max_loop_delay:g}"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be 1 to {MAX_WORKERS}, not {self.workers}")
        if not self.hostname:
            raise ValueError("the hostname must not be empty")
        if self.database is not None and not self.database.startswith(("sqlite:", "postgresql")):
            raise ValueError("the database must be a sqlite:/// or postgresql:// URL")

    @property
    def throttle_limits(self) -> ThrottleLimits:
        """When device requests are answered 429; a refused device is told to wait the
        polling retry-after (and jitter)."""
        return ThrottleLimits(
            max_in_flight=self.max_registrations_in_flight,
            registration_rate=self.registration_rate,
            device_poll_rate=self.device_poll_rate,
            retry_after=self.retry_after,
        )

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.data_dir / 'dpsd.db'}"

    @property
    def certificate_names(self) -> tuple[str, ...]:
        """Names the server certificate must cover."""
        names = ["localhost", "127.0.0.1", "::1", self.hostname, *self.tls_names]
        if _is_specific_address(self.host):
            names.append(self.host)
        return tuple(dict.fromkeys(names))


LOCALHOST_REACHES = ("localhost", "127.0.0.1", "::1", "0.0.0.0", "::", "")  # noqa: S104
"""Listening addresses that ``localhost`` reaches: the loopback ones it names, and every
address at once."""


def default_hostname(host: str) -> str:
    """The name clients are told when ``--hostname`` is not given: ``localhost`` when it
    reaches the listening address, else that address (or name) itself; an IPv6 address,
    which a connection string cannot carry with a port, leaves ``localhost`` (and
    ``hostname_warning`` says so)."""
    if host in LOCALHOST_REACHES or ":" in host:
        return DEFAULT_HOSTNAME
    return host


def hostname_warning(host: str, hostname: str) -> str | None:
    """Why the name clients are told does not reach the listening address, if it does not."""
    if hostname != DEFAULT_HOSTNAME or host in LOCALHOST_REACHES:
        return None
    return (
        f"dpsd listens on {host} only, which localhost does not reach: the connection string"
        " names localhost; pass --hostname with a name or address clients reach it by"
    )


def _is_specific_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return bool(host)
    return not address.is_unspecified


def store_file(data_dir: Path) -> Path:
    """Where a data dir remembers the store it was first served with (owner-readable only:
    a database URL may hold a password)."""
    return data_dir / "store.json"


def remembered_database(data_dir: Path) -> str | None:
    try:
        recorded = json.loads(store_file(data_dir).read_text())
    except (OSError, ValueError):
        return None
    database = recorded.get("database") if isinstance(recorded, dict) else None
    return database if isinstance(database, str) else None


def remember_database(data_dir: Path, database: str) -> None:
    if remembered_database(data_dir) == database:
        return
    path = store_file(data_dir)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"database": database}, handle)
