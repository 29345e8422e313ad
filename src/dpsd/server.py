"""Runs the listeners of ``dpsd serve`` on uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import resource
import signal
import socket
import ssl
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import uvicorn

from dpsd.app import Runtime
from dpsd.devices.shedding import LoopDelay, Shedding
from dpsd.endpoints import Endpoints, endpoints_file, record_endpoints
from dpsd.http.server_protocol import BoundedHeadProtocol
from dpsd.settings import Settings
from dpsd.telemetry.metrics import METRICS_PATH, metrics_app
from dpsd.tls import ensure_hub_certificates
from dpsd.tls_transport import DEVICE_BIO_SLICE, TlsListener, TlsServerProtocol, serve_tls

GRACEFUL_SHUTDOWN_SECONDS = 5
TRUST_REFRESH_SECONDS = 30
DEVICE_TLS_HANDSHAKE_SECONDS = 10.0
LISTEN_BACKLOG = 2048  # connections the kernel holds for dpsd to accept (a reconnect storm)
HTTPS_TLS_HANDSHAKE_SECONDS = 60.0
M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
LARGE_ALLOCATION_BYTES = 128 * 1024
OPEN_FILES_WANTED = 16_384  # 10,000 device connections (Admission), HTTPS clients, the store
logger = logging.getLogger("dpsd.server")


class _Server(uvicorn.Server):
    """dpsd runs several listeners in one loop and handles signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class ListenError(Exception):
    """A listener's address cannot be bound."""


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts so that failures are reported
    plainly and the real port is known at once (connections wait in the backlog)."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM
        )[0]
        listener = socket.socket(family, kind, protocol)
    except OSError as error:
        raise ListenError(f"dpsd cannot listen on {host}:{port}: {error}") from error
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(LISTEN_BACKLOG)
    except OSError as error:
        listener.close()
        reason = error.strerror or str(error)
        raise ListenError(f"dpsd cannot listen on {host}:{port}: {reason}") from error
    return listener


def return_large_buffers_to_the_system() -> None:
    """Large buffers come from mmap and go back to the system when freed (glibc's default),
    instead of from the heap once a free has raised glibc's threshold for that, which keeps
    the peak of many connections long after they closed. dpsd's listeners no longer hold a
    large buffer per connection (``dpsd.tls_transport``), but asyncio's TLS still gives each
    of dpsd's own outgoing TLS connections (a linked IoT hub, a custom allocation webhook) a
    256 KB read buffer; 160 hostile TLS connections at once kept 52 MB with asyncio's TLS on
    the listeners, 10 MB with the threshold fixed. Nothing elsewhere than glibc."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt if name else None
    except (OSError, AttributeError):
        mallopt = None
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, LARGE_ALLOCATION_BYTES)


@dataclass(slots=True)
class Listeners:
    """The listening sockets of ``dpsd serve``: HTTPS always; HTTP, MQTT, AMQP and metrics
    each None when off. Bound once, by the process that then serves them or hands them to
    its workers."""

    https: socket.socket
    http: socket.socket | None = None
    mqtt: socket.socket | None = None
    amqp: socket.socket | None = None
    metrics: socket.socket | None = None

    def bound(self) -> list[socket.socket]:
        every = (self.https, self.http, self.mqtt, self.amqp, self.metrics)
        return [listener for listener in every if listener is not None]

    def close(self) -> None:
        for listener in self.bound():
            listener.close()


def bind_listeners(settings: Settings) -> Listeners:
    """Every listener the settings ask for. Raises ListenError when a port cannot be bound
    (those bound already are closed)."""
    listeners = Listeners(bind(settings.host, settings.https_port))
    try:
        if settings.http_port is not None:
            listeners.http = bind(settings.host, settings.http_port)
        if settings.mqtt_port is not None:
            listeners.mqtt = bind(settings.host, settings.mqtt_port)
        if settings.amqp_port is not None:
            listeners.amqp = bind(settings.host, settings.amqp_port)
        if settings.metrics_port is not None:
            listeners.metrics = bind(settings.host, settings.metrics_port)
    except ListenError:
        listeners.close()
        raise
    return listeners


def raise_open_file_limit(wanted: int = OPEN_FILES_WANTED) -> None:
    """Every connection is a file descriptor: raise the soft RLIMIT_NOFILE (often 1,024) to
    what 10,000 device connections and the HTTPS clients need, as far as the hard limit
    allows, and say so when it does not (``ulimit -Hn``; systemd's ``LimitNOFILE``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    allowed = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if allowed > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (allowed, hard))
    if allowed < wanted:
        logger.warning(
            "dpsd may open only %d files (the hard RLIMIT_NOFILE): fewer connections than "
            "its limits admit will be served; raise it to %d (ulimit -Hn, LimitNOFILE)",
            allowed,
            wanted,
        )


async def serve(runtime: Runtime, on_ready: Callable[[Endpoints], None]) -> None:
    """Serve until SIGINT or SIGTERM. Raises ListenError when a port cannot be bound."""
    return_large_buffers_to_the_system()
    raise_open_file_limit()
    listeners = bind_listeners(runtime.settings)
    try:
        await serve_on(runtime, listeners, on_ready)
    finally:
        listeners.close()


async def _device_servers(
    runtime: Runtime, listeners: Listeners, delay: LoopDelay
) -> list[asyncio.Server]:
    """TLS servers on the device sockets (client certificates asked for, as on HTTPS), on
    dpsd's own TLS (``dpsd.tls_transport``). A TLS handshake gets as long as a protocol's
    handshake: it happens before admission. While the loop runs ``delay`` late beyond the
    settings' bound, new connections are closed before TLS (``dpsd.devices.shedding``)."""
    device_listeners = (
        ("mqtt", listeners.mqtt, runtime.mqtt.listener),
        ("amqp", listeners.amqp, runtime.amqp.listener),
    )
    bound = runtime.settings.max_loop_delay
    return [
        await serve_tls(
            device_listener.connection_protocol,
            runtime.client_trust.context,
            handshake_timeout=DEVICE_TLS_HANDSHAKE_SECONDS,
            bio_slice=DEVICE_BIO_SLICE,
            gate=Shedding(delay, bound, protocol, runtime.metrics).wrap,
            sock=listener,
            backlog=LISTEN_BACKLOG,  # asyncio listens again, with 100 unless told
        )
        for protocol, listener, device_listener in device_listeners
        if listener is not None
    ]


async def serve_on(
    runtime: Runtime,
    listeners: Listeners,
    on_ready: Callable[[Endpoints], None],
    *,
    worker: bool = False,
    issue_hub_certificates: bool = True,
) -> None:
    """Serve on sockets bound already until SIGINT or SIGTERM. ``worker``: one of several
    processes serving them, whose supervisor records the endpoints; ``issue_hub_certificates``:
    this process makes the certificates of built-in hubs linked meanwhile (one worker does)."""
    settings = runtime.settings
    served = [(_listener(runtime, tls=True), listeners.https)]
    if listeners.http is not None:
        served.append((_listener(runtime, tls=False), listeners.http))
    if listeners.metrics is not None:
        served.append((_metrics_listener(runtime), listeners.metrics))
    servers = [server for server, _ in served]
    delay = LoopDelay()
    device_servers = await _device_servers(runtime, listeners, delay)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop, servers)
    try:
        if issue_hub_certificates:
            await _ensure_hub_certificates(runtime)
        endpoints = listener_endpoints(settings.hostname, listeners)
        if not worker:
            record_endpoints(settings.data_dir, endpoints)
        on_ready(endpoints)
        refresher = asyncio.create_task(_refresh_trust(runtime, issue_hub_certificates))
        watcher = asyncio.create_task(delay.watch())
        try:
            await asyncio.gather(*(server.serve(sockets=[sock]) for server, sock in served))
        finally:
            refresher.cancel()
            watcher.cancel()
            for device_server in device_servers:
                device_server.close()
            runtime.mqtt.close_all()
            runtime.amqp.close_all()
    finally:
        if not worker:
            endpoints_file(settings.data_dir).unlink(missing_ok=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _refresh_trust(runtime: Runtime, issue_hub_certificates: bool) -> None:
    """Other dpsd processes on the same store enroll certificates and link built-in hubs
    too: pick them up."""
    while True:
        await asyncio.sleep(TRUST_REFRESH_SECONDS)
        try:
            await runtime.refresh_trust()
        except Exception:
            logger.exception("reloading the certificates that vouch for devices failed")
        if issue_hub_certificates:
            await _ensure_hub_certificates(runtime)


async def _ensure_hub_certificates(runtime: Runtime) -> None:
    """A certificate in this data dir for every built-in hub of the store."""
    try:
        hubs = await runtime.hubs.list()
        await ensure_hub_certificates(runtime.tls, hubs, runtime.now())
    except Exception:
        logger.exception("issuing the certificates of the built-in IoT hubs failed")


def _listener(runtime: Runtime, *, tls: bool) -> _Server:
    """The HTTPS listener (``tls``) or the plain HTTP one. uvicorn itself serves plain HTTP
    on both: on HTTPS, dpsd's own TLS (``dpsd.tls_transport``) wraps each of its protocols,
    with client certificates asked for (``dpsd.client_tls``)."""
    config = uvicorn.Config(
        runtime.asgi_app,
        http=_tls_http(runtime.client_trust.context) if tls else BoundedHeadProtocol,  # type: ignore[arg-type]
        ws=runtime.websockets,  # type: ignore[arg-type]
        log_level="warning",
        log_config=None,  # uvicorn's lines go through dpsd's log format
        lifespan="off",
        access_log=False,
        # Idle TLS keep-alive connections otherwise hold shutdown until the client answers
        # the TLS close (asyncio waits up to 30 s); requests in flight get this long.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return _Server(config)


def _tls_http(context: ssl.SSLContext) -> Callable[..., TlsServerProtocol]:
    """What uvicorn makes each HTTPS connection's protocol with (as with a protocol class):
    TLS, with uvicorn's HTTP protocol on top once the handshake is done. A handshake gets as
    long as asyncio gives one (60 s); the request head's own deadline starts after it."""
    listener = TlsListener(HTTPS_TLS_HANDSHAKE_SECONDS)

    def http(**uvicorn_arguments: Any) -> TlsServerProtocol:
        return TlsServerProtocol(
            context, lambda: BoundedHeadProtocol(**uvicorn_arguments), listener
        )

    return http


def _metrics_listener(runtime: Runtime) -> _Server:
    """Plain HTTP, for Prometheus: ``GET /metrics`` only."""
    config = uvicorn.Config(
        metrics_app(runtime.metrics),
        ws="none",
        log_level="warning",
        log_config=None,
        lifespan="off",
        access_log=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return _Server(config)


def _stop(listeners: list[_Server]) -> None:
    for listener in listeners:
        listener.should_exit = True


def listener_endpoints(hostname: str, listeners: Listeners) -> Endpoints:
    """What clients are told to reach, at the ports really bound."""

    def url(scheme: str, listener: socket.socket | None) -> str | None:
        return None if listener is None else f"{scheme}://{hostname}:{listener.getsockname()[1]}"

    metrics = url("http", listeners.metrics)
    return Endpoints(
        https=f"https://{hostname}:{listeners.https.getsockname()[1]}",
        http=url("http", listeners.http),
        mqtt=url("mqtts", listeners.mqtt),
        amqp=url("amqps", listeners.amqp),
        metrics=None if metrics is None else f"{metrics}{METRICS_PATH}",
    )
