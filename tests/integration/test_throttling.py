"""Throttled device requests, on each wire: HTTPS 429 with Retry-After and the DPS error body,
MQTT ``res/429`` with ``retry-after``, AMQP ``rejected`` with
``com.microsoft:device-container-throttled`` and retry-after in the error's info; nothing
is written for a throttled request, and the metrics count it. Real TLS sockets on 127.0.0.1,
dpsd's own runtime with tiny limits."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.app import Runtime, build_runtime
from dpsd.service.device_registration import Credential, DeviceUnauthorized
from dpsd.service.ports import CustomAllocationRequest, CustomAllocationResult
from dpsd.service.throttling import Rate, Throttle, ThrottleLimits
from dpsd.settings import Settings
from tests.amqp_peer import POLL, exchange
from tests.conftest import ServiceApi
from tests.integration.test_amqp_server import Endpoint, body_of, device_listeners
from tests.integration.test_device_registration_api import (
    DEVICE_API,
    KEY,
    device_token,
    enroll,
    poll,
    register,
)
from tests.mqtt_device import BareMqttDevice

HUB = "throttle-hub.example"
RETRY_AFTER = 2
ONE_AN_HOUR = Rate(1, 3600)  # the first request takes the only token: the next is refused


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ServiceApi]:
    """dpsd allowing one registration, and one poll per device, an hour."""
    settings = Settings(
        data_dir=tmp_path / "data",
        retry_after=RETRY_AFTER,
        registration_rate=ONE_AN_HOUR,
        device_poll_rate=ONE_AN_HOUR,
    )
    async with build_runtime(settings) as runtime:
        await runtime.hubs.link(HUB)
        transport = httpx.ASGITransport(app=runtime.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            api = ServiceApi(runtime, client)
            for name in ("dev-1", "dev-2"):
                await enroll(api, name)
            yield api


@pytest.fixture
async def endpoint(api: ServiceApi, tmp_path: Path) -> AsyncIterator[Endpoint]:
    async with device_listeners(api, api.runtime.devices, tmp_path) as served:
        yield served


def throttled_count(runtime: Runtime, protocol: str, request: str, limit: str) -> float:
    value = runtime.metrics.registry.get_sample_value(
        "dpsd_device_requests_throttled_total",
        {"protocol": protocol, "request": request, "limit": limit},
    )
    return value or 0.0


def endpoint_context(endpoint: Endpoint) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(endpoint.api.runtime.tls.ca_certificate))


def assert_throttled_body(body: dict[str, Any]) -> None:
    assert body["errorCode"] == 429001, body
    assert body["message"].startswith("Operations are being throttled by the service"), body
    assert body["trackingId"], body


async def test_https_answers_429_with_retry_after_and_writes_nothing(api: ServiceApi) -> None:
    assert (await register(api, "dev-1", KEY)).status_code == 202
    refused = await register(api, "dev-2", KEY)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] in {"3600", "3601", "3602"}  # the next token, jitter
    assert refused.headers["x-ms-error-code"] == "429001"
    assert refused.headers["content-type"].startswith("application/json")
    assert_throttled_body(refused.json())
    assert "registration rate" in refused.json()["message"]
    assert (await api.get("/registrations/dev-2")).status_code == 404
    assert throttled_count(api.runtime, "https", "register", "registration_rate") == 1


async def test_a_device_polling_too_often_is_told_when_to_poll_again(api: ServiceApi) -> None:
    started = await register(api, "dev-1", KEY)
    operation_id = started.json()["operationId"]
    assert (await poll(api, "dev-1", KEY, operation_id)).status_code == 200
    refused = await poll(api, "dev-1", KEY, operation_id)
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"] == "3600"  # a device's own allowance: no jitter
    assert_throttled_body(refused.json())
    scope = api.runtime.id_scope
    status = await api.client.post(
        f"/{scope}/registrations/dev-1{DEVICE_API}",
        json={"registrationId": "dev-1"},
        headers={"Authorization": device_token(scope, "dev-1", KEY)},
    )
    assert status.status_code == 429, status.text
    assert throttled_count(api.runtime, "https", "poll", "device_poll_rate") == 1
    assert throttled_count(api.runtime, "https", "status", "device_poll_rate") == 1


async def test_nobody_can_spend_a_devices_poll_allowance_without_its_key(
    api: ServiceApi,
) -> None:
    started = await register(api, "dev-1", KEY)
    operation_id = started.json()["operationId"]
    stranger = await poll(api, "dev-1", "c3RyYW5nZXI=", operation_id)
    assert stranger.status_code == 401, stranger.text
    assert (await poll(api, "dev-1", KEY, operation_id)).status_code == 200


async def test_mqtt_answers_res_429_with_retry_after(endpoint: Endpoint) -> None:
    context = endpoint_context(endpoint)
    devices = []
    for name in ("dev-1", "dev-2"):
        token = device_token(endpoint.scope, name, KEY)
        device, connack = await BareMqttDevice.connect(
            endpoint.mqtt_port, context, endpoint.scope, name, token
        )
        assert connack.return_code == 0
        devices.append(device)
    try:
        topic, _ = await devices[0].register({"registrationId": "dev-1"})
        assert topic.startswith("$dps/registrations/res/202/")
        topic, body = await devices[1].register({"registrationId": "dev-2"})
        status, _, query = topic.removeprefix("$dps/registrations/res/").partition("/?")
        assert status == "429", topic
        fields = dict(part.split("=", 1) for part in query.split("&"))
        assert fields["$rid"] == "1"
        assert int(fields["retry-after"]) in {3600, 3601, 3602}
        assert_throttled_body(body)
    finally:
        for device in devices:
            await device.close()
    runtime = endpoint.api.runtime
    assert throttled_count(runtime, "mqtt", "register", "registration_rate") == 1


async def test_amqp_rejects_with_the_throttling_condition_and_retry_after(
    endpoint: Endpoint,
) -> None:
    assert (await register(endpoint.api, "dev-1", KEY)).status_code == 202
    peer = endpoint.peer("dev-2")
    reader, writer = await endpoint.open()
    peer.open_links(endpoint.address("dev-2"))
    tag = peer.register("dev-2")
    await exchange(peer, reader, writer, until=lambda: tag in peer.outcomes)
    writer.close()
    condition = peer.outcomes[tag].remote.condition
    assert condition.name == "com.microsoft:device-container-throttled"
    assert_throttled_body(json.loads(condition.description))
    told = str(condition.info["retry-after"])
    assert told == str(condition.info["Retry-After"])
    assert int(told) in {3600, 3601, 3602}
    assert throttled_count(endpoint.api.runtime, "amqp", "register", "registration_rate") == 1


async def test_an_amqp_poll_over_the_devices_allowance_is_rejected_as_throttled(
    endpoint: Endpoint,
) -> None:
    peer = endpoint.peer("dev-1")
    reader, writer = await endpoint.open()
    peer.open_links(endpoint.address("dev-1"))
    peer.register("dev-1")
    await exchange(peer, reader, writer, until=lambda: len(peer.messages) == 1)
    operation_id = body_of(peer.messages[0])["operationId"]
    tags = [peer.request(POLL, "", operation_id=operation_id) for _ in range(2)]
    await exchange(peer, reader, writer, until=lambda: tags[1] in peer.outcomes)
    writer.close()
    assert body_of(peer.messages[1])["status"] == "assigned"
    condition = peer.outcomes[tags[1]].remote.condition
    assert condition.name == "com.microsoft:device-container-throttled"
    assert str(condition.info["retry-after"]) == "3600"


# --- registrations in flight ------------------------------------------------------------------


class HeldAllocator:
    """A custom allocation that answers only once the test lets it: its device's
    registration stays in flight until then."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def allocate(self, request: CustomAllocationRequest) -> CustomAllocationResult:
        self.asked.set()
        await self.release.wait()
        return CustomAllocationResult(iot_hub_host_name=HUB)


async def test_registrations_beyond_those_in_flight_are_refused_until_one_settles(
    api: ServiceApi, tmp_path: Path
) -> None:
    runtime = api.runtime
    definition = {"webhookUrl": "https://allocator.example/", "apiVersion": "2021-10-01"}
    await enroll(api, "held", allocationPolicy="custom", customAllocationDefinition=definition)
    allocator = HeldAllocator()
    throttle = Throttle(ThrottleLimits(max_in_flight=1, retry_after=RETRY_AFTER))
    devices = replace(runtime.devices, allocator=allocator, throttle=throttle)
    async with device_listeners(api, devices, tmp_path) as served:
        context = endpoint_context(served)
        connected = {}
        for name in ("held", "dev-1"):
            token = device_token(served.scope, name, KEY)
            connected[name], _ = await BareMqttDevice.connect(
                served.mqtt_port, context, served.scope, name, token
            )
        try:
            topic, started = await connected["held"].register({"registrationId": "held"})
            assert topic.startswith("$dps/registrations/res/202/"), topic
            await allocator.asked.wait()  # its operation is still settling
            assert throttle.in_flight == 1

            topic, body = await connected["dev-1"].register({"registrationId": "dev-1"})
            assert topic.startswith("$dps/registrations/res/429/"), topic
            assert topic.endswith(("retry-after=2", "retry-after=3", "retry-after=4")), topic
            assert "too many registrations are in progress" in body["message"]
            assert (await api.get("/registrations/dev-1")).status_code == 404

            allocator.release.set()
            await devices.drain()
            assert throttle.in_flight == 0
            _, done = await connected["held"].poll(started["operationId"])
            assert done["status"] == "assigned", done
            topic, _ = await connected["dev-1"].register({"registrationId": "dev-1"})
            assert topic.startswith("$dps/registrations/res/202/"), topic
        finally:
            for device in connected.values():
                await device.close()
    assert throttled_count(runtime, "mqtt", "register", "in_flight") == 1


async def test_a_registration_that_fails_leaves_the_flight(api: ServiceApi) -> None:
    throttle = Throttle(ThrottleLimits(max_in_flight=1))
    devices = replace(api.runtime.devices, throttle=throttle)
    credential_of_another = device_token(api.runtime.id_scope, "dev-2", KEY)
    for _ in range(3):
        with pytest.raises(DeviceUnauthorized):
            await devices.register(
                api.runtime.id_scope, "dev-1", Credential(authorization=credential_of_another)
            )
        assert throttle.in_flight == 0
    await devices.register(
        api.runtime.id_scope,
        "dev-2",
        Credential(authorization=credential_of_another),
    )
    await devices.drain()
    assert throttle.in_flight == 0
