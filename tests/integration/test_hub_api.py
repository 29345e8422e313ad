"""A built-in IoT hub's service API, in-process over a real SQLite store: devices, twins,
queries, If-Match rules, IoT Hub's error bodies, rights per policy, SAS tokens as the
service clients sign them, hostile input, and the host dispatch in front of it."""

from __future__ import annotations

import asyncio
import base64
import re
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpsd.domain.hub import LinkedHub
from dpsd.http.exchange import HttpRequest, HttpResponse
from dpsd.http.host_dispatch import HostDispatch, HubLookup, LookupRation
from dpsd.http.hub_app import HubApiApp
from dpsd.http.routing import Route
from tests.conftest import sas_token
from tests.integration.conftest import (
    API_VERSION,
    DPS_HOST,
    HUB_HOST,
    BuiltinHub,
    builtin_hub,
)

THUMBPRINT = "AB" * 32
ERROR_MESSAGE = re.compile(r"ErrorCode:(?P<name>[A-Za-z]+);(?P<text>[^;]*)")
EXCEPTION_MESSAGE = re.compile(
    r"Tracking ID:[0-9a-f]{32}-G:0-TimeStamp:\d{2}/\d{2}/\d{4} \d{2}:\d{2}:\d{2}"
)


def assert_hub_error(
    response: httpx.Response, status: int, name: str, text: str | None = None
) -> None:
    """IoT Hub's classic error: the body's two fields, the name in a header too."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"Message", "ExceptionMessage"}
    match = ERROR_MESSAGE.fullmatch(body["Message"])
    assert match is not None, body["Message"]
    assert match["name"] == name
    if text is not None:
        assert match["text"] == text
    assert EXCEPTION_MESSAGE.fullmatch(body["ExceptionMessage"]), body["ExceptionMessage"]
    assert response.headers["iothub-errorcode"] == name
    assert response.headers["content-type"] == "application/json; charset=utf-8"


def is_base64_key(value: object) -> bool:
    return isinstance(value, str) and len(base64.b64decode(value, validate=True)) == 32


# --- devices --------------------------------------------------------------------------------


async def test_create_answers_200_with_the_device_as_iot_hub_shows_it(builtin: BuiltinHub) -> None:
    response = await builtin.put_device("sensor-1")
    assert response.status_code == 200
    device = response.json()
    assert list(device) == [
        "deviceId",
        "generationId",
        "etag",
        "connectionState",
        "status",
        "statusReason",
        "connectionStateUpdatedTime",
        "statusUpdatedTime",
        "lastActivityTime",
        "cloudToDeviceMessageCount",
        "authentication",
        "capabilities",
    ]
    assert device["deviceId"] == "sensor-1"
    assert re.fullmatch(r"[1-9][0-9]{17}", device["generationId"])
    assert device["etag"] == base64.b64encode(b"1").decode()
    assert device["connectionState"] == "Disconnected"
    assert device["status"] == "enabled"
    assert device["statusReason"] is None
    for moment in ("connectionStateUpdatedTime", "statusUpdatedTime", "lastActivityTime"):
        assert device[moment] == "0001-01-01T00:00:00Z"
    assert device["cloudToDeviceMessageCount"] == 0
    authentication = device["authentication"]
    assert authentication["type"] == "sas"
    assert is_base64_key(authentication["symmetricKey"]["primaryKey"])
    assert is_base64_key(authentication["symmetricKey"]["secondaryKey"])
    assert authentication["x509Thumbprint"] == {
        "primaryThumbprint": None,
        "secondaryThumbprint": None,
    }
    assert device["capabilities"] == {"iotEdge": False}
    read = await builtin.request("GET", "/devices/sensor-1")
    assert read.status_code == 200
    assert read.json() == device


async def test_create_takes_the_keys_and_thumbprints_given(builtin: BuiltinHub) -> None:
    primary, secondary = base64.b64encode(b"p" * 32).decode(), base64.b64encode(b"s" * 32).decode()
    sas = await builtin.put_device(
        "with-keys",
        {
            "deviceId": "with-keys",
            "status": "disabled",
            "statusReason": "not yet",
            "authentication": {
                "type": "sas",
                "symmetricKey": {"primaryKey": primary, "secondaryKey": secondary},
            },
        },
    )
    assert sas.status_code == 200, sas.text
    assert sas.json()["authentication"]["symmetricKey"] == {
        "primaryKey": primary,
        "secondaryKey": secondary,
    }
    assert (sas.json()["status"], sas.json()["statusReason"]) == ("disabled", "not yet")
    x509 = await builtin.put_device(
        "with-cert",
        {
            "deviceId": "with-cert",
            "authentication": {
                "type": "selfSigned",
                "x509Thumbprint": {
                    "primaryThumbprint": THUMBPRINT,
                    "secondaryThumbprint": THUMBPRINT,
                },
            },
        },
    )
    assert x509.status_code == 200, x509.text
    authentication = x509.json()["authentication"]
    assert authentication["type"] == "selfSigned"
    assert authentication["symmetricKey"] == {"primaryKey": None, "secondaryKey": None}
    assert authentication["x509Thumbprint"]["primaryThumbprint"] == THUMBPRINT


@pytest.mark.parametrize(
    "body",
    [
        # Node's Registry.create without authentication
        {
            "deviceId": "lenient",
            "status": "enabled",
            "authentication": {
                "type": "sas",
                "symmetricKey": {"primaryKey": "", "secondaryKey": ""},
                "x509Thumbprint": {"primaryThumbprint": "", "secondaryThumbprint": ""},
            },
        },
        # Python's generated models: nulls everywhere, fields the hub owns echoed
        {
            "deviceId": "lenient",
            "generationId": None,
            "etag": None,
            "connectionState": None,
            "status": None,
            "statusReason": None,
            "connectionStateUpdatedTime": None,
            "authentication": {"symmetricKey": None, "x509Thumbprint": None, "type": None},
            "capabilities": None,
            "deviceScope": None,
            "parentScopes": None,
        },
        {"deviceId": "lenient", "authentication": None, "someFutureField": {"x": 1}},
        {},  # no deviceId: the path's
    ],
)
async def test_client_bodies_are_read_leniently(builtin: BuiltinHub, body: dict[str, Any]) -> None:
    response = await builtin.put_device("lenient", body)
    assert response.status_code == 200, response.text
    device = response.json()
    assert device["deviceId"] == "lenient"
    assert device["status"] == "enabled"
    assert device["authentication"]["type"] == "sas"
    assert is_base64_key(device["authentication"]["symmetricKey"]["primaryKey"])


async def test_an_edge_device_has_a_scope(builtin: BuiltinHub) -> None:
    response = await builtin.put_device(
        "edge-1", {"deviceId": "edge-1", "capabilities": {"iotEdge": True}}
    )
    device = response.json()
    assert device["capabilities"] == {"iotEdge": True}
    assert device["deviceScope"] == f"ms-azure-iot-edge://edge-1-{device['generationId']}"
    assert device["parentScopes"] == []
    twin = (await builtin.request("GET", "/twins/edge-1")).json()
    assert twin["deviceScope"] == device["deviceScope"]


async def test_put_on_an_existing_device_without_if_match_is_a_conflict(
    builtin: BuiltinHub,
) -> None:
    await builtin.put_device("twice")
    response = await builtin.put_device("twice")
    assert_hub_error(
        response, 409, "DeviceAlreadyExists", "A device with ID 'twice' is already registered"
    )


@pytest.mark.parametrize("if_match", ["*", '"*"', "{etag}", '"{etag}"'])
async def test_put_with_if_match_updates_and_keeps_the_twin(
    builtin: BuiltinHub, if_match: str
) -> None:
    created = (await builtin.put_device("kept")).json()
    await builtin.request(
        "PATCH", "/twins/kept", json={"tags": {"site": "north"}}, headers={"If-Match": "*"}
    )
    update = {"deviceId": "kept", "status": "disabled", "capabilities": {"iotEdge": True}}
    response = await builtin.put_device(
        "kept", update, **{"If-Match": if_match.format(etag=created["etag"])}
    )
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["status"] == "disabled"
    assert updated["statusUpdatedTime"] != "0001-01-01T00:00:00Z"
    assert updated["generationId"] == created["generationId"]
    assert updated["etag"] != created["etag"]
    assert updated["authentication"]["symmetricKey"] == created["authentication"]["symmetricKey"]
    twin = (await builtin.request("GET", "/twins/kept")).json()
    assert twin["tags"] == {"site": "north"}
    assert twin["deviceEtag"] == updated["etag"]


async def test_put_with_a_stale_etag_fails_its_precondition(builtin: BuiltinHub) -> None:
    created = (await builtin.put_device("stale")).json()
    await builtin.put_device("stale", **{"If-Match": "*"})
    response = await builtin.put_device("stale", **{"If-Match": f'"{created["etag"]}"'})
    assert_hub_error(response, 412, "PreconditionFailed")


async def test_put_with_if_match_on_a_missing_device_is_not_found(builtin: BuiltinHub) -> None:
    response = await builtin.put_device("ghost", **{"If-Match": '"*"'})
    assert_hub_error(response, 404, "DeviceNotFound", "ghost")


async def test_body_and_path_must_name_the_same_device(builtin: BuiltinHub) -> None:
    response = await builtin.put_device("one", {"deviceId": "other"})
    assert_hub_error(response, 400, "ArgumentInvalid")


async def test_get_of_a_missing_device_names_it(builtin: BuiltinHub) -> None:
    response = await builtin.request("GET", "/devices/missing-1")
    assert_hub_error(response, 404, "DeviceNotFound", "missing-1")


@pytest.mark.parametrize("if_match", [None, "*", '"*"', '"{etag}"'])
async def test_delete_answers_204(builtin: BuiltinHub, if_match: str | None) -> None:
    created = (await builtin.put_device("doomed")).json()
    headers = {} if if_match is None else {"If-Match": if_match.format(etag=created["etag"])}
    response = await builtin.request("DELETE", "/devices/doomed", headers=headers)
    assert response.status_code == 204
    assert response.content == b""
    assert_hub_error(await builtin.request("GET", "/devices/doomed"), 404, "DeviceNotFound")
    again = await builtin.request("DELETE", "/devices/doomed", headers=headers)
    assert_hub_error(again, 404, "DeviceNotFound", "doomed")


async def test_delete_at_a_stale_etag_fails_its_precondition(builtin: BuiltinHub) -> None:
    await builtin.put_device("guarded")
    response = await builtin.request("DELETE", "/devices/guarded", headers={"If-Match": '"MTIz"'})
    assert_hub_error(response, 412, "PreconditionFailed")
    assert (await builtin.request("GET", "/devices/guarded")).status_code == 200


async def test_a_device_created_again_gets_a_new_generation(builtin: BuiltinHub) -> None:
    first = (await builtin.put_device("reborn")).json()
    await builtin.request("DELETE", "/devices/reborn", headers={"If-Match": "*"})
    second = (await builtin.put_device("reborn")).json()
    assert second["generationId"] != first["generationId"]


@pytest.mark.parametrize("device_id", ["a#b?c", "50%off", "x/y", "it's$(1),=@!*+.", "ünï"])
async def test_ids_travel_url_encoded(builtin: BuiltinHub, device_id: str) -> None:
    response = await builtin.put_device(device_id)
    if device_id in ("x/y", "ünï"):
        assert_hub_error(response, 400, "ArgumentInvalid")
        return
    assert response.status_code == 200, response.text
    read = await builtin.request("GET", f"/devices/{quote(device_id, safe='')}")
    assert read.json()["deviceId"] == device_id
    twin = await builtin.request("GET", f"/twins/{quote(device_id, safe='')}")
    assert twin.json()["deviceId"] == device_id


@pytest.mark.parametrize("device_id", ["has space", "x" * 129, "tab\there"])
async def test_malformed_ids_are_refused(builtin: BuiltinHub, device_id: str) -> None:
    assert_hub_error(await builtin.put_device(device_id), 400, "ArgumentInvalid")


async def test_list_devices_in_id_order_up_to_top(builtin: BuiltinHub) -> None:
    for device_id in ("c", "a", "b"):
        await builtin.put_device(device_id)
    everything = await builtin.client.get("/devices" + API_VERSION, headers=builtin.auth())
    assert [device["deviceId"] for device in everything.json()] == ["a", "b", "c"]
    response = await builtin.client.get("/devices" + API_VERSION + "&top=2", headers=builtin.auth())
    assert response.status_code == 200
    assert [device["deviceId"] for device in response.json()] == ["a", "b"]
    assert response.json()[0]["authentication"]["type"] == "sas"


@pytest.mark.parametrize("top", ["abc", "-1", "0", "1.5"])
async def test_list_refuses_a_top_that_is_not_a_count(builtin: BuiltinHub, top: str) -> None:
    response = await builtin.client.get(f"/devices{API_VERSION}&top={top}", headers=builtin.auth())
    assert_hub_error(response, 400, "ArgumentInvalid")


# --- twins ----------------------------------------------------------------------------------


async def test_a_new_twin(builtin: BuiltinHub) -> None:
    device = (await builtin.put_device("twin-1")).json()
    response = await builtin.request("GET", "/twins/twin-1")
    assert response.status_code == 200
    twin = response.json()
    assert twin["deviceId"] == "twin-1"
    assert twin["etag"] == base64.b64encode((1).to_bytes(8, "big")).decode()
    assert twin["deviceEtag"] == device["etag"]
    assert twin["status"] == "enabled"
    assert twin["statusUpdateTime"] == "0001-01-01T00:00:00Z"
    assert twin["connectionState"] == "Disconnected"
    assert twin["lastActivityTime"] == "0001-01-01T00:00:00Z"
    assert twin["cloudToDeviceMessageCount"] == 0
    assert twin["authenticationType"] == "sas"
    assert twin["x509Thumbprint"] == {"primaryThumbprint": None, "secondaryThumbprint": None}
    assert twin["version"] == 1
    assert twin["tags"] == {}
    assert twin["capabilities"] == {"iotEdge": False}
    for section in ("desired", "reported"):
        properties = twin["properties"][section]
        assert properties["$version"] == 1
        assert set(properties) == {"$version", "$metadata"}
        assert "$lastUpdated" in properties["$metadata"]


async def test_patch_merges_and_null_removes(builtin: BuiltinHub) -> None:
    await builtin.put_device("merge")
    first = {
        "tags": {"site": "north", "floor": 2},
        "properties": {"desired": {"rate": 5, "mode": {"a": 1}}},
    }
    response = await builtin.request(
        "PATCH", "/twins/merge", json=first, headers={"If-Match": '"*"'}
    )
    assert response.status_code == 200, response.text
    second = {"tags": {"floor": None}, "properties": {"desired": {"mode": {"b": 2}, "rate": None}}}
    twin = (
        await builtin.request("PATCH", "/twins/merge", json=second, headers={"If-Match": "*"})
    ).json()
    assert twin["tags"] == {"site": "north"}
    desired = {k: v for k, v in twin["properties"]["desired"].items() if not k.startswith("$")}
    assert desired == {"mode": {"a": 1, "b": 2}}
    assert twin["properties"]["desired"]["$version"] == 3
    assert twin["version"] == 3


async def test_put_replaces_tags_and_desired_and_ignores_what_the_hub_owns(
    builtin: BuiltinHub,
) -> None:
    await builtin.put_device("replace")
    await builtin.request(
        "PATCH", "/twins/replace", json={"tags": {"old": 1}, "properties": {"desired": {"old": 1}}}
    )
    current = (await builtin.request("GET", "/twins/replace")).json()
    # Python's replace_twin sends the whole twin back, read-only fields and all.
    current["tags"] = {"new": True}
    current["properties"]["desired"] = {"new": [1, 2], "$version": 99, "$metadata": {"x": 1}}
    current["properties"]["reported"] = {"ignored": 1}
    response = await builtin.request(
        "PUT", "/twins/replace", json=current, headers={"If-Match": current["etag"]}
    )
    assert response.status_code == 200, response.text
    twin = response.json()
    assert twin["tags"] == {"new": True}
    assert twin["properties"]["desired"]["new"] == [1, 2]
    assert "old" not in twin["properties"]["desired"]
    assert set(twin["properties"]["reported"]) == {"$version", "$metadata"}


async def test_twin_if_match_compares_the_twin_etag(builtin: BuiltinHub) -> None:
    device = (await builtin.put_device("etags")).json()
    twin = (await builtin.request("GET", "/twins/etags")).json()
    patch = {"tags": {"a": 1}}
    wrong = await builtin.request(
        "PATCH", "/twins/etags", json=patch, headers={"If-Match": f'"{device["etag"]}"'}
    )
    assert_hub_error(wrong, 412, "PreconditionFailed")
    right = await builtin.request(
        "PATCH", "/twins/etags", json=patch, headers={"If-Match": f'"{twin["etag"]}"'}
    )
    assert right.status_code == 200
    stale = await builtin.request(
        "PUT", "/twins/etags", json=patch, headers={"If-Match": twin["etag"]}
    )
    assert_hub_error(stale, 412, "PreconditionFailed")


async def test_twins_of_missing_devices(builtin: BuiltinHub) -> None:
    assert_hub_error(await builtin.request("GET", "/twins/nobody"), 404, "DeviceNotFound", "nobody")
    patched = await builtin.request(
        "PATCH", "/twins/nobody", json={"tags": {}}, headers={"If-Match": "*"}
    )
    assert_hub_error(patched, 404, "DeviceNotFound", "nobody")
    replaced = await builtin.request("PUT", "/twins/nobody", json={"tags": {}})
    assert_hub_error(replaced, 404, "DeviceNotFound", "nobody")


async def test_twin_values_that_break_iot_hub_rules_are_refused(builtin: BuiltinHub) -> None:
    await builtin.put_device("strict")
    for body in ({"tags": {"a.b": 1}}, {"properties": {"desired": {"x": "y" * 40_000}}}):
        response = await builtin.request("PATCH", "/twins/strict", json=body)
        assert_hub_error(response, 400, "ArgumentInvalid")


# --- query ----------------------------------------------------------------------------------


async def query(builtin: BuiltinHub, text: str, **headers: str) -> httpx.Response:
    return await builtin.request("POST", "/devices/query", json={"query": text}, headers=headers)


async def test_query_pages_twins_with_a_continuation_only_while_more_follow(
    builtin: BuiltinHub,
) -> None:
    for index in range(5):
        await builtin.put_device(f"q{index}")
    seen: list[str] = []
    continuation: str | None = None
    pages = 0
    while True:
        headers = {"x-ms-max-item-count": "2"}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = await query(builtin, "SELECT * FROM devices", **headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-ms-item-type"] == "twin"
        seen += [twin["deviceId"] for twin in response.json()]
        assert all("properties" in twin for twin in response.json())
        pages += 1
        continuation = response.headers.get("x-ms-continuation")
        if continuation is None:
            break
    assert seen == [f"q{index}" for index in range(5)]
    assert pages == 3


async def test_query_filters_and_counts(builtin: BuiltinHub) -> None:
    for index in range(4):
        await builtin.put_device(f"f{index}")
        site = "north" if index % 2 else "south"
        await builtin.request("PATCH", f"/twins/f{index}", json={"tags": {"site": site}})
    north = await query(builtin, "SELECT * FROM devices WHERE tags.site = 'north'")
    assert [twin["deviceId"] for twin in north.json()] == ["f1", "f3"]
    assert "x-ms-continuation" not in north.headers
    counted = await query(builtin, "SELECT COUNT() AS total FROM devices WHERE tags.site = 'south'")
    assert counted.status_code == 200
    assert counted.headers["x-ms-item-type"] == "raw"
    assert counted.json() == [{"total": 2}]


@pytest.mark.parametrize(
    ("body", "name"),
    [
        ({"query": "SELECT * FROM nowhere"}, "ArgumentInvalid"),
        ({"query": "DROP TABLE devices"}, "ArgumentInvalid"),
        ({"query": ""}, "ArgumentNull"),
        ({}, "ArgumentNull"),
        ({"query": 5}, "IotHubFormatError"),
    ],
)
async def test_bad_queries(builtin: BuiltinHub, body: dict[str, Any], name: str) -> None:
    response = await builtin.request("POST", "/devices/query", json=body)
    assert_hub_error(response, 400, name)


async def test_bad_paging_headers(builtin: BuiltinHub) -> None:
    count = await query(builtin, "SELECT * FROM devices", **{"x-ms-max-item-count": "many"})
    assert_hub_error(count, 400, "ArgumentInvalid")
    token = await query(builtin, "SELECT * FROM devices", **{"x-ms-continuation": "garbage"})
    assert_hub_error(token, 400, "ArgumentInvalid")


# --- rights and tokens ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "allowed"),
    [
        ("iothubowner", {"get device", "put device", "delete device", "twin", "query"}),
        ("registryRead", {"get device"}),
        ("registryReadWrite", {"get device", "put device", "delete device"}),
        ("service", {"twin", "query"}),
        ("device", set()),
    ],
)
async def test_rights_per_policy(builtin: BuiltinHub, policy: str, allowed: set[str]) -> None:
    await builtin.put_device("guarded")
    attempts = {
        "get device": ("GET", "/devices/guarded", None),
        "put device": ("PUT", "/devices/guarded", {"deviceId": "guarded"}),
        "twin": ("GET", "/twins/guarded", None),
        "query": ("POST", "/devices/query", {"query": "SELECT * FROM devices"}),
        "delete device": ("DELETE", "/devices/guarded", None),
    }
    for what, (method, path, body) in attempts.items():
        headers = {"If-Match": "*"} if method != "GET" else {}
        response = await builtin.request(method, path, policy=policy, json=body, headers=headers)
        if what in allowed:
            assert response.status_code in (200, 204), (what, response.text)
        else:
            assert_hub_error(response, 401, "IotHubUnauthorizedAccess")
            assert policy in response.json()["Message"], what


@pytest.mark.parametrize("encode", [True, False])
@pytest.mark.parametrize(
    "audience", [HUB_HOST, "HUB.example", f"{HUB_HOST}:8443", f"https://{HUB_HOST}/devices"]
)
async def test_tokens_signed_either_way(builtin: BuiltinHub, encode: bool, audience: str) -> None:
    await builtin.put_device("signed")
    headers = builtin.auth(encode=encode, audience=audience)
    response = await builtin.client.get("/devices/signed" + API_VERSION, headers=headers)
    assert response.status_code == 200, response.text


async def test_the_secondary_key_signs_too(builtin: BuiltinHub) -> None:
    policy = builtin.hub.policy("iothubowner")
    assert policy is not None
    token = sas_token(HUB_HOST, policy.name, policy.secondary_key)
    response = await builtin.client.get("/devices" + API_VERSION, headers={"Authorization": token})
    assert response.status_code == 200


def refused_tokens(builtin: BuiltinHub) -> dict[str, str | None]:
    owner = builtin.key()
    return {
        "none": None,
        "not sas": "Bearer abc",
        "expired": sas_token(HUB_HOST, "iothubowner", owner, ttl=-5),
        "forged": sas_token(HUB_HOST, "iothubowner", base64.b64encode(b"x" * 32).decode()),
        "another policy's key": sas_token(HUB_HOST, "iothubowner", builtin.key("service")),
        "unknown policy": sas_token(HUB_HOST, "provisioningserviceowner", owner),
        "wrong audience": sas_token("other.example", "iothubowner", owner),
        "audience prefix": sas_token("hub.example.evil", "iothubowner", owner),
        "dps audience": sas_token(DPS_HOST, "iothubowner", owner),
    }


async def test_refused_tokens(builtin: BuiltinHub) -> None:
    await builtin.put_device("locked")
    for what, token in refused_tokens(builtin).items():
        headers = {} if token is None else {"Authorization": token}
        response = await builtin.client.get("/devices/locked" + API_VERSION, headers=headers)
        assert response.status_code == 401, what
        assert_hub_error(response, 401, "IotHubUnauthorizedAccess")


async def test_a_key_of_another_hub_is_refused(builtin: BuiltinHub) -> None:
    other = builtin_hub("other.example")
    assert await builtin.hubs.add(other)
    policy = other.policy("iothubowner")
    assert policy is not None
    token = sas_token(HUB_HOST, "iothubowner", policy.primary_key)
    response = await builtin.client.get("/devices" + API_VERSION, headers={"Authorization": token})
    assert_hub_error(response, 401, "IotHubUnauthorizedAccess")


@pytest.mark.parametrize(
    "query_string", ["?api-version=2018-06-30", "?api-version=1999-01-01", "", "?top=1"]
)
async def test_any_api_version_is_accepted(builtin: BuiltinHub, query_string: str) -> None:
    response = await builtin.client.get("/devices" + query_string, headers=builtin.auth())
    assert response.status_code == 200


# --- the edge's own errors ------------------------------------------------------------------


async def test_unknown_routes_and_methods(builtin: BuiltinHub) -> None:
    unknown = await builtin.request("GET", "/jobs/v2")
    assert_hub_error(unknown, 404, "ResourceNotFound")
    wrong_method = await builtin.request("POST", "/twins/x")
    assert_hub_error(wrong_method, 405, "MethodNotAllowed")
    assert set(wrong_method.headers["allow"].split(", ")) == {"GET", "PATCH", "PUT"}


@pytest.mark.parametrize(
    ("content", "name"),
    [
        (b"", "ArgumentNull"),
        (b"   ", "ArgumentNull"),
        (b"{not json", "IotHubFormatError"),
        (b"[1, 2]", "IotHubFormatError"),
        (b'{"deviceId": 5}', "IotHubFormatError"),
        (b'{"capabilities": {"iotEdge": "yes"}}', "IotHubFormatError"),
        (b'{"authentication": {"symmetricKey": "k"}}', "IotHubFormatError"),
        (b'{"status": "paused"}', "ArgumentInvalid"),
        (b'{"authentication": {"type": "password"}}', "ArgumentInvalid"),
        (b'{"authentication": {"type": "selfSigned"}}', "ArgumentInvalid"),
        (b'{"authentication": {"symmetricKey": {"primaryKey": "not base64!"}}}', "ArgumentInvalid"),
        (b"\xff\xfe", "IotHubFormatError"),
    ],
)
async def test_malformed_device_bodies(builtin: BuiltinHub, content: bytes, name: str) -> None:
    response = await builtin.request(
        "PUT", "/devices/body", content=content, headers={"Content-Type": "application/json"}
    )
    assert_hub_error(response, 400, name)
    assert_hub_error(await builtin.request("GET", "/devices/body"), 404, "DeviceNotFound")


async def test_malformed_twin_bodies(builtin: BuiltinHub) -> None:
    await builtin.put_device("tw")
    for content in (b"{", b'{"tags": [1]}', b'{"properties": {"desired": 3}}', b"null"):
        response = await builtin.request("PATCH", "/twins/tw", content=content)
        assert_hub_error(response, 400, "IotHubFormatError")


async def test_bodies_have_a_limit(builtin: BuiltinHub) -> None:
    big = b'{"tags": {"a": "' + b"x" * 300_000 + b'"}}'
    response = await builtin.request("PATCH", "/twins/any", content=big)
    assert_hub_error(response, 413, "MessageTooLarge")

    async def chunks() -> Any:
        for _ in range(300):
            yield b" " * 1024

    streamed = await builtin.request("PATCH", "/twins/any", content=chunks())
    assert_hub_error(streamed, 413, "MessageTooLarge")


async def test_a_failure_says_nothing_of_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: HttpRequest, params: dict[str, str]) -> HttpResponse:
        raise RuntimeError("connection string with SharedAccessKey=secret")

    app = HubApiApp(lambda hub: [Route("GET", ("boom",), broken, None)], lambda: datetime.now(UTC))
    hub = builtin_hub(HUB_HOST)
    policy = hub.policy("iothubowner")
    assert policy is not None
    transport = httpx.ASGITransport(app=app.for_hub(hub))
    async with httpx.AsyncClient(transport=transport, base_url=f"https://{HUB_HOST}") as client:
        token = sas_token(HUB_HOST, policy.name, policy.primary_key)
        response = await client.get("/boom", headers={"Authorization": token})
    assert_hub_error(response, 500, "ServerError")
    assert "secret" not in response.text
    assert "RuntimeError" not in response.text
    assert any("secret" in str(record.exc_info) for record in caplog.records)


# --- host dispatch --------------------------------------------------------------------------


@pytest.mark.parametrize("host", [DPS_HOST, f"{DPS_HOST}:8443", "LOCALHOST", "127.0.0.1:8443"])
async def test_dpsd_own_names_go_to_the_dps_app(builtin: BuiltinHub, host: str) -> None:
    response = await builtin.client.get(
        "/devices" + API_VERSION, headers={"Host": host, **builtin.auth()}
    )
    assert response.status_code == 299
    assert response.text == "dps"


@pytest.mark.parametrize("host", [HUB_HOST, "HUB.Example", f"{HUB_HOST}:8443"])
async def test_a_hub_name_goes_to_the_hub(builtin: BuiltinHub, host: str) -> None:
    response = await builtin.client.get(
        "/devices" + API_VERSION, headers={"Host": host, **builtin.auth()}
    )
    assert response.status_code == 200
    assert builtin.dps.scopes == []


@pytest.mark.parametrize("host", ["unknown.example", "", "[::1]:8443"])
async def test_other_names_go_to_the_dps_app(builtin: BuiltinHub, host: str) -> None:
    response = await builtin.client.get("/devices" + API_VERSION, headers={"Host": host})
    assert response.status_code == 299


async def test_a_hub_that_is_only_linked_is_not_served(builtin: BuiltinHub) -> None:
    recorded = LinkedHub(host_name="recorded.example", etag="e")
    assert await builtin.hubs.add(recorded)
    response = await builtin.client.get(
        "/devices" + API_VERSION, headers={"Host": "recorded.example"}
    )
    assert response.status_code == 299


async def test_websockets_and_lifespan_go_to_the_dps_app(builtin: BuiltinHub) -> None:
    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, Any]) -> None:
        pass

    websocket = {
        "type": "websocket",
        "headers": [(b"host", HUB_HOST.encode())],
        "path": "/$iothub/websocket",
    }
    await builtin.app(websocket, receive, send)
    await builtin.app({"type": "lifespan"}, receive, send)
    assert [scope["type"] for scope in builtin.dps.scopes] == ["websocket", "lifespan"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingFinder:
    def __init__(self, hubs: dict[str, LinkedHub]) -> None:
        self.hubs = hubs
        self.calls: list[str] = []

    async def __call__(self, host: str) -> LinkedHub | None:
        self.calls.append(host)
        await asyncio.sleep(0)
        return self.hubs.get(host)


async def test_lookups_are_remembered_briefly_both_ways() -> None:
    clock = FakeClock()
    finder = CountingFinder({})
    lookup = HubLookup(finder, ttl=3.0, clock=clock)
    assert await lookup("new.example") is None
    hub = builtin_hub("new.example")
    finder.hubs["new.example"] = hub  # added by another process meanwhile
    clock.now = 2.9
    assert await lookup("new.example") is None
    clock.now = 3.1
    assert await lookup("new.example") is hub
    clock.now = 5.0
    assert await lookup("new.example") is hub
    assert finder.calls == ["new.example", "new.example"]


async def test_concurrent_lookups_of_one_name_read_once() -> None:
    finder = CountingFinder({"hub.example": builtin_hub("hub.example")})
    lookup = HubLookup(finder, clock=FakeClock())
    answers = await asyncio.gather(*(lookup("hub.example") for _ in range(20)))
    assert all(answer is answers[0] is not None for answer in answers)
    assert finder.calls == ["hub.example"]


async def test_a_failed_lookup_fails_its_waiters_and_is_not_remembered() -> None:
    calls = 0

    async def failing(host: str) -> LinkedHub | None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise OSError("store down")

    lookup = HubLookup(failing, clock=FakeClock())
    results = await asyncio.gather(lookup("x.example"), lookup("x.example"), return_exceptions=True)
    assert all(isinstance(result, OSError) for result in results)
    with pytest.raises(OSError, match="store down"):
        await lookup("x.example")
    assert calls == 2


async def test_random_names_cost_a_bounded_number_of_store_reads() -> None:
    clock = FakeClock()
    finder = CountingFinder({"hub.example": builtin_hub("hub.example")})
    lookup = HubLookup(finder, ttl=3.0, capacity=100, per_second=10.0, burst=10, clock=clock)
    assert await lookup("hub.example") is not None
    for index in range(1000):
        assert await lookup(f"random-{index}.example") is None
    assert len(finder.calls) == 10
    clock.now = 10.0  # the hub's entry expired; the ration refilled
    for index in range(1000):
        await lookup(f"again-{index}.example")
    # The hub is still served while the flood eats the ration: its last answer is kept.
    assert await lookup("hub.example") is not None
    assert len(finder.calls) <= 21
    assert len(lookup) <= 100


def test_the_ration_refills_over_time() -> None:
    clock = FakeClock()
    ration = LookupRation(per_second=2.0, burst=2, clock=clock)
    assert [ration.take() for _ in range(3)] == [True, True, False]
    clock.now = 0.5
    assert [ration.take() for _ in range(2)] == [True, False]
    clock.now = 100.0
    assert [ration.take() for _ in range(3)] == [True, True, False]


async def test_a_hub_added_later_is_served_after_the_cache_expires(builtin: BuiltinHub) -> None:
    clock = FakeClock()
    app = HostDispatch(
        builtin.dps,
        builtin.hub_app,
        HubLookup(builtin.service.served_hub, ttl=3.0, clock=clock),
        [DPS_HOST],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://late.example") as client:
        assert (await client.get("/devices")).status_code == 299
        late = builtin_hub("late.example")
        assert await builtin.hubs.add(late)
        assert (await client.get("/devices")).status_code == 299
        clock.now = 4.0
        policy = late.policy("iothubowner")
        assert policy is not None
        token = sas_token("late.example", policy.name, policy.primary_key)
        response = await client.get("/devices", headers={"Authorization": token})
        assert response.status_code == 200, response.text


# --- hostile input --------------------------------------------------------------------------

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=10,
)
device_bodies = st.fixed_dictionaries(
    {},
    optional={
        "deviceId": st.sampled_from(["fuzz"]) | json_values,
        "status": st.sampled_from(["enabled", "disabled", "Enabled"]) | json_values,
        "statusReason": json_values,
        "authentication": st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(["sas", "selfSigned", "none", "certificateAuthority"])
                | json_values,
                "symmetricKey": json_values,
                "x509Thumbprint": json_values,
            },
        )
        | json_values,
        "capabilities": json_values,
    },
)
twin_bodies = st.fixed_dictionaries(
    {},
    optional={
        "tags": json_values,
        "properties": st.fixed_dictionaries({}, optional={"desired": json_values}) | json_values,
    },
)


def assert_not_a_failure(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert ERROR_MESSAGE.match(response.json()["Message"])


@FUZZ
@given(body=device_bodies | json_values, if_match=st.none() | st.sampled_from(["*", '"*"', "x"]))
async def test_device_bodies_never_fail_the_hub(
    builtin: BuiltinHub, body: Any, if_match: str | None
) -> None:
    headers = {} if if_match is None else {"If-Match": if_match}
    response = await builtin.put_device("fuzz", body, **headers)
    assert_not_a_failure(response)


@FUZZ
@given(body=twin_bodies | json_values, method=st.sampled_from(["PATCH", "PUT"]))
async def test_twin_bodies_never_fail_the_hub(builtin: BuiltinHub, body: Any, method: str) -> None:
    await builtin.put_device("fuzz-twin")  # a conflict after the first example
    response = await builtin.request(method, "/twins/fuzz-twin", json=body)
    assert_not_a_failure(response)


@FUZZ
@given(
    raw=st.binary(max_size=200),
    path=st.sampled_from(["/devices/raw", "/twins/raw", "/devices/query"]),
)
async def test_raw_bytes_never_fail_the_hub(builtin: BuiltinHub, raw: bytes, path: str) -> None:
    method = "POST" if path.endswith("query") else "PUT"
    response = await builtin.request(method, path, content=raw)
    assert_not_a_failure(response)


@FUZZ
@given(
    authorization=st.text(max_size=120)
    | st.just("SharedAccessSignature sr=hub.example&sig=AA==&se=99999999999&skn=iothubowner"),
    if_match=st.text(max_size=20),
    page_size=st.text(max_size=12),
    continuation=st.text(max_size=40),
)
async def test_garbage_headers_never_fail_the_hub(
    builtin: BuiltinHub, authorization: str, if_match: str, page_size: str, continuation: str
) -> None:
    headers = {
        "If-Match": if_match,
        "x-ms-max-item-count": page_size,
        "x-ms-continuation": continuation,
    }
    for credentials in ({"Authorization": authorization}, builtin.auth()):
        try:
            response = await builtin.client.post(
                "/devices/query" + API_VERSION,
                json={"query": "SELECT * FROM devices"},
                headers={**headers, **credentials},
            )
        except (UnicodeEncodeError, httpx.LocalProtocolError):
            return  # not a header a client could send
        assert_not_a_failure(response)


@FUZZ
@given(segments=st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3))
async def test_any_path_gets_an_iot_hub_answer(builtin: BuiltinHub, segments: list[str]) -> None:
    path = "/" + "/".join(quote(segment, safe="") for segment in segments)
    for method in ("GET", "PUT", "DELETE", "PATCH", "POST"):
        response = await builtin.request(method, path, content=b"{}")
        assert_not_a_failure(response)
