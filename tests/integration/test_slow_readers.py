"""A device that stops reading: over a real TCP connection, plain or on dpsd's TLS, dpsd's
writes back up in its transport, and the connection ends after the listener's write
timeout, its socket and buffers released (closing it would wait for ever to flush to a
device that reads nothing)."""

from __future__ import annotations

import asyncio
import socket
import ssl

import pytest

from dpsd.devices.listener import Admission, DeviceListener
from dpsd.tls_transport import serve_tls
from tests.conftest import ServiceApi
from tests.log_capture import captured_logs, events

ANSWER = b"x" * (8 << 20)  # far more than the socket buffers and the transport's high-water


class FloodingConnection:
    """Established at once; answers anything with ANSWER, the first time only."""

    def __init__(self) -> None:
        self.established = True
        self.finished = False
        self.registration_id: str | None = "dev-slow"
        self.close_reason: str | None = None
        self.answered = 0

    def wait_time(self) -> float | None:
        return 30.0

    async def receive(self, data: bytes) -> bytes:
        self.answered += 1
        return ANSWER if self.answered == 1 else b""

    def time_passed(self) -> bytes:
        return b""


class Observed(asyncio.Protocol):
    """The listener's protocol for a connection, telling when the connection is gone."""

    def __init__(self, inner: asyncio.Protocol, gone: asyncio.Queue[None]) -> None:
        self.inner = inner
        self.gone = gone

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.inner.connection_lost(exc)
        self.gone.put_nowait(None)


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_a_device_that_reads_nothing_is_dropped_after_the_write_timeout(
    tls: bool, service_api: ServiceApi
) -> None:
    connection = FloodingConnection()
    listener = DeviceListener(
        lambda _chain: connection, Admission(), "mqtt", write_timeout=0.3, protocol="mqtt"
    )
    served: asyncio.Queue[None] = asyncio.Queue()

    def observed() -> Observed:
        return Observed(listener.connection_protocol(), served)

    runtime = service_api.runtime
    if tls:
        context = runtime.client_trust.context
        server = await serve_tls(
            observed, context, handshake_timeout=10.0, host="127.0.0.1", port=0
        )
    else:
        server = await asyncio.get_running_loop().create_server(observed, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    device = socket.socket()
    device.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    device.setblocking(False)
    loop = asyncio.get_running_loop()
    writer = None
    try:
        with captured_logs() as stream:
            await loop.sock_connect(device, ("127.0.0.1", port))
            if tls:
                client = ssl.create_default_context(cafile=str(runtime.tls.ca_certificate))
                _, writer = await asyncio.open_connection(
                    sock=device, ssl=client, server_hostname="localhost"
                )
                writer.write(b"register")  # and then never read
            else:
                await loop.sock_sendall(device, b"register")  # and then never read
            await asyncio.wait_for(served.get(), timeout=10)
        (line,) = events(stream, "disconnected")
        assert line["reason"] == "the device read nothing dpsd wrote for 0.3 s"
        assert line["registration_id"] == "dev-slow"
    finally:
        if writer is not None:
            writer.transport.abort()
        device.close()
        server.close()
        await server.wait_closed()
