"""Device connections refused before TLS while dpsd runs late: the decision, what it logs and
counts, a real TLS listener refusing and then serving again, and the loop's lateness as
measured."""

from __future__ import annotations

import asyncio
import ssl
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from dpsd.client_tls import ClientCertificateTrust
from dpsd.devices.shedding import LoopDelay, Shedding
from dpsd.telemetry.metrics import Metrics
from dpsd.tls import ensure_tls
from tests.log_capture import captured_logs, json_lines
from tests.tls_streams import start_tls_server


class Late:
    """A LoopDelay the test sets."""

    def __init__(self) -> None:
        self.seconds = 0.0


class Transport:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def shed_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(
        "dpsd_device_connections_shed_total", {"protocol": "mqtt"}
    )
    return value or 0.0


def test_connections_are_refused_only_while_the_loop_runs_too_late() -> None:
    late, metrics = Late(), Metrics()
    served = asyncio.Protocol()
    make = Shedding(late, 2.0, "mqtt", metrics).wrap(lambda: served)  # type: ignore[arg-type]
    assert make() is served
    late.seconds = 2.5
    for _ in range(3):
        refused = make()
        assert refused is not served
        transport = Transport()
        refused.connection_made(transport)  # type: ignore[arg-type]
        assert transport.closed
    assert shed_count(metrics) == 3
    late.seconds = 0.5
    assert make() is served


def test_without_a_bound_nothing_is_refused() -> None:
    late = Late()
    late.seconds = 1000.0
    served = asyncio.Protocol()
    assert Shedding(late, None, "mqtt").wrap(lambda: served)() is served  # type: ignore[arg-type]


def test_shedding_is_logged_when_it_starts_and_ends() -> None:
    late = Late()
    make = Shedding(late, 1.0, "mqtt").wrap(asyncio.Protocol)  # type: ignore[arg-type]
    with captured_logs() as stream:
        late.seconds = 3.0
        make()
        make()
        late.seconds = 0.0
        make()
        make()
    lines = json_lines(stream)
    assert [line["event"] for line in lines] == ["shedding_started", "shedding_ended"], lines
    assert (lines[0]["level"], lines[0]["protocol"], lines[0]["delay_s"]) == (
        "WARNING",
        "mqtt",
        3.0,
    )
    assert lines[1]["refused"] == 2


async def test_a_tls_listener_closes_connections_before_tls_then_serves_again(
    tmp_path: Path,
) -> None:
    files = ensure_tls(tmp_path / "data", ("localhost",), datetime.now(UTC))
    client = ssl.create_default_context(cafile=str(files.ca_certificate))
    late = Late()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        opening = asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        return await asyncio.wait_for(opening, 10)

    shedding = Shedding(late, 1.0, "mqtt")  # type: ignore[arg-type]
    context = ClientCertificateTrust(files).context
    server = await start_tls_server(
        handle, context, handshake_timeout=5, gate=shedding.wrap, host="127.0.0.1", port=0
    )
    port = server.sockets[0].getsockname()[1]
    async with server:
        late.seconds = 5.0
        with pytest.raises((ConnectionError, ssl.SSLError)):
            await connect()
        late.seconds = 0.0
        reader, writer = await connect()
        assert await asyncio.wait_for(reader.read(), 10) == b"hello"
        writer.close()


async def test_the_delay_is_how_late_the_loop_ran_its_probe() -> None:
    delay = LoopDelay(every=0.05)
    watcher = asyncio.create_task(delay.watch())
    try:
        await asyncio.sleep(0)  # the watcher sets its first probe
        assert delay.seconds == 0.0
        time.sleep(0.3)  # noqa: ASYNC251 - the loop is kept busy: the probe comes late
        for _ in range(5):  # the due timer, then the watcher, get their turns
            await asyncio.sleep(0)
        assert delay.seconds >= 0.25 - 0.05
    finally:
        watcher.cancel()
