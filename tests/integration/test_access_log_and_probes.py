"""The HTTP edge as an operator sees it, in-process: one access line and one count per
request, under the tracking id its client got; liveness and readiness probes that ask for no
credentials, shadow no route, and fail when the store does."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from dpsd.domain.hub import OWNER_HUB_POLICY
from dpsd.http.health import HealthProbes
from dpsd.storage.engine import create_engine
from dpsd.storage.executor import create_executor
from dpsd.storage.health import store_answers
from dpsd.storage.migrate import migrate
from tests.conftest import API, ServiceApi, sas_token
from tests.integration.test_device_registration_api import KEY, enroll, provision
from tests.log_capture import LogLevel, captured_logs, json_lines

HUB = "hub1.dpsd.test"


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [line for line in lines if line["logger"] == "dpsd.access"]


def requests_counted(service_api: ServiceApi, api: str, operation: str, status: int) -> float:
    labels = {"api": api, "operation": operation, "status": str(status)}
    found = service_api.runtime.metrics.registry.get_sample_value(
        "dpsd_http_requests_total", labels
    )
    return found or 0.0


async def test_each_request_is_logged_under_the_tracking_id_its_client_got(
    service_api: ServiceApi,
) -> None:
    body = {"registrationId": "dev-1", "attestation": {"type": "symmetricKey"}}
    with captured_logs() as stream:
        created = await service_api.put("/enrollments/dev-1", body)
        missing = await service_api.get("/enrollments/nobody")
    assert (created.status_code, missing.status_code) == (200, 404)
    ok, failed = access_lines(json_lines(stream))
    assert ok["tracking_id"] == created.headers["x-ms-request-id"]
    assert "error" not in ok
    assert failed["tracking_id"] == missing.headers["x-ms-request-id"]
    assert failed["tracking_id"] == missing.json()["trackingId"]
    assert failed["message"].startswith(f"GET /enrollments/nobody{API} 404 ")
    assert (failed["status"], failed["error"], failed["operation"], failed["api"]) == (
        404,
        "404201",
        "GET /enrollments/{id}",
        "dps",
    )
    assert failed["client"] == "127.0.0.1"
    assert 0 < failed["duration_ms"] < 10_000
    assert requests_counted(service_api, "dps", "GET /enrollments/{id}", 404) == 1
    assert requests_counted(service_api, "dps", "PUT /enrollments/{id}", 200) == 1


async def test_query_values_are_blotted_out_and_unknown_paths_are_one_operation(
    service_api: ServiceApi,
) -> None:
    with captured_logs() as stream:
        await service_api.client.get(
            f"/enrollments/x{API}&sig=SECRETSIG&bare", headers=service_api.auth()
        )
        unknown = await service_api.client.get(f"/no/such/{API}", headers=service_api.auth())
    assert unknown.status_code == 404
    blotted, unmatched = access_lines(json_lines(stream))
    assert blotted["target"] == f"/enrollments/x{API}&sig=***&***"
    assert "SECRETSIG" not in stream.getvalue()
    assert (unmatched["operation"], unmatched["error"]) == ("unmatched", "404000")
    assert requests_counted(service_api, "dps", "unmatched", 404) == 1


async def test_built_in_hub_requests_are_logged_too(service_api: ServiceApi) -> None:
    hub = await service_api.runtime.hubs.link(HUB, builtin=True)
    policy = hub.policy(OWNER_HUB_POLICY)
    assert policy is not None
    auth = {"Authorization": sas_token(HUB, OWNER_HUB_POLICY, policy.primary_key)}
    with captured_logs() as stream:
        found = await service_api.client.get(
            "/devices/nobody?api-version=2021-04-12", headers={**auth, "Host": HUB}
        )
    assert found.status_code == 404
    (line,) = access_lines(json_lines(stream))
    assert (line["api"], line["operation"], line["error"]) == (
        "hub",
        "GET /devices/{id}",
        "DeviceNotFound",
    )
    assert f"Tracking ID:{line['tracking_id']}-" in found.json()["ExceptionMessage"]
    assert requests_counted(service_api, "hub", "GET /devices/{id}", 404) == 1


async def test_hub_writes_of_a_registration_are_counted_and_logged_at_debug(
    service_api: ServiceApi,
) -> None:
    """dpsd's own requests into its built-in hub: below the registration's line at INFO."""
    await service_api.runtime.hubs.link(HUB, builtin=True)
    await enroll(service_api, "landed-1", allocationPolicy="static", iotHubs=[HUB])
    with captured_logs(level=LogLevel.DEBUG) as debug:
        assert (await provision(service_api, "landed-1", KEY))["status"] == "assigned"
    hub_lines = [line for line in access_lines(json_lines(debug)) if line["api"] == "hub"]
    assert [(line["level"], line["operation"]) for line in hub_lines] == [
        ("DEBUG", "PUT /devices/{id}")
    ]
    assert requests_counted(service_api, "hub", "PUT /devices/{id}", 200) == 1
    with captured_logs(level=LogLevel.INFO) as info:
        assert (await provision(service_api, "landed-1", KEY))["status"] == "assigned"
    assert [line for line in access_lines(json_lines(info)) if line["api"] == "hub"] == []
    assert [line["api"] for line in access_lines(json_lines(info))] == ["dps", "dps"]


async def test_probes_need_no_credentials_and_are_not_logged(service_api: ServiceApi) -> None:
    with captured_logs() as stream:
        live = await service_api.client.get("/healthz")
        ready = await service_api.client.get("/readyz?verbose=1")
    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
    assert ready.headers["cache-control"] == "no-store"
    assert json_lines(stream) == []


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
async def test_the_probes_shadow_no_route(service_api: ServiceApi, path: str, method: str) -> None:
    """Any other method goes on to the apps, which know no route of that path (a route of
    another method would answer 405)."""
    await service_api.runtime.hubs.link(HUB, builtin=True)
    dps = await service_api.client.request(method, path + API, headers=service_api.auth())
    assert (dps.status_code, dps.json()["errorCode"]) == (404, 404000)
    hub = await service_api.client.request(method, path, headers={"Host": HUB})
    assert (hub.status_code, hub.headers["iothub-errorcode"]) == (404, "ResourceNotFound")


async def probe(app: HealthProbes) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dpsd") as client:
        return await client.get("/readyz")


async def not_found(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("the probe answers by itself")


async def test_readiness_fails_when_the_store_does(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dpsd.db'}"
    engine = create_engine(url)
    await migrate(engine)
    executor = create_executor(url, engine)
    probes = HealthProbes(not_found, lambda: store_answers(executor))
    try:
        assert (await probe(probes)).status_code == 200
    finally:
        await executor.close()
        await engine.dispose()
    with captured_logs() as stream:
        closed = await probe(probes)
    assert (closed.status_code, closed.json()) == (
        503,
        {"status": "unavailable", "store": "unavailable"},
    )
    (line,) = json_lines(stream)
    assert (line["level"], line["event"]) == ("WARNING", "not_ready")
    assert line["reason"].startswith("the store failed: ")


async def test_readiness_fails_when_the_store_does_not_answer_in_time() -> None:
    async def hangs() -> None:
        await asyncio.Event().wait()

    with captured_logs() as stream:
        answer = await probe(HealthProbes(not_found, hangs, timeout=0.05))
    assert answer.status_code == 503
    assert json_lines(stream)[0]["reason"] == "the store did not answer within 0.05 s"
