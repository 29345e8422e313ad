"""A full disk, for real: dpsd's data dir on a small tmpfs filled to the last byte. Every edge
answers a write it cannot make as a retryable 503 with when to retry (the service API, the
device API over HTTPS, MQTT and AMQP, a built-in hub's API), the store's log line names the
fault, and what is stored can still be read. Needs the right to mount a tmpfs (skipped
without it). Then a store that cannot even read, when a device connects: MQTT's CONNACK and
AMQP's OPEN say "server unavailable", not "not authorised"."""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from dpsd.app import build_runtime
from dpsd.mqtt.codec import ConnAck, ConnectReturnCode
from dpsd.service.errors import StorageFault, StorageUnavailable
from dpsd.settings import Settings
from tests.amqp_peer import exchange
from tests.conftest import ServiceApi, sas_token
from tests.integration.test_amqp_server import Endpoint, device_listeners
from tests.integration.test_device_registration_api import KEY, device_token, enroll, register
from tests.mqtt_device import BareMqttDevice

HUB = "full-hub.example"
RETRY_AFTER = "5"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no byte left."""
    filler = disk / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    assert os.statvfs(disk).f_bavail == 0
    return filler


@pytest.fixture
async def full(small_disk: Path) -> AsyncIterator[Endpoint]:
    """A runtime on the small disk, with an enrolled device and a built-in hub, then the
    disk filled; MQTT and AMQP listeners on 127.0.0.1:0."""
    async with build_runtime(Settings(data_dir=small_disk / "data")) as runtime:
        transport = httpx.ASGITransport(app=runtime.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            api = ServiceApi(runtime, client)
            await runtime.hubs.link(HUB, builtin=True)
            await enroll(api, "dev-1")
            async with device_listeners(api, runtime.devices, small_disk) as endpoint:
                filler = fill(small_disk)
                try:
                    yield endpoint
                finally:
                    filler.unlink()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == RETRY_AFTER
    error = response.json()
    assert error["errorCode"] == 503000
    assert "full disk" in error["message"]
    assert response.headers["x-ms-error-code"] == "503000"


def assert_logged(caplog: pytest.LogCaptureFixture) -> None:
    faults = [r for r in caplog.records if r.name == "dpsd.storage" and "full disk" in r.message]
    assert faults, [record.message for record in caplog.records]
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("dpsd")]


async def test_the_service_api_answers_503_and_still_reads(
    full: Endpoint, caplog: pytest.LogCaptureFixture
) -> None:
    api = full.api
    body = {"registrationId": "dev-2", "attestation": {"type": "symmetricKey"}}
    assert_unavailable(await api.put("/enrollments/dev-2", body))
    assert (await api.get("/enrollments/dev-1")).status_code == 200
    assert_logged(caplog)


async def test_the_device_api_answers_503(full: Endpoint) -> None:
    assert_unavailable(await register(full.api, "dev-1", KEY))


async def test_mqtt_register_answers_503_with_retry_after(full: Endpoint) -> None:
    context = ssl.create_default_context(cafile=str(full.api.runtime.tls.ca_certificate))
    device, connack = await BareMqttDevice.connect(
        full.mqtt_port, context, full.scope, "dev-1", device_token(full.scope, "dev-1", KEY)
    )
    assert connack == ConnAck(False, ConnectReturnCode.ACCEPTED)  # attesting only reads
    topic, error = await device.register({"registrationId": "dev-1"})
    assert topic.startswith("$dps/registrations/res/503/?$rid=1")
    assert f"retry-after={RETRY_AFTER}" in topic
    assert error["errorCode"] == 503000
    await device.close()


async def test_amqp_register_is_rejected_with_retry_after(full: Endpoint) -> None:
    peer = full.peer("dev-1")
    reader, writer = await full.open()
    peer.open_links(full.address("dev-1"))
    tag = peer.register("dev-1")
    await exchange(peer, reader, writer, until=lambda: tag in peer.outcomes)
    writer.close()
    condition = peer.outcomes[tag].remote.condition
    assert condition.name == "amqp:internal-error"
    assert json.loads(condition.description)["errorCode"] == 503000
    assert str(condition.info["retry-after"]) == RETRY_AFTER


async def test_a_builtin_hub_answers_503_with_retry_after(full: Endpoint) -> None:
    hub = await full.api.runtime.hubs.get(HUB)
    policy = hub.policy("iothubowner")
    assert policy is not None
    response = await full.api.client.put(
        "/devices/dev-9?api-version=2021-04-12",
        json={"deviceId": "dev-9"},
        headers={
            "Host": HUB,
            "Authorization": sas_token(HUB, policy.name, policy.primary_key),
        },
    )
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == RETRY_AFTER
    assert response.headers["iothub-errorcode"] == "ServiceUnavailable"


class UnreadableStore:
    """Enrollments, groups and a registration's reads, each read meeting a fault of the
    store."""

    async def get(self, record_id: str) -> None:
        raise StorageUnavailable(StorageFault.CONNECTION_LOST, "the test's store is down")

    async def query(self, *args: object, **kwargs: object) -> list[object]:
        raise StorageUnavailable(StorageFault.CONNECTION_LOST, "the test's store is down")

    async def enrollment_or_groups(self, *args: object) -> None:
        raise StorageUnavailable(StorageFault.CONNECTION_LOST, "the test's store is down")

    async def state_and_hubs(self, registration_id: str) -> None:
        raise StorageUnavailable(StorageFault.CONNECTION_LOST, "the test's store is down")


@pytest.fixture
async def unreadable(service_api: ServiceApi, tmp_path: Path) -> AsyncIterator[Endpoint]:
    runtime = service_api.runtime
    store = UnreadableStore()
    devices = replace(runtime.devices, enrollments=store, groups=store, reads=store)
    async with device_listeners(service_api, devices, tmp_path) as endpoint:
        yield endpoint


async def test_an_mqtt_connect_the_store_cannot_check_is_server_unavailable(
    unreadable: Endpoint,
) -> None:
    context = ssl.create_default_context(cafile=str(unreadable.api.runtime.tls.ca_certificate))
    token = device_token(unreadable.scope, "dev-1", KEY)
    device, connack = await BareMqttDevice.connect(
        unreadable.mqtt_port, context, unreadable.scope, "dev-1", token
    )
    assert connack == ConnAck(False, ConnectReturnCode.SERVER_UNAVAILABLE)
    await device.close()


async def test_an_amqp_open_the_store_cannot_check_says_retry(unreadable: Endpoint) -> None:
    peer = unreadable.peer("dev-1")
    reader, writer = await unreadable.open()
    peer.open_links(unreadable.address("dev-1"))
    await exchange(peer, reader, writer, until=lambda: peer.closed_by_server)
    writer.close()
    condition = peer.connection.remote_condition
    assert condition.name == "amqp:internal-error"
    assert json.loads(condition.description)["errorCode"] == 503000
    assert str(condition.info["retry-after"]) == RETRY_AFTER
