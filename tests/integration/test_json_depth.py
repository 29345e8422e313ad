"""JSON nesting on every protocol: a body nesting deeper than 64 levels is refused with a 400
naming the limit (never a 500), before anything is written, so no stored record can break a
read; a record at the limit is stored and listed like any other."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from dpsd.domain.json_depth import MAX_JSON_DEPTH
from dpsd.mqtt.codec import ConnAck, Connect, PacketReader, Publish, encode
from tests.amqp_peer import REGISTER, exchange
from tests.conftest import API, ServiceApi
from tests.integration.conftest import BuiltinHub
from tests.integration.test_amqp_server import Endpoint, amqp  # noqa: F401 - a fixture
from tests.integration.test_custom_allocation import webhook  # noqa: F401 - amqp's fixture
from tests.integration.test_device_registration_api import DEVICE_API, KEY, device_token, enroll

DEEP = "@DEEP@"
BEYOND_THE_DECODER = 5000
"""Far deeper than Python's recursion limit lets a decoder follow."""
SYMMETRIC_KEY = {"type": "symmetricKey"}


def nesting(levels: int) -> str:
    """A JSON value of ``levels`` nested arrays (0: a number)."""
    return "[" * levels + "0" + "]" * levels


def body(template: Any, levels: int) -> bytes:
    """``template`` as JSON, its ``@DEEP@`` string replaced by ``levels`` nested arrays."""
    return json.dumps(template).replace(json.dumps(DEEP), nesting(levels)).encode()


def levels_above(template: Any) -> int:
    """How many objects and arrays of ``template`` enclose its ``@DEEP@``."""
    if template == DEEP:
        return 0
    if not isinstance(template, dict | list):
        return -1
    children = template.values() if isinstance(template, dict) else template
    inside = max(levels_above(child) for child in children)
    return -1 if inside < 0 else inside + 1


def enrollment(registration_id: str) -> dict[str, Any]:
    return {
        "registrationId": registration_id,
        "attestation": SYMMETRIC_KEY,
        "initialTwin": {"tags": {"deep": DEEP}},
    }


SERVICE_BODIES = {
    "PUT /enrollments/dev-9": enrollment("dev-9"),
    "PUT /enrollmentGroups/fleet-9": {
        "enrollmentGroupId": "fleet-9",
        "attestation": SYMMETRIC_KEY,
        "initialTwin": {"properties": {"desired": {"deep": DEEP}}},
    },
    "POST /enrollments": {"mode": "create", "enrollments": [enrollment("dev-9")]},
    "POST /enrollmentGroups": {
        "mode": "create",
        "enrollmentGroups": [
            {
                "enrollmentGroupId": "fleet-9",
                "attestation": SYMMETRIC_KEY,
                "initialTwin": {"tags": DEEP},
            }
        ],
    },
    "POST /enrollments/query": {"query": "SELECT *", "extra": DEEP},
    "POST /enrollmentGroups/query": {"query": "SELECT *", "extra": DEEP},
}


def assert_refused_for_depth(response: httpx.Response) -> None:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["errorCode"] == 400006
    assert f"{MAX_JSON_DEPTH} levels" in error["message"]


async def service_request(api: ServiceApi, endpoint: str, content: bytes) -> httpx.Response:
    method, path = endpoint.split(" ")
    headers = {**api.auth(), "Content-Type": "application/json"}
    return await api.client.request(method, path + API, content=content, headers=headers)


async def nothing_was_written(api: ServiceApi) -> None:
    for kind in ("enrollments", "enrollmentGroups"):
        listed = await api.post(f"/{kind}/query", {"query": "SELECT *"})
        assert listed.status_code == 200, listed.text
        assert listed.json() == []


@pytest.mark.parametrize("endpoint", SERVICE_BODIES)
async def test_service_api_bodies_beyond_the_decoder_are_refused(
    service_api: ServiceApi, endpoint: str
) -> None:
    content = body(SERVICE_BODIES[endpoint], BEYOND_THE_DECODER)
    assert_refused_for_depth(await service_request(service_api, endpoint, content))
    await nothing_was_written(service_api)


@pytest.mark.parametrize("endpoint", [e for e in SERVICE_BODIES if "query" not in e])
async def test_a_record_one_level_beyond_the_limit_is_refused(
    service_api: ServiceApi, endpoint: str
) -> None:
    template = SERVICE_BODIES[endpoint]
    content = body(template, MAX_JSON_DEPTH - levels_above(template) + 1)
    assert_refused_for_depth(await service_request(service_api, endpoint, content))
    await nothing_was_written(service_api)


async def test_a_record_at_the_limit_is_stored_and_listed(service_api: ServiceApi) -> None:
    template = enrollment("dev-9")
    content = body(template, MAX_JSON_DEPTH - levels_above(template))
    stored = await service_request(service_api, "PUT /enrollments/dev-9", content)
    assert stored.status_code == 200, stored.text
    listed = await service_api.post("/enrollments/query", {"query": "SELECT *"})
    assert listed.status_code == 200, listed.text
    assert [item["registrationId"] for item in listed.json()] == ["dev-9"]


async def test_a_twin_nesting_966_levels_never_breaks_listing(service_api: ServiceApi) -> None:
    """The reported case: an update whose twin nests 966 arrays was stored, and listing then
    answered 500 for everyone."""
    await enroll(service_api, "dev-1")
    content = body({**enrollment("dev-1"), "attestation": SYMMETRIC_KEY}, 966)
    updated = await service_api.client.put(
        "/enrollments/dev-1" + API,
        content=content,
        headers={**service_api.auth(), "If-Match": "*", "Content-Type": "application/json"},
    )
    assert_refused_for_depth(updated)
    listed = await service_api.post("/enrollments/query", {"query": "SELECT *"})
    assert listed.status_code == 200
    assert "initialTwin" not in listed.json()[0]


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, BEYOND_THE_DECODER])
@pytest.mark.parametrize("action", ["register", "status lookup"])
async def test_device_api_bodies_beyond_the_limit_are_refused(
    service_api: ServiceApi, action: str, levels: int
) -> None:
    await enroll(service_api, "dev-1")
    scope = service_api.runtime.id_scope
    path = f"/{scope}/registrations/dev-1" + ("/register" if action == "register" else "")
    response = await service_api.client.request(
        "PUT" if action == "register" else "POST",
        path + DEVICE_API,
        content=body({"registrationId": "dev-1", "payload": DEEP}, levels),
        headers={
            "Authorization": device_token(scope, "dev-1", KEY),
            "Content-Type": "application/json",
        },
    )
    assert_refused_for_depth(response)
    assert await service_api.runtime.registration_states.get("dev-1") is None


def register_payload(levels: int) -> bytes:
    return body({"registrationId": "dev-1", "payload": DEEP}, levels)


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, BEYOND_THE_DECODER])
async def test_mqtt_register_bodies_beyond_the_limit_are_refused(
    amqp: Endpoint,  # noqa: F811 - the fixture imported above
    levels: int,
) -> None:
    reader, writer = await amqp.open(port=amqp.mqtt_port)
    scope = amqp.scope
    username = f"{scope}/registrations/dev-1/api-version=2019-03-31"
    password = device_token(scope, "dev-1", KEY).encode()
    packets = PacketReader(1 << 20)

    async def next_packet() -> object:
        received: list[object] = []
        while not received:
            data = await asyncio.wait_for(reader.read(65536), timeout=10)
            assert data, "the server closed the connection"
            received = packets.feed(data)
        return received[0]

    writer.write(encode(Connect("dev-1", 60, True, username, password)))
    assert isinstance(await next_packet(), ConnAck)
    writer.write(
        encode(Publish("$dps/registrations/PUT/iotdps-register/?$rid=7", register_payload(levels)))
    )
    answer = await next_packet()
    writer.close()
    assert isinstance(answer, Publish)
    assert answer.topic.startswith("$dps/registrations/res/400/?$rid=7")
    error = json.loads(answer.payload)
    assert error["errorCode"] == 400006
    assert f"{MAX_JSON_DEPTH} levels" in error["message"]


@pytest.mark.parametrize("levels", [MAX_JSON_DEPTH, BEYOND_THE_DECODER])
async def test_amqp_register_bodies_beyond_the_limit_are_refused(
    amqp: Endpoint,  # noqa: F811 - the fixture imported above
    levels: int,
) -> None:
    peer = amqp.peer("dev-1")
    reader, writer = await amqp.open()
    peer.open_links(amqp.address("dev-1"))
    tag = peer.request(REGISTER, register_payload(levels))
    await exchange(peer, reader, writer, until=lambda: tag in peer.outcomes)
    writer.close()
    condition = peer.outcomes[tag].remote.condition
    assert condition.name == "amqp:invalid-field"
    error = json.loads(condition.description)
    assert error["errorCode"] == 400006
    assert f"{MAX_JSON_DEPTH} levels" in error["message"]


HUB_BODIES = {
    "PUT /devices/dev-9": {"deviceId": "dev-9", "extra": DEEP},
    "PUT /twins/dev-9": {"tags": {"deep": DEEP}},
    "PATCH /twins/dev-9": {"properties": {"desired": {"deep": DEEP}}},
    "POST /devices/query": {"query": "SELECT * FROM devices", "extra": DEEP},
}


@pytest.mark.parametrize("endpoint", HUB_BODIES)
async def test_builtin_hub_bodies_beyond_the_decoder_are_refused(
    builtin: BuiltinHub, endpoint: str
) -> None:
    assert (await builtin.put_device("dev-9")).status_code == 200
    method, path = endpoint.split(" ")
    response = await builtin.request(
        method, path, content=body(HUB_BODIES[endpoint], BEYOND_THE_DECODER)
    )
    assert response.status_code == 400, response.text
    assert response.headers["iothub-errorcode"] == "IotHubFormatError"
    assert f"{MAX_JSON_DEPTH} levels" in response.json()["Message"]
    twin = await builtin.request("GET", "/twins/dev-9")
    assert twin.json()["tags"] == {}
