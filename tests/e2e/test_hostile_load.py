"""Hostile load against a running ``dpsd serve`` on 127.0.0.1: HTTPS clients sending endless
request heads or trickling them, MQTT clients trickling their CONNECT or announcing oversized
packets, all at once, beside a well-behaved client. The well-behaved client is served
throughout, each hostile connection is cut at its limit, and the server's memory comes back
close to where it started. Counts and times are bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.mqtt.codec import ConnAck, Connect, ConnectReturnCode, encode
from tests.conftest import sas_token
from tests.e2e.process import DpsdProcess, start_dpsd
from tests.integration.test_device_registration_api import device_token
from tests.mqtt_device import BareMqttDevice

pytestmark = pytest.mark.e2e
API = "?api-version=2021-10-01"
KEY = base64.b64encode(b"k" * 32).decode()
HOSTILE_EACH = 40  # connections of each hostile kind
HOSTILE_SECONDS = 12.0  # how long the hostile peers keep at it: past the 10 s deadlines
SERVED_WITHIN = 3.0  # seconds a well-behaved request may take meanwhile
MEMORY_MARGIN = 48 * 1024 * 1024
"""What the server may keep after the load: the allocator's peak from some 160 TLS connections
open at once (each has buffers of some hundreds of KB while it lives), not the bytes the
peers sent (an endless head alone would otherwise cost megabytes a connection)."""
LINE = b"x-filler: " + b"f" * 1014 + b"\r\n"


def open_files(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def settled(pid: int, files: int) -> int:
    """The server's resident memory once it holds no more files open than ``files`` (the
    hostile connections are closed on its side too); bounded."""
    deadline = time.monotonic() + 15
    while open_files(pid) > files and time.monotonic() < deadline:
        time.sleep(0.1)  # polling another process: no event to wait on
    assert open_files(pid) <= files, "the server kept connections open"
    return resident_bytes(pid)


def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        pytest.skip("needs /proc to read the server's memory")
    for line in status.read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc")


@dataclass
class Server:
    process: DpsdProcess
    https_port: int
    mqtt_port: int
    context: ssl.SSLContext
    owner_key: str
    closed_early: dict[str, int] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        return str(self.process.info["idScope"])

    async def open_https(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.https_port, ssl=self.context, server_hostname="localhost"
        )

    async def open_mqtt(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection(
            "127.0.0.1", self.mqtt_port, ssl=self.context, server_hostname="localhost"
        )

    def cut(self, kind: str) -> None:
        self.closed_early[kind] = self.closed_early.get(kind, 0) + 1


def enrollment(registration_id: str) -> dict[str, Any]:
    keys = {"primaryKey": KEY, "secondaryKey": KEY}
    return {
        "registrationId": registration_id,
        "attestation": {"type": "symmetricKey", "symmetricKey": keys},
    }


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def endless_head(server: Server, until: float) -> None:
    """Header lines, 8 KB at a time, until the server cuts the connection."""
    reader, writer = await server.open_https()
    try:
        writer.write(f"GET /enrollments/x{API} HTTP/1.1\r\nHost: localhost\r\n".encode())
        while time.monotonic() < until:
            writer.write(LINE * 8)
            await writer.drain()
            if await answered(reader, 0.05):
                server.cut("endless head")
                return
    except (OSError, ssl.SSLError):  # reset: the server closed with our bytes unread
        server.cut("endless head")
    finally:
        writer.close()


async def trickled(
    server: Server, until: float, opening: bytes, unit: bytes, kind: str, *, mqtt: bool
) -> None:
    """``opening``, then ``unit`` every 0.5 s, until the server cuts the connection."""
    reader, writer = await (server.open_mqtt() if mqtt else server.open_https())
    try:
        writer.write(opening)
        while time.monotonic() < until:
            if await answered(reader, 0.5):
                server.cut(kind)
                return
            writer.write(unit)
            await writer.drain()
    except (OSError, ssl.SSLError):
        server.cut(kind)
    finally:
        writer.close()


async def answered(reader: asyncio.StreamReader, seconds: float) -> bool:
    """Whether the server answered or closed within ``seconds``."""
    try:
        await asyncio.wait_for(reader.read(65536), timeout=seconds)
    except TimeoutError:
        return False
    return True


async def oversized_mqtt(server: Server) -> None:
    """A CONNECT announcing 1 MB: the server closes at once."""
    reader, writer = await server.open_mqtt()
    with contextlib.suppress(OSError, ssl.SSLError):
        writer.write(bytes([0x10, 0x80, 0x80, 0x40]) + b"\0" * 4096)
        await writer.drain()
        if await asyncio.wait_for(reader.read(), timeout=10) == b"":
            server.cut("oversized packet")
    writer.close()


async def well_behaved(server: Server, until: float) -> list[float]:
    """HTTPS reads and writes and MQTT connects, one after another: how long each took."""
    token = sas_token("localhost", "provisioningserviceowner", server.owner_key)
    durations: list[float] = []
    async with httpx.AsyncClient(
        base_url=f"https://localhost:{server.https_port}",
        verify=server.context,
        headers={"Authorization": token},
        timeout=30,
    ) as client:
        while time.monotonic() < until:
            started = time.monotonic()
            body = enrollment("calm-1")
            put = await client.put(
                "/enrollments/calm-1" + API, json=body, headers={"If-Match": "*"}
            )
            assert put.status_code == 200, put.text
            assert (await client.get("/enrollments/calm-1" + API)).status_code == 200
            durations.append(time.monotonic() - started)
            started = time.monotonic()
            device, answer = await BareMqttDevice.connect(
                server.mqtt_port,
                server.context,
                server.scope,
                "calm-device",
                device_token(server.scope, "calm-device", KEY),
            )
            assert answer == ConnAck(False, ConnectReturnCode.ACCEPTED)
            await device.close()
            durations.append(time.monotonic() - started)
    return durations


async def hostile_load(server: Server) -> list[float]:
    until = time.monotonic() + HOSTILE_SECONDS
    connect = encode(
        Connect("slow", 60, True, f"{server.scope}/registrations/slow/api-version=x", b"p")
    )
    hostile = [
        *(endless_head(server, until) for _ in range(HOSTILE_EACH)),
        *(
            trickled(server, until, b"GET / HTTP/1.1\r\n", b"x: 1\r\n", "slow head", mqtt=False)
            for _ in range(HOSTILE_EACH)
        ),
        *(
            trickled(server, until, connect[:1], connect[1:2], "slow connect", mqtt=True)
            for _ in range(HOSTILE_EACH)
        ),
        *(oversized_mqtt(server) for _ in range(HOSTILE_EACH)),
    ]
    peers = asyncio.gather(*hostile, return_exceptions=True)
    durations = await well_behaved(server, until)
    outcomes = await peers
    assert not [o for o in outcomes if isinstance(o, BaseException)], outcomes
    return durations


def test_hostile_peers_cost_the_well_behaved_nothing(tmp_path: Path) -> None:
    process = start_dpsd(tmp_path / "data", tmp_path / "serve.log")
    try:
        recorded: dict[str, Any] = json.loads((tmp_path / "data" / "endpoints.json").read_text())
        connection = dict(
            part.split("=", 1) for part in process.info["serviceConnectionString"].split(";")
        )
        server = Server(
            process,
            _port(recorded["https"]),
            _port(recorded["mqtt"]),
            ssl.create_default_context(cafile=process.info["caCertificatePath"]),
            connection["SharedAccessKey"],
        )
        client = httpx.Client(
            base_url=process.info["endpoints"]["http"],
            headers={
                "Authorization": sas_token(
                    "localhost", "provisioningserviceowner", server.owner_key
                )
            },
        )
        for registration_id in ("calm-1", "calm-device"):
            body = enrollment(registration_id)
            assert client.put(f"/enrollments/{registration_id}" + API, json=body).status_code == 200
        asyncio.run(well_behaved(server, time.monotonic() + 1))  # warmed up
        pid = process.process.pid
        files, before = open_files(pid), resident_bytes(pid)
        durations = asyncio.run(hostile_load(server))
        after_one = settled(pid, files)
        durations += asyncio.run(hostile_load(server))
        after_two = settled(pid, files)
        assert durations, "the well-behaved client made no request"
        assert max(durations) < SERVED_WITHIN, durations
        for kind in ("endless head", "oversized packet", "slow head", "slow connect"):
            assert server.closed_early[kind] == 2 * HOSTILE_EACH, server.closed_early
        assert after_one - before < MEMORY_MARGIN, (before, after_one)
        assert after_two - before < MEMORY_MARGIN, (before, after_two)
    finally:
        process.stop_cleanly(signal.SIGTERM)
