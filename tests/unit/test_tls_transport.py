"""dpsd's own server-side TLS (``dpsd.tls_transport``), in real TLS handshakes on a loopback
socket with asyncio's TLS as the client: bytes both ways, large transfers under flow
control, the extra information protocols read, client certificates, both ways of closing,
the handshake deadline and bytes that are not TLS."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from dpsd.client_tls import ClientCertificateTrust, verified_chain
from dpsd.tls import ensure_tls
from dpsd.tls_paths import TlsFiles
from dpsd.tls_transport import TlsTransport, serve_tls
from tests.certs import issue
from tests.tls_streams import start_tls_server

HOST = "127.0.0.105"
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Server:
    port: int
    trust: ClientCertificateTrust
    tls: TlsFiles
    seen: list[dict[str, object]] = field(default_factory=list)
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.ca_certificate))

    async def connect(
        self, context: ssl.SSLContext | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            HOST, self.port, ssl=context or self.client_context(), server_hostname="localhost"
        )


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return ensure_tls(tmp_path / "data", ("localhost",), datetime.now(UTC))


async def serving(
    tls: TlsFiles, handler: Handler, handshake_timeout: float = 10.0
) -> AsyncIterator[Server]:
    trust = ClientCertificateTrust(tls)
    server = await start_tls_server(
        handler, trust.context, handshake_timeout=handshake_timeout, host=HOST, port=0
    )
    async with server:
        yield Server(server.sockets[0].getsockname()[1], trust, tls)


@pytest.fixture
async def echo(tls: TlsFiles) -> AsyncIterator[Server]:
    """Echoes every byte until the client's end of stream, then closes; records what the
    transport told about the connection."""
    seen: list[dict[str, object]] = []
    ended = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        seen.append(
            {
                "sslcontext": writer.get_extra_info("sslcontext"),
                "version": ssl_object.version(),
                "cipher": writer.get_extra_info("cipher"),
                "sockname": writer.get_extra_info("sockname"),
                "chain": verified_chain(ssl_object),
            }
        )
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
        writer.close()
        await writer.wait_closed()
        ended.set()

    async for server in serving(tls, handle):
        server.seen = seen
        server.ended = ended
        yield server


async def test_bytes_go_both_ways_with_the_connection_facts_asyncio_gives(echo: Server) -> None:
    reader, writer = await echo.connect()
    writer.write(b"hello")
    assert await reader.readexactly(5) == b"hello"
    writer.close()
    await writer.wait_closed()
    (seen,) = echo.seen
    assert seen["sslcontext"] is echo.trust.context
    assert seen["version"] == "TLSv1.3"
    assert seen["cipher"]
    assert seen["sockname"][0] == HOST  # type: ignore[index]
    assert seen["chain"] == ()


async def test_socket_details_forgotten_once_read_leave_the_tls_facts_and_the_stream(
    tls: TlsFiles,
) -> None:
    """A device listener reads the peer's name once; asyncio's socket transport then keeps
    nothing for later asks (if asyncio keeps them elsewhere one day, this fails)."""
    seen: list[object] = []

    async def forget_then_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        transport = writer.transport
        assert isinstance(transport, TlsTransport)
        assert transport.get_extra_info("sockname")[0] == HOST
        transport.forget_socket_details()
        seen.extend(transport.get_extra_info(name) for name in ("peername", "sockname", "socket"))
        seen.append(transport.get_extra_info("ssl_object").version())
        while data := await reader.read(1024):
            writer.write(data)
        writer.close()

    async for server in serving(tls, forget_then_echo):
        reader, writer = await server.connect()
        writer.write(b"still served")
        assert await reader.readexactly(12) == b"still served"
        writer.close()
        await writer.wait_closed()
    assert seen == [None, None, None, "TLSv1.3"]


async def test_large_transfers_pass_under_flow_control(echo: Server) -> None:
    """4 MB each way, written before anything is read: the server's writes back up and
    pause, its reads pause with them, and every byte arrives once, in order."""
    payload = bytes(range(256)) * (4 * 4096)
    reader, writer = await echo.connect()
    writer.write(payload)
    received = await reader.readexactly(len(payload))
    assert received == payload
    writer.close()
    await writer.wait_closed()


class PausingReader(asyncio.Protocol):
    """Pauses reading at every piece of plaintext and resumes a moment later; records what
    came and the most ciphertext the incoming BIO held while paused."""

    def __init__(self, done: asyncio.Future[bytes], expected: int) -> None:
        self.done = done
        self.expected = expected
        self.received = bytearray()
        self.most_in_bio = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, TlsTransport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) >= self.expected:
            self.done.set_result(bytes(self.received))
            return
        self.transport.pause_reading()
        tls = self.transport._tls
        self.most_in_bio = max(self.most_in_bio, tls._incoming.pending)
        asyncio.get_running_loop().call_later(0.001, self.transport.resume_reading)


async def test_a_protocol_that_pauses_often_gets_every_byte_in_order_and_the_bio_stays_small(
    tls: TlsFiles,
) -> None:
    """The rest of a socket read that came after a pause waits outside the incoming BIO (in
    it, it would leave the BIO that large for the connection's life)."""
    payload = bytes(range(256)) * 256  # 64 KB, in 128 records of 512 bytes
    done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
    readers: list[PausingReader] = []

    def reader() -> PausingReader:
        readers.append(PausingReader(done, len(payload)))
        return readers[-1]

    trust = ClientCertificateTrust(tls)
    server = await serve_tls(
        reader, trust.context, handshake_timeout=10.0, bio_slice=256, host=HOST, port=0
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cafile=str(tls.ca_certificate))
        _, writer = await asyncio.open_connection(
            HOST, port, ssl=client, server_hostname="localhost"
        )
        writer.writelines(payload[start : start + 512] for start in range(0, len(payload), 512))
        assert await asyncio.wait_for(done, 10) == payload
        assert readers[0].most_in_bio <= 256
        writer.close()


async def test_the_client_close_notify_is_the_end_of_stream_and_is_answered(
    echo: Server,
) -> None:
    _, writer = await echo.connect()
    writer.close()
    await writer.wait_closed()  # asyncio waits for the server's close_notify
    await echo.ended.wait()


async def test_a_server_close_reaches_the_client_as_the_end_of_stream(tls: TlsFiles) -> None:
    async def greet_and_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"bye")
        writer.close()

    async for server in serving(tls, greet_and_close):
        reader, writer = await server.connect()
        assert await reader.read() == b"bye"
        writer.close()


async def test_a_client_certificate_chain_is_verified_and_shown(echo: Server) -> None:
    ca = issue("fleet-ca", ca=True)
    device = issue("device-1", ca)
    echo.trust.trust([ca.pem])
    folder = echo.tls.ca_certificate.parent
    certificate, key = folder / "device.pem", folder / "device.key"
    certificate.write_text(device.pem)
    key.write_bytes(
        device.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = echo.client_context()
    context.load_cert_chain(str(certificate), str(key))
    reader, writer = await echo.connect(context)
    writer.write(b"x")
    assert await reader.readexactly(1) == b"x"
    writer.close()
    await writer.wait_closed()
    assert echo.seen[0]["chain"] == (device.pem, ca.pem)


async def test_no_handshake_within_the_deadline_closes_the_connection(tls: TlsFiles) -> None:
    handled: list[object] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handled.append(writer)

    async for server in serving(tls, handle, handshake_timeout=0.2):
        reader, writer = await asyncio.open_connection(HOST, server.port)
        assert await reader.read() == b""  # closed by the server, with nothing said
        writer.close()
    assert handled == []


async def test_handshakes_done_in_time_stand_while_a_stalled_one_after_them_times_out(
    tls: TlsFiles,
) -> None:
    """The deadlines of a listener's handshakes share one timer: connections that finished
    theirs are not touched when it fires, the one that did not is closed."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readexactly(4))

    async for server in serving(tls, handle, handshake_timeout=0.3):
        done_early = [await server.connect() for _ in range(3)]
        stalled_reader, stalled_writer = await asyncio.open_connection(HOST, server.port)
        assert await stalled_reader.read() == b""  # closed by the server after its deadline
        stalled_writer.close()
        for reader, writer in done_early:  # past their own deadlines too, and still served
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()


async def test_bytes_that_are_not_tls_end_the_connection_with_an_alert(echo: Server) -> None:
    reader, writer = await asyncio.open_connection(HOST, echo.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = await reader.read()
    assert answer[:1] in (b"", b"\x15")  # nothing, or a TLS alert record
    writer.close()
    assert echo.seen == []


async def test_a_client_that_leaves_without_close_notify_ends_the_stream(echo: Server) -> None:
    reader, writer = await echo.connect()
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    writer.get_extra_info("socket").shutdown(socket.SHUT_WR)  # a FIN, no close_notify
    await echo.ended.wait()  # the server's stream ended: the handler finished
    assert await reader.read() == b""
    writer.close()
