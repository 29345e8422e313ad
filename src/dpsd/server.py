"""Runs the listeners of ``dpsd serve`` on uvicorn until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from dpsd.app import Runtime


class _Server(uvicorn.Server):
    """dpsd runs several listeners in one loop and handles signals itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass(frozen=True, slots=True)
class Endpoints:
    https: str
    http: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"https": self.https, "http": self.http}


def endpoints_file(data_dir: Path) -> Path:
    """Written while a server runs, so that ``dpsd info`` reports the ports it really bound."""
    return data_dir / "endpoints.json"


def _record_endpoints(data_dir: Path, endpoints: Endpoints) -> None:
    path = endpoints_file(data_dir)
    draft = path.with_suffix(".tmp")
    draft.write_text(json.dumps({**endpoints.as_json(), "pid": os.getpid()}))
    draft.replace(path)


def running_endpoints(data_dir: Path) -> Endpoints | None:
    """The endpoints of the dpsd process serving ``data_dir``, if one is alive."""
    path = endpoints_file(data_dir)
    try:
        recorded = json.loads(path.read_text())
        os.kill(int(recorded["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Endpoints(https=str(recorded["https"]), http=recorded.get("http"))


def _bound_port(server: uvicorn.Server) -> int:
    port: int = server.servers[0].sockets[0].getsockname()[1]
    return port


async def serve(runtime: Runtime, on_ready: Callable[[Endpoints], None]) -> None:
    settings = runtime.settings
    listeners = [_listener(runtime, settings.https_port, tls=True)]
    if settings.http_port is not None:
        listeners.append(_listener(runtime, settings.http_port, tls=False))

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, _stop, listeners)
    tasks = [asyncio.create_task(listener.serve()) for listener in listeners]
    try:
        while not all(listener.started for listener in listeners):
            if any(task.done() for task in tasks):
                break
            await asyncio.sleep(0.02)
        if all(listener.started for listener in listeners):
            endpoints = _endpoints(runtime, listeners)
            _record_endpoints(settings.data_dir, endpoints)
            on_ready(endpoints)
        await asyncio.gather(*tasks)
    finally:
        endpoints_file(settings.data_dir).unlink(missing_ok=True)
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
    failed = [task for task in tasks if task.exception() is not None]
    if failed or not all(listener.started for listener in listeners):
        raise SystemExit(f"dpsd could not listen on {settings.host}: is the port in use?")


def _listener(runtime: Runtime, port: int, *, tls: bool) -> _Server:
    config = uvicorn.Config(
        runtime.asgi_app,
        host=runtime.settings.host,
        port=port,
        ssl_certfile=str(runtime.tls.server_certificate) if tls else None,
        ssl_keyfile=str(runtime.tls.server_key) if tls else None,
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    return _Server(config)


def _stop(listeners: list[_Server]) -> None:
    for listener in listeners:
        listener.should_exit = True


def _endpoints(runtime: Runtime, listeners: list[_Server]) -> Endpoints:
    hostname = runtime.settings.hostname
    https = f"https://{hostname}:{_bound_port(listeners[0])}"
    http = f"http://{hostname}:{_bound_port(listeners[1])}" if len(listeners) > 1 else None
    return Endpoints(https=https, http=http)
