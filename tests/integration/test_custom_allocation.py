"""Custom allocation: dpsd asks the enrollment's webhook, served here by the test."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.app import build_runtime
from dpsd.settings import Settings
from tests.conftest import ServiceApi
from tests.integration.test_device_registration_api import KEY, enroll, poll, register


class Webhook:
    """A webhook on 127.0.0.1:0 whose answer each test chooses by path."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                status, answer = outer.answer(self.path, body)
                data = json.dumps(answer).encode() if not isinstance(answer, bytes) else answer
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def answer(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path.startswith("/slow"):
            self.release.wait(15)
        if path.startswith("/broken"):
            return 503, {"message": "down"}
        if path.startswith("/garbage"):
            return 200, b"<html>"
        if path.startswith("/deep/"):  # /deep/{levels}: a payload of that many nested arrays
            levels = int(path.rsplit("/", 1)[1])
            nested = b"[" * levels + b"]" * levels
            return 200, b'{"iotHubHostName": "hub-b.example", "payload": {"a": %s}}' % nested
        hub = "hub-b.example" if not path.startswith("/elsewhere") else "rogue.example"
        return 200, {
            "iotHubHostName": hub,
            "payload": {"site": "north", "linked": body["linkedHubs"]},
        }


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    yield hook
    hook.release.set()
    hook.server.shutdown()
    thread.join(timeout=10)


@pytest.fixture
async def quick_api(tmp_path: Path) -> AsyncIterator[ServiceApi]:
    """The service with a one-second webhook timeout."""
    settings = Settings(data_dir=tmp_path / "data", webhook_timeout=1.0)
    async with build_runtime(settings) as runtime:
        transport = httpx.ASGITransport(app=runtime.asgi_app)
        async with httpx.AsyncClient(transport=transport, base_url="https://localhost") as client:
            yield ServiceApi(runtime, client)


async def outcome(api: ServiceApi, registration_id: str, payload: Any = None) -> dict[str, Any]:
    started = await register(
        api, registration_id, KEY, body={"registrationId": registration_id, "payload": payload}
    )
    assert started.status_code == 202, started.text
    await api.runtime.devices.drain()
    result = await poll(api, registration_id, KEY, started.json()["operationId"])
    assert result.status_code == 200, result.text
    body: dict[str, Any] = result.json()
    return body


async def custom_enrollment(api: ServiceApi, registration_id: str, url: str) -> None:
    definition = {"webhookUrl": url, "apiVersion": "2021-10-01"}
    await enroll(
        api, registration_id, allocationPolicy="custom", customAllocationDefinition=definition
    )


async def test_the_webhook_chooses_the_hub_and_the_payload(
    service_api: ServiceApi, webhook: Webhook
) -> None:
    for hub in ("hub-a.example", "hub-b.example"):
        await service_api.runtime.hubs.link(hub)
    await custom_enrollment(service_api, "dev-1", f"{webhook.url}/allocate?code=secret")
    result = await outcome(service_api, "dev-1", payload={"model": "t-1000"})
    state = result["registrationState"]
    assert (result["status"], state["assignedHub"]) == ("assigned", "hub-b.example")
    assert state["payload"] == {"site": "north", "linked": ["hub-a.example", "hub-b.example"]}
    sent = webhook.requests[0]
    assert sent["individualEnrollment"]["registrationId"] == "dev-1"
    assert "symmetricKey" not in sent["individualEnrollment"]["attestation"]
    assert sent["deviceRuntimeContext"] == {
        "registrationId": "dev-1",
        "symmetricKey": {},
        "payload": {"model": "t-1000"},
    }
    again = await outcome(service_api, "dev-1")
    assert webhook.requests[1]["deviceRuntimeContext"]["currentIotHubHostName"] == "hub-b.example"
    assert again["registrationState"]["assignedHub"] == "hub-b.example"


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/broken", "Custom allocation failed with status code: 503"),
        ("/garbage", "something other than an allocation"),
        ("/elsewhere", "'rogue.example', which is not one of the linked hubs"),
        ("/deep/64", "payload nests objects and arrays too deep: dpsd reads at most 64 levels"),
        ("/deep/5000", "answer nests objects and arrays too deep: dpsd reads at most 64 levels"),
    ],
)
async def test_webhook_failures_fail_the_registration(
    service_api: ServiceApi, webhook: Webhook, path: str, message: str
) -> None:
    await service_api.runtime.hubs.link("hub-b.example")
    await custom_enrollment(service_api, "dev-1", f"{webhook.url}{path}")
    result = await outcome(service_api, "dev-1")
    assert result["status"] == "failed"
    assert result["registrationState"]["errorCode"] == 400210
    assert message in result["registrationState"]["errorMessage"]
    state = await service_api.get("/registrations/dev-1")
    assert state.status_code == 200
    assert "payload" not in state.json()


async def test_a_slow_webhook_never_blocks_register(
    quick_api: ServiceApi, webhook: Webhook
) -> None:
    await quick_api.runtime.hubs.link("hub-b.example")
    await custom_enrollment(quick_api, "dev-1", f"{webhook.url}/slow")
    started = await register(quick_api, "dev-1", KEY)
    assert started.status_code == 202
    pending = await poll(quick_api, "dev-1", KEY, started.json()["operationId"])
    assert pending.status_code == 202
    assert pending.json()["registrationState"]["status"] == "assigning"
    await quick_api.runtime.devices.drain()
    result = await poll(quick_api, "dev-1", KEY, started.json()["operationId"])
    assert result.json()["status"] == "failed"
    assert "timed out after 1 s" in result.json()["registrationState"]["errorMessage"]


async def test_webhook_definitions_are_checked(service_api: ServiceApi) -> None:
    await service_api.runtime.hubs.link("hub-b.example")
    body = {
        "registrationId": "dev-1",
        "attestation": {"type": "symmetricKey"},
        "allocationPolicy": "custom",
    }
    refused = await service_api.put("/enrollments/dev-1", body)
    assert refused.status_code == 400
    assert "customAllocationDefinition" in refused.json()["message"]
