"""Devices land in an IoT hub reached by connection string, in-process: a second dpsd
runtime plays the remote IoT hub (its built-in hub speaks IoT Hub's service REST API), and
the first one writes into it through its real REST client, over httpx's ASGI transport
instead of a socket. The hub refuses a wrong key, fails with 5xx, or takes the device."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.app import Runtime, build_runtime
from dpsd.integrations.hub_http import HttpxHubTransport
from dpsd.integrations.iothub import IotHubRestRegistry
from dpsd.settings import Settings
from tests.conftest import ServiceApi
from tests.integration.test_device_registration_api import poll, provision, register

HUB = "remote-hub.example"
OTHER = "other-hub.example"
KEY = base64.b64encode(b"k" * 32).decode()
INITIAL_TWIN = {"tags": {"floor": 3}, "properties": {"desired": {"mode": "eco"}}}


@dataclass
class RemoteHub:
    """A dpsd runtime serving HUB as its built-in hub, and the owner connection string."""

    runtime: Runtime
    connection_string: str
    status_override: int | None = None
    silent: bool = False

    def owner_key(self) -> str:
        return self.connection_string.rsplit("SharedAccessKey=", 1)[1]


@pytest.fixture
async def remote_hub(tmp_path: Path) -> AsyncIterator[RemoteHub]:
    async with build_runtime(Settings(data_dir=tmp_path / "remote")) as runtime:
        await runtime.hubs.link(HUB, builtin=True)
        yield RemoteHub(runtime, await runtime.hubs.connection_string(HUB))


@pytest.fixture
async def writing_to(service_api: ServiceApi, remote_hub: RemoteHub) -> AsyncIterator[RemoteHub]:
    """service_api's runtime writes devices through its REST client into remote_hub; the
    remote answers ``status_override`` instead when that is set (a failing hub), and
    never answers when ``silent``."""

    async def failing_or_remote(scope: Any, receive: Any, send: Any) -> None:
        if remote_hub.silent:
            await asyncio.Event().wait()
        status = remote_hub.status_override
        if status is None:
            await remote_hub.runtime.asgi_app(scope, receive, send)
            return
        body = b'{"Message":"ErrorCode:ServerError;busy","ExceptionMessage":""}'
        headers = [(b"content-type", b"application/json"), (b"iothub-errorcode", b"ServerError")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=failing_or_remote)
    async with transport:
        service_api.runtime.devices.hub_registry = IotHubRestRegistry(
            HttpxHubTransport(transport), None
        )
        yield remote_hub


async def link_remote(service_api: ServiceApi, connection_string: str) -> None:
    await service_api.runtime.hubs.link(HUB, connection_string=connection_string)


async def enroll(service_api: ServiceApi, registration_id: str, hub: str = HUB) -> None:
    enrollment = {
        "registrationId": registration_id,
        "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": KEY}},
        "allocationPolicy": "static",
        "iotHubs": [hub],
        "initialTwin": INITIAL_TWIN,
    }
    response = await service_api.put(f"/enrollments/{registration_id}", enrollment)
    assert response.status_code == 200, response.text


async def test_a_device_lands_in_a_hub_reached_by_connection_string(
    service_api: ServiceApi, writing_to: RemoteHub
) -> None:
    await link_remote(service_api, writing_to.connection_string)
    await enroll(service_api, "thermo-1")
    outcome = await provision(service_api, "thermo-1", KEY)
    assert outcome["status"] == "assigned", outcome
    device = await writing_to.runtime.hub_registry.devices.get(HUB, "thermo-1")
    assert device is not None
    assert device.identity.authentication.symmetric_key is not None
    assert device.identity.authentication.symmetric_key.primary_key == KEY
    assert device.tags == {"floor": 3}
    assert device.desired.values == {"mode": "eco"}


async def test_a_hub_that_refuses_the_key_fails_the_device_and_loses_nothing(
    service_api: ServiceApi, writing_to: RemoteHub
) -> None:
    wrong = writing_to.connection_string.replace(
        writing_to.owner_key(), base64.b64encode(b"w" * 32).decode()
    )
    await link_remote(service_api, wrong)
    await enroll(service_api, "thermo-2")
    failed = await provision(service_api, "thermo-2", KEY)
    assert failed["status"] == "failed"
    state = failed["registrationState"]
    assert state["errorCode"] == 400209
    assert "IotHubUnauthorizedAccess" in state["errorMessage"]
    assert base64.b64encode(b"w" * 32).decode() not in state["errorMessage"]
    assert await writing_to.runtime.hub_registry.devices.get(HUB, "thermo-2") is None
    recorded = (await service_api.get("/registrations/thermo-2")).json()
    assert (recorded["status"], recorded.get("assignedHub")) == ("failed", None)

    # Linked again with the right key: thermo-2 names the hub meanwhile, hence force.
    await service_api.runtime.hubs.unlink(HUB, force=True)
    await link_remote(service_api, writing_to.connection_string)
    again = await provision(service_api, "thermo-2", KEY)
    assert again["status"] == "assigned", again
    assert await writing_to.runtime.hub_registry.devices.get(HUB, "thermo-2") is not None


async def test_a_hub_that_never_answers_fails_the_landing_in_time(
    service_api: ServiceApi, writing_to: RemoteHub
) -> None:
    """The in-process transport has no timeouts: the landing as a whole is bounded."""
    service_api.runtime.devices.hub_timeout = 0.2
    await link_remote(service_api, writing_to.connection_string)
    await enroll(service_api, "thermo-4")
    writing_to.silent = True
    failed = await provision(service_api, "thermo-4", KEY)
    assert failed["status"] == "failed"
    state = failed["registrationState"]
    assert state["errorCode"] == 500000
    assert state["errorMessage"] == (
        f"IoT hub '{HUB}' did not finish the device's registration within 0.2 seconds"
    )
    assert writing_to.owner_key() not in state["errorMessage"]
    recorded = (await service_api.get("/registrations/thermo-4")).json()
    assert (recorded["status"], recorded.get("assignedHub")) == ("failed", None)

    writing_to.silent = False
    assert (await provision(service_api, "thermo-4", KEY))["status"] == "assigned"


async def test_an_operation_answered_before_it_settled_stays_readable_after_the_next(
    service_api: ServiceApi, writing_to: RemoteHub
) -> None:
    """A register answered before its operation settled (a slow hub) stored the operation
    assigning; once it settles, that stored copy settles too, so a poll of it still reads
    its outcome after the device registered again."""
    devices = service_api.runtime.devices
    devices.inline_completion, devices.hub_timeout = 0.01, 0.2
    await link_remote(service_api, writing_to.connection_string)
    await enroll(service_api, "thermo-5")
    writing_to.silent = True
    started = await register(service_api, "thermo-5", KEY)
    first = started.json()["operationId"]
    pending = await poll(service_api, "thermo-5", KEY, first)
    assert pending.status_code == 202
    await devices.drain()
    writing_to.silent = False
    assert (await provision(service_api, "thermo-5", KEY))["status"] == "assigned"
    earlier = await poll(service_api, "thermo-5", KEY, first)
    assert earlier.status_code == 200
    assert earlier.json()["status"] == "failed"


async def test_a_failing_hub_keeps_the_previous_assignment(
    service_api: ServiceApi, writing_to: RemoteHub
) -> None:
    await link_remote(service_api, writing_to.connection_string)
    await enroll(service_api, "thermo-3")
    assert (await provision(service_api, "thermo-3", KEY))["status"] == "assigned"
    before = (await service_api.get("/registrations/thermo-3")).json()

    writing_to.status_override = 503
    failed = await provision(service_api, "thermo-3", KEY)
    assert failed["status"] == "failed"
    assert failed["registrationState"]["errorCode"] == 500000
    assert "ServerError" in failed["registrationState"]["errorMessage"]
    assert (await service_api.get("/registrations/thermo-3")).json() == before

    writing_to.status_override = None
    assert (await provision(service_api, "thermo-3", KEY))["status"] == "assigned"
