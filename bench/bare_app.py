"""The baseline of bench/service_api.py: a bare ASGI handler on dpsd's server stack.

It serves ``PUT /enrollments/{id}`` and ``GET /enrollments/{id}`` and does only what any
server of that API must: a PUT parses the JSON body (msgspec), stores it in SQLite keyed by
the id and echoes it; a GET reads the body back and returns it. There is no
authentication, validation, routing table or error format.

The stack is the one dpsd's ``serve`` runs: uvicorn inside ``asyncio.run`` on a socket
bound beforehand, with the same Config (httptools, TLS with the server certificate of
dpsd's data dir, no lifespan, no access log), and SQLite through
aiosqlite with WAL and ``synchronous=NORMAL``. Each write is its own transaction
(autocommit), as each of dpsd's is.

    python bench/bare_app.py --certfile CERT --keyfile KEY --database FILE --ready-file FILE

Once listening it writes ``{"port": N, "pid": P}`` to the ready file; SIGTERM or SIGINT
stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec
import uvicorn

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

PREFIX = "/enrollments/"
UPSERT = (
    "INSERT INTO documents (id, body) VALUES (?, ?) "
    "ON CONFLICT (id) DO UPDATE SET body = excluded.body"
)
SELECT = "SELECT body FROM documents WHERE id = ?"
JSON_HEADERS = [(b"content-type", b"application/json; charset=utf-8")]


class BareApp:
    """Parse, store and echo; read back. Nothing else."""

    def __init__(self, database: aiosqlite.Connection) -> None:
        self._database = database

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if not path.startswith(PREFIX) or "/" in path[len(PREFIX) :]:
            await _respond(send, 404, b"")
            return
        key = path[len(PREFIX) :].lower()
        if scope["method"] == "PUT":
            await self._put(key, receive, send)
        elif scope["method"] == "GET":
            await self._get(key, send)
        else:
            await _respond(send, 405, b"")

    async def _put(self, key: str, receive: Receive, send: Send) -> None:
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        try:
            msgspec.json.decode(body)
        except msgspec.DecodeError:
            await _respond(send, 400, b"")
            return
        await self._database.execute_fetchall(UPSERT, (key, body.decode("utf-8")))
        await _respond(send, 200, bytes(body))

    async def _get(self, key: str, send: Send) -> None:
        rows = list(await self._database.execute_fetchall(SELECT, (key,)))
        if not rows:
            await _respond(send, 404, b"")
            return
        document: str = rows[0][0]
        await _respond(send, 200, document.encode("utf-8"))


async def _respond(send: Send, status: int, body: bytes) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _Server(uvicorn.Server):
    """As dpsd's: the caller handles signals, not uvicorn. Reports its port once listening."""

    def __init__(self, config: uvicorn.Config, ready_file: Path) -> None:
        super().__init__(config)
        self._ready_file = ready_file

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            port = self.servers[0].sockets[0].getsockname()[1]
            draft = self._ready_file.with_suffix(".tmp")
            draft.write_text(json.dumps({"port": port, "pid": os.getpid()}))
            draft.replace(self._ready_file)


async def open_database(path: Path) -> aiosqlite.Connection:
    database = await aiosqlite.connect(path, isolation_level=None, timeout=30)
    await database.execute("PRAGMA journal_mode=WAL")
    await database.execute("PRAGMA synchronous=NORMAL")
    await database.execute("PRAGMA busy_timeout=30000")
    await database.execute(
        "CREATE TABLE IF NOT EXISTS documents (id TEXT PRIMARY KEY, body TEXT NOT NULL)"
    )
    return database


def bind(host: str, port: int) -> socket.socket:
    """A listening socket, bound before uvicorn starts, as dpsd binds its own."""
    family, kind, protocol, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    listener = socket.socket(family, kind, protocol)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(address)
    listener.listen(2048)
    return listener


async def serve(arguments: argparse.Namespace) -> None:
    database = await open_database(arguments.database)
    listener = bind(arguments.host, arguments.port)
    config = uvicorn.Config(
        BareApp(database),
        ssl_certfile=str(arguments.certfile),
        ssl_keyfile=str(arguments.keyfile),
        log_level="warning",
        lifespan="off",
        access_log=False,
    )
    server = _Server(config, arguments.ready_file)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, setattr, server, "should_exit", True)
    try:
        await server.serve(sockets=[listener])
    finally:
        arguments.ready_file.unlink(missing_ok=True)
        listener.close()
        await database.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--certfile", type=Path, required=True)
    parser.add_argument("--keyfile", type=Path, required=True)
    parser.add_argument("--database", type=Path, required=True)
    parser.add_argument("--ready-file", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
