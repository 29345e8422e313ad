"""Storage faults against a running ``dpsd serve``: another process holding SQLite's write lock
(other requests, MQTT's included, are served meanwhile; the write waits, then answers a
retryable 503 naming nothing but the fault, and the log names it), PostgreSQL connections
terminated under load (no request fails), and a read-only store at start (one line)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from dpsd.mqtt.codec import ConnAck, ConnectReturnCode
from tests.conftest import POSTGRES_URL, sas_token
from tests.e2e.process import DPSD, DpsdProcess, dpsd_env, run_dpsd, start_dpsd
from tests.integration.test_device_registration_api import device_token
from tests.mqtt_device import BareMqttDevice

pytestmark = pytest.mark.e2e
API = "?api-version=2021-10-01"
KEY = base64.b64encode(b"k" * 32).decode()
LOCK_TIMEOUT = 5.0

HOLD_LOCK = """
import sqlite3, sys
holder = sqlite3.connect(sys.argv[1], isolation_level=None)
holder.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
holder.execute("ROLLBACK")
"""


def enrollment(registration_id: str) -> dict[str, Any]:
    return {
        "registrationId": registration_id,
        "attestation": {
            "type": "symmetricKey",
            "symmetricKey": {"primaryKey": KEY, "secondaryKey": KEY},
        },
    }


def service_client(server: DpsdProcess) -> httpx.Client:
    key = dict(part.split("=", 1) for part in server.info["serviceConnectionString"].split(";"))
    token = sas_token("localhost", "provisioningserviceowner", key["SharedAccessKey"])
    return httpx.Client(
        base_url=server.info["endpoints"]["http"], headers={"Authorization": token}, timeout=30
    )


class LockHolder:
    """Another process holding the write lock of a SQLite file until released."""

    def __init__(self, database: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", HOLD_LOCK, str(database)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "locked"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("\n")
            self.process.stdin.flush()
        self.process.wait(timeout=10)


async def mqtt_connect(server: DpsdProcess, registration_id: str) -> tuple[ConnAck, float]:
    """A device's CONNECT (attesting it reads the store), and how long the answer took."""
    context = ssl.create_default_context(cafile=server.info["caCertificatePath"])
    scope = server.info["idScope"]
    port = _mqtt_port(server)
    started = time.monotonic()
    device, answer = await BareMqttDevice.connect(
        port, context, scope, registration_id, device_token(scope, registration_id, KEY)
    )
    elapsed = time.monotonic() - started
    await device.close()
    return answer, elapsed


def _mqtt_port(server: DpsdProcess) -> int:
    recorded = json.loads((server.data_dir / "endpoints.json").read_text())
    return int(recorded["mqtt"].rsplit(":", 1)[1])


def test_a_write_lock_held_elsewhere_stalls_nothing_but_writes(tmp_path: Path) -> None:
    server = start_dpsd(tmp_path / "data", tmp_path / "serve.log")
    try:
        client = service_client(server)
        assert client.put("/enrollments/dev-1" + API, json=enrollment("dev-1")).status_code == 200
        holder = LockHolder(tmp_path / "data" / "dpsd.db")
        try:
            writing: dict[str, Any] = {}

            def write() -> None:
                started = time.monotonic()
                writing["response"] = client.put(
                    "/enrollments/dev-2" + API, json=enrollment("dev-2")
                )
                writing["seconds"] = time.monotonic() - started

            writer = threading.Thread(target=write)
            writer.start()
            started = time.monotonic()
            assert client.get("/enrollments/dev-1" + API).status_code == 200
            answer, _ = asyncio.run(mqtt_connect(server, "dev-1"))
            assert answer == ConnAck(False, ConnectReturnCode.ACCEPTED)
            assert time.monotonic() - started < LOCK_TIMEOUT / 2, "reads waited for the lock"
            writer.join(timeout=LOCK_TIMEOUT + 10)
            response = writing["response"]
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert response.json()["errorCode"] == 503000
            assert writing["seconds"] >= LOCK_TIMEOUT
        finally:
            holder.release()
        assert client.put("/enrollments/dev-2" + API, json=enrollment("dev-2")).status_code == 200
        assert "lock timeout" in server.output()
    finally:
        server.stop_cleanly(signal.SIGTERM)


async def _terminate_connections(database: str, stop: asyncio.Event) -> int:
    """Terminate every connection to ``database`` (this session's own) every 100 ms."""
    admin = await asyncpg.connect(POSTGRES_URL, timeout=10)
    terminated = 0
    try:
        while not stop.is_set():
            rows = await admin.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                database,
            )
            terminated += len(rows)
            await asyncio.sleep(0.1)
    finally:
        await admin.close()
    return terminated


async def _requests_while_terminating(client: httpx.AsyncClient, database: str) -> list[int]:
    stop = asyncio.Event()
    killer = asyncio.create_task(_terminate_connections(database, stop))
    statuses: list[int] = []
    try:
        for n in range(300):
            registration_id = f"pg-fault-{n % 10}"
            if n % 3:
                response = await client.get(f"/enrollments/{registration_id}" + API)
            else:
                body = enrollment(registration_id)
                response = await client.put(
                    f"/enrollments/{registration_id}" + API, json=body, headers={"If-Match": "*"}
                )
            statuses.append(response.status_code)
    finally:
        stop.set()
        assert await killer > 0
    return statuses


@pytest.mark.postgres
def test_terminated_postgres_connections_fail_no_request(
    postgres_server: str, tmp_path: Path
) -> None:
    """The reported case: 25 of 5,818 requests answered 500. A statement whose connection
    broke before its commit runs again; one that breaks twice is a retryable 503."""
    server = start_dpsd(tmp_path / "data", tmp_path / "serve.log", "--database", postgres_server)
    try:
        sync = service_client(server)

        async def run() -> list[int]:
            async with httpx.AsyncClient(
                base_url=str(sync.base_url), headers=dict(sync.headers), timeout=30
            ) as client:
                return await _requests_while_terminating(client, postgres_server.rsplit("/", 1)[1])

        statuses = asyncio.run(run())
        assert set(statuses) <= {200, 404, 503}, statuses
    finally:
        server.stop_cleanly(signal.SIGTERM)


def test_a_read_only_store_is_reported_at_start_in_one_line(tmp_path: Path) -> None:
    first = start_dpsd(tmp_path / "data", tmp_path / "serve.log")
    first.stop_cleanly(signal.SIGTERM)
    read_only = f"sqlite:///file:{tmp_path / 'data' / 'dpsd.db'}?mode=ro&uri=true"
    listeners = ["--https-port", "0", "--mqtt-port", "-1", "--amqp-port", "-1"]
    result = subprocess.run(
        [*DPSD, "serve", "--data-dir", str(tmp_path / "data"), *listeners, "--database", read_only],
        capture_output=True,
        text=True,
        timeout=60,
        env=dpsd_env(),
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "readonly" in lines[0] or "read-only" in lines[0], lines
    assert run_dpsd("info", "--data-dir", str(tmp_path / "data")).returncode == 0
