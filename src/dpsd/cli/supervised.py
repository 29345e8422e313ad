"""``dpsd serve --workers N`` with N > 1: prepare the store once, bind the listeners once,
then supervise N workers serving them (dpsd.workers)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import typer

from dpsd.app import Runtime, build_runtime
from dpsd.cli.failures import USAGE, fail
from dpsd.cli.store import opening_store
from dpsd.endpoints import Endpoints, endpoints_file, record_endpoints
from dpsd.server import (
    ListenError,
    Listeners,
    bind_listeners,
    listener_endpoints,
    raise_open_file_limit,
    return_large_buffers_to_the_system,
)
from dpsd.settings import Settings
from dpsd.telemetry.logs import LogFormat, LogLevel, configure_logging
from dpsd.telemetry.metrics import count_in_shared_files, forget_process
from dpsd.tls import ensure_hub_certificates
from dpsd.workers.supervisor import Supervisor
from dpsd.workers.worker import serve_as_worker

Started = Callable[[Runtime, Endpoints, list[int]], None]


def serve_supervised(
    settings: Settings,
    database_given: bool,
    logs: tuple[LogLevel, LogFormat],
    prepared: Callable[[Runtime], None],
    started: Started,
) -> None:
    """Serve with ``settings.workers`` processes until SIGTERM or SIGINT. ``prepared`` is
    called once the store and data dir are ready, ``started`` once every worker serves
    (with their process ids) and again when a worker started again does."""

    async def prepare() -> Runtime:
        async with build_runtime(settings) as runtime:
            prepared(runtime)
            await ensure_hub_certificates(runtime.tls, await runtime.hubs.list(), runtime.now())
            return runtime

    with opening_store(settings, database_given):
        runtime = asyncio.run(prepare())
    try:
        listeners = bind_listeners(settings)
    except ListenError as error:
        fail(str(error), USAGE)
    return_large_buffers_to_the_system()  # the workers inherit it
    raise_open_file_limit()  # and this
    endpoints = listener_endpoints(settings.hostname, listeners)
    with _metrics_directory(settings) as metrics:
        supervisor = Supervisor(
            settings.workers,
            partial(_work, settings, database_given, logs, listeners, metrics),
            on_serving=lambda pids: started(runtime, endpoints, pids),
            on_exit=(lambda _pid: None) if metrics is None else partial(forget_process, metrics),
        )
        try:
            code = supervisor.run()
        finally:
            endpoints_file(settings.data_dir).unlink(missing_ok=True)
            listeners.close()
    if code:
        raise typer.Exit(code)


def record_workers(settings: Settings, endpoints: Endpoints, pids: list[int]) -> None:
    record_endpoints(settings.data_dir, endpoints, pids)


@contextmanager
def _metrics_directory(settings: Settings) -> Iterator[Path | None]:
    """Where the workers count their metrics together (owner-only), while they run."""
    if settings.metrics_port is None:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="dpsd-metrics-"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _work(
    settings: Settings,
    database_given: bool,
    logs: tuple[LogLevel, LogFormat],
    listeners: Listeners,
    metrics: Path | None,
    number: int,
    channel: socket.socket,
) -> int:
    """A worker process: its exit code (a failure to open the store said in one line)."""
    configure_logging(*logs, worker=number)
    if metrics is not None:
        count_in_shared_files(metrics)
    try:
        with opening_store(settings, database_given):
            asyncio.run(serve_as_worker(settings, listeners, number, channel, metrics))
    except typer.Exit as exit_:
        return int(exit_.exit_code)
    return 0
