"""The individual enrollment API over HTTP, in-process against a real SQLite store."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from tests.certs import issue
from tests.conftest import API, ServiceApi, sas_token

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z$")
KEY_16 = base64.b64encode(b"k" * 16).decode()
KEY_64 = base64.b64encode(b"k" * 64).decode()


def symmetric(registration_id: str, **extra: Any) -> dict[str, Any]:
    return {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **extra}


def assert_dps_error(response: Any, status: int, code: int, *words: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["errorCode"] == code
    assert response.headers["x-ms-error-code"] == str(code)
    assert body["trackingId"] == response.headers["x-ms-request-id"]
    assert TIMESTAMP.match(body["timestampUtc"])
    assert body["info"] == {}
    for word in words:
        assert word in body["message"], body["message"]
    return body


async def test_create_fills_in_defaults_and_server_fields(service_api: ServiceApi) -> None:
    response = await service_api.put("/enrollments/dev-1", symmetric("dev-1"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    body = response.json()
    assert body["provisioningStatus"] == "enabled"
    assert body["capabilities"] == {"iotEdge": False}
    assert body["reprovisionPolicy"] == {"updateHubAssignment": True, "migrateDeviceData": True}
    assert TIMESTAMP.match(body["createdDateTimeUtc"])
    assert body["createdDateTimeUtc"] == body["lastUpdatedDateTimeUtc"]
    assert base64.b64decode(body["etag"]).startswith(b'"')
    keys = body["attestation"]["symmetricKey"]
    assert len(base64.b64decode(keys["primaryKey"])) == 64
    assert keys["primaryKey"] != keys["secondaryKey"]
    assert "registrationState" not in body


async def test_read_only_fields_in_the_body_are_ignored(service_api: ServiceApi) -> None:
    body = symmetric(
        "dev-1",
        etag="client-etag",
        createdDateTimeUtc="2001-01-01T00:00:00Z",
        registrationState={"registrationId": "dev-1", "status": "assigned"},
    )
    response = await service_api.put("/enrollments/dev-1", body)
    assert response.status_code == 200
    assert response.json()["etag"] != "client-etag"
    assert not response.json()["createdDateTimeUtc"].startswith("2001")
    assert "registrationState" not in (await service_api.get("/enrollments/dev-1")).json()


async def test_update_needs_if_match(service_api: ServiceApi) -> None:
    created = (await service_api.put("/enrollments/dev-1", symmetric("dev-1"))).json()
    conflict = await service_api.put("/enrollments/dev-1", symmetric("dev-1"))
    assert_dps_error(conflict, 409, 409201, "already exists")
    for quote in ("", '"', "W/"):
        current = (await service_api.get("/enrollments/dev-1")).json()
        etag = f"{quote}{current['etag']}{quote.strip('W/')}"
        updated = await service_api.put(
            "/enrollments/dev-1", {**current, "deviceId": "renamed"}, **{"If-Match": etag}
        )
        assert updated.status_code == 200, (etag, updated.text)
        assert updated.json()["deviceId"] == "renamed"
    final = (
        await service_api.put("/enrollments/dev-1", symmetric("dev-1"), **{"If-Match": "*"})
    ).json()
    assert final["createdDateTimeUtc"] == created["createdDateTimeUtc"]
    assert final["etag"] != created["etag"]
    assert final["attestation"]["symmetricKey"] == created["attestation"]["symmetricKey"]
    stale = await service_api.put("/enrollments/dev-1", final, **{"If-Match": created["etag"]})
    assert_dps_error(stale, 412, 412002)


async def test_if_match_on_a_missing_enrollment(service_api: ServiceApi) -> None:
    missing = await service_api.put("/enrollments/dev-1", symmetric("dev-1"), **{"If-Match": "abc"})
    assert_dps_error(missing, 412, 412002)
    created = await service_api.put("/enrollments/dev-1", symmetric("dev-1"), **{"If-Match": "*"})
    assert created.status_code == 200


async def test_keys_sent_are_kept_and_checked(service_api: ServiceApi) -> None:
    keys = {"primaryKey": KEY_16, "secondaryKey": KEY_64}
    body = {
        "registrationId": "dev-1",
        "attestation": {"type": "symmetricKey", "symmetricKey": keys},
    }
    assert (await service_api.put("/enrollments/dev-1", body)).json()["attestation"][
        "symmetricKey"
    ] == keys
    mechanism = await service_api.post("/enrollments/dev-1/attestationmechanism")
    assert mechanism.json() == {"type": "symmetricKey", "symmetricKey": keys}
    for bad, word in (
        ("not base64!", "base64"),
        (base64.b64encode(b"k" * 15).decode(), "15 bytes"),
        (base64.b64encode(b"k" * 65).decode(), "65 bytes"),
    ):
        wrong = {
            "registrationId": "dev-2",
            "attestation": {"type": "symmetricKey", "symmetricKey": {"primaryKey": bad}},
        }
        assert_dps_error(await service_api.put("/enrollments/dev-2", wrong), 400, 400004, word)
    assert (await service_api.get("/enrollments/dev-2")).status_code == 404


async def test_get_leaves_out_secrets(service_api: ServiceApi) -> None:
    await service_api.put("/enrollments/dev-1", symmetric("dev-1"))
    body = (await service_api.get("/enrollments/dev-1")).json()
    assert body["attestation"] == {"type": "symmetricKey"}
    assert_dps_error(await service_api.get("/enrollments/nobody"), 404, 404201, "nobody")
    assert_dps_error(
        await service_api.post("/enrollments/nobody/attestationmechanism"), 404, 404201
    )


async def test_delete(service_api: ServiceApi) -> None:
    created = (await service_api.put("/enrollments/dev-1", symmetric("dev-1"))).json()
    assert_dps_error(
        await service_api.delete("/enrollments/dev-1", **{"If-Match": "stale"}), 412, 412002
    )
    deleted = await service_api.delete("/enrollments/dev-1", **{"If-Match": created["etag"]})
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_dps_error(await service_api.delete("/enrollments/dev-1"), 404, 404201)
    await service_api.put("/enrollments/dev-2", symmetric("dev-2"))
    assert (await service_api.delete("/enrollments/DEV-2")).status_code == 204


INVALID_BODIES: list[tuple[str, str, object, str]] = [
    ("x" * 129, "x" * 129, symmetric("x" * 129), "129 characters"),
    ("dev-1", "-dev", symmetric("-dev"), "invalid"),
    ("dev-1", "dev 1", symmetric("dev 1"), "invalid"),
    ("dev-1", "dev-1", symmetric("other"), "does not match"),
    ("dev-1", "dev-1", {"attestation": {"type": "symmetricKey"}}, "registrationId is required"),
    ("dev-1", "dev-1", {"registrationId": "dev-1"}, "attestation is required"),
    ("dev-1", "dev-1", {"registrationId": "dev-1", "attestation": {}}, "attestation.type"),
    (
        "dev-1",
        "dev-1",
        {"registrationId": "dev-1", "attestation": {"type": "magic"}},
        "$.attestation.type",
    ),
    ("dev-1", "dev-1", {"registrationId": 5, "attestation": {"type": "tpm"}}, "$.registrationId"),
    ("dev-1", "dev-1", [], "Expected `object`"),
    (
        "dev-1",
        "dev-1",
        {
            "registrationId": "dev-1",
            "attestation": {"type": "none", "tpm": {"endorsementKey": "AAAA"}},
        },
        "'tpm'",
    ),
    (
        "dev-1",
        "dev-1",
        {"registrationId": "dev-1", "attestation": {"type": "tpm"}},
        "endorsementKey",
    ),
    (
        "dev-1",
        "dev-1",
        {
            "registrationId": "dev-1",
            "attestation": {"type": "tpm", "tpm": {"endorsementKey": "@@"}},
        },
        "base64",
    ),
    (
        "dev-1",
        "dev-1",
        {
            "registrationId": "dev-1",
            "attestation": {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": "garbage!"}}},
            },
        },
        "certificate",
    ),
    (
        "dev-1",
        "dev-1",
        {
            "registrationId": "dev-1",
            "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "ca"}}},
        },
        "caReferences",
    ),
    (
        "dev-1",
        "dev-1",
        {"registrationId": "dev-1", "attestation": {"type": "x509", "x509": {}}},
        "exactly one",
    ),
    ("dev-1", "dev-1", symmetric("dev-1", capabilities={}), "iotEdge"),
    ("dev-1", "dev-1", symmetric("dev-1", provisioningStatus="paused"), "$.provisioningStatus"),
    ("dev-1", "dev-1", symmetric("dev-1", allocationPolicy="custom"), "customAllocationDefinition"),
    (
        "dev-1",
        "dev-1",
        symmetric(
            "dev-1",
            allocationPolicy="custom",
            customAllocationDefinition={"webhookUrl": "ftp://x", "apiVersion": "2021-10-01"},
        ),
        "webhookUrl",
    ),
    ("dev-1", "dev-1", symmetric("dev-1", deviceId="bad device"), "deviceId"),
    ("dev-1", "dev-1", symmetric("dev-1", iotHubs=["a b"]), "iotHubs"),
]


@pytest.mark.parametrize(("path_id", "written_id", "body", "word"), INVALID_BODIES)
async def test_invalid_bodies_are_refused_and_write_nothing(
    service_api: ServiceApi, path_id: str, written_id: str, body: object, word: str
) -> None:
    response = await service_api.put(f"/enrollments/{path_id}", body)
    status = 400
    code = 400006 if word.startswith(("$", "Expected")) else 400004
    assert_dps_error(response, status, code, word)
    query = await service_api.post("/enrollments/query", {"query": "SELECT *"})
    assert query.json() == []


async def test_malformed_and_oversized_bodies(service_api: ServiceApi) -> None:
    headers = {**service_api.auth(), "Content-Type": "application/json"}
    broken = await service_api.client.put(
        "/enrollments/dev-1" + API, content=b"{nope", headers=headers
    )
    assert_dps_error(broken, 400, 400006, "not valid JSON")
    empty = await service_api.client.put("/enrollments/dev-1" + API, content=b"", headers=headers)
    assert_dps_error(empty, 400, 400004, "JSON body")
    huge = symmetric("dev-1", initialTwin={"tags": {"blob": "x" * 100_000}})
    assert_dps_error(await service_api.put("/enrollments/dev-1", huge), 413, 413001, "98304")
    text = {**service_api.auth(), "Content-Type": "text/plain"}
    plain = await service_api.client.put("/enrollments/dev-1" + API, content=b"{}", headers=text)
    assert_dps_error(plain, 415, 415001)
    assert (await service_api.get("/enrollments/dev-1")).status_code == 404


async def test_api_version_is_required_and_known(service_api: ServiceApi) -> None:
    missing = await service_api.client.get("/enrollments/dev-1", headers=service_api.auth())
    assert_dps_error(missing, 400, 400001, "api-version")
    unknown = await service_api.client.get(
        "/enrollments/dev-1?api-version=1999-01-01", headers=service_api.auth()
    )
    assert_dps_error(unknown, 400, 400001, "1999-01-01")
    older = await service_api.client.get(
        "/enrollments/dev-1?api-version=2019-03-31", headers=service_api.auth()
    )
    assert older.status_code == 404


async def test_routing_is_case_insensitive_and_decodes_ids(service_api: ServiceApi) -> None:
    await service_api.put("/enrollments/dev.1_a:b", symmetric("dev.1_a:b"))
    assert (await service_api.get("/ENROLLMENTS/dev.1_a:b")).status_code == 200
    assert (await service_api.get("/enrollments/dev%2E1_a%3Ab")).status_code == 200
    slash = await service_api.get("/enrollments/a%2Fb")
    assert_dps_error(slash, 400, 400004, "a/b")
    assert_dps_error(await service_api.get("/nowhere"), 404, 404000)
    not_allowed = await service_api.client.patch(
        "/enrollments/dev-1" + API, headers=service_api.auth()
    )
    assert_dps_error(not_allowed, 405, 405000)
    assert "PUT" in not_allowed.headers["allow"]


async def test_authentication(service_api: ServiceApi) -> None:
    path = "/enrollments/dev-1" + API
    owner = service_api.runtime.policies["provisioningserviceowner"]
    cases = {
        "missing": {},
        "malformed": {"Authorization": "Bearer abc"},
        "garbage": {"Authorization": "SharedAccessSignature sr=&&&"},
        "wrong key": {"Authorization": sas_token("localhost", owner.name, KEY_64)},
        "unknown policy": {"Authorization": sas_token("localhost", "nobody", owner.primary_key)},
        "expired": {"Authorization": sas_token("localhost", owner.name, owner.primary_key, ttl=-5)},
        "other host": {"Authorization": sas_token("other.example", owner.name, owner.primary_key)},
        "no policy": {"Authorization": sas_token("localhost", None, owner.primary_key)},
    }
    for case, headers in cases.items():
        response = await service_api.client.get(path, headers=headers)
        assert response.status_code == 401, case
        assert_dps_error(response, 401, 401002)
    for token in (
        sas_token("localhost", owner.name, owner.secondary_key),
        sas_token("localhost", owner.name, owner.primary_key, encode=False),
        sas_token("https://localhost:8443", owner.name, owner.primary_key),
        sas_token("LOCALHOST", owner.name, owner.primary_key),
    ):
        response = await service_api.client.get(path, headers={"Authorization": token})
        assert response.status_code == 404, token


async def test_the_audience_must_be_a_name_of_this_dpsd(service_api: ServiceApi) -> None:
    """Not whatever the request's own Host header says: a token for another service is
    refused however the request is addressed, and one for any of dpsd's names (its host
    name, certificate names and addresses) is accepted wherever it is sent."""
    path = "/enrollments/dev-1" + API
    owner = service_api.runtime.policies["provisioningserviceowner"]
    for audience, host in [("other.example", "other.example"), ("evil.example", "localhost")]:
        token = sas_token(audience, owner.name, owner.primary_key)
        response = await service_api.client.get(
            path, headers={"Authorization": token, "Host": host}
        )
        assert_dps_error(response, 401, 401002, "audience")
    for audience, host in [("127.0.0.1", "localhost"), ("[::1]:8443", "other.example")]:
        token = sas_token(audience, owner.name, owner.primary_key)
        response = await service_api.client.get(
            path, headers={"Authorization": token, "Host": host}
        )
        assert response.status_code == 404, (audience, host)


async def test_rights_are_checked_per_operation(service_api: ServiceApi) -> None:
    await service_api.put("/enrollments/dev-1", symmetric("dev-1"))
    reader = service_api.auth("enrollmentread")
    assert (
        await service_api.client.get("/enrollments/dev-1" + API, headers=reader)
    ).status_code == 200
    query = await service_api.client.post(
        "/enrollments/query" + API, json={"query": "SELECT *"}, headers=reader
    )
    assert query.status_code == 200
    for method, path in (
        ("PUT", "/enrollments/dev-1"),
        ("DELETE", "/enrollments/dev-1"),
        ("POST", "/enrollments/dev-1/attestationmechanism"),
        ("POST", "/enrollments"),
    ):
        response = await service_api.client.request(
            method, path + API, json=symmetric("dev-1"), headers=reader
        )
        assert_dps_error(response, 401, 401002, "EnrollmentWrite")
    other = service_api.auth("registrationstatusread")
    denied = await service_api.client.get("/enrollments/dev-1" + API, headers=other)
    assert_dps_error(denied, 401, 401002, "EnrollmentRead")


async def test_query_pages_with_continuation(service_api: ServiceApi) -> None:
    for n in range(7):
        status = "disabled" if n % 3 == 0 else "enabled"
        await service_api.put(
            f"/enrollments/dev-{n}", symmetric(f"dev-{n}", provisioningStatus=status)
        )
    seen: list[str] = []
    continuation: str | None = None
    pages = 0
    while True:
        headers = {"x-ms-max-item-count": "3"}
        if continuation:
            headers["x-ms-continuation"] = continuation
        response = await service_api.post(
            "/enrollments/query", {"query": "SELECT * FROM enrollments"}, **headers
        )
        assert response.status_code == 200
        assert response.headers["x-ms-item-type"] == "Enrollment"
        assert response.headers["x-ms-max-item-count"] == "3"
        assert all("symmetricKey" not in item["attestation"] for item in response.json())
        seen += [item["registrationId"] for item in response.json()]
        pages += 1
        continuation = response.headers.get("x-ms-continuation")
        if continuation is None:
            break
    assert pages == 3
    assert seen == [f"dev-{n}" for n in range(7)]
    disabled = await service_api.post(
        "/enrollments/query", {"query": "select * where provisioningStatus = 'disabled'"}
    )
    assert [item["registrationId"] for item in disabled.json()] == ["dev-0", "dev-3", "dev-6"]
    assert "x-ms-continuation" not in disabled.headers


async def test_query_errors(service_api: ServiceApi) -> None:
    bad_query = await service_api.post("/enrollments/query", {"query": "DROP TABLE enrollments"})
    assert_dps_error(bad_query, 400, 400004, "SELECT")
    wrong_source = await service_api.post("/enrollments/query", {"query": "SELECT * FROM devices"})
    assert_dps_error(wrong_source, 400, 400004, "devices")
    token = await service_api.post(
        "/enrollments/query", {"query": "SELECT *"}, **{"x-ms-continuation": "%%%"}
    )
    assert_dps_error(token, 400, 400004, "x-ms-continuation")
    count = await service_api.post(
        "/enrollments/query", {"query": "SELECT *"}, **{"x-ms-max-item-count": "many"}
    )
    assert_dps_error(count, 400, 400004, "x-ms-max-item-count")
    assert_dps_error(await service_api.post("/enrollments/query", {}), 400, 400004, "query")


async def test_bulk_operations(service_api: ServiceApi) -> None:
    items = [symmetric(f"bulk-{n}") for n in range(3)]
    created = await service_api.post("/enrollments", {"mode": "create", "enrollments": items})
    assert created.json() == {"isSuccessful": True, "errors": []}
    again = await service_api.post("/enrollments", {"mode": "create", "enrollments": items[:1]})
    assert again.json()["isSuccessful"] is False
    assert again.json()["errors"][0]["registrationId"] == "bulk-0"
    assert again.json()["errors"][0]["errorCode"] == 409201
    current = (await service_api.get("/enrollments/bulk-1")).json()
    guarded = await service_api.post(
        "/enrollments",
        {
            "mode": "updateIfMatchEtag",
            "enrollments": [{**current, "deviceId": "d1"}, {**items[2], "etag": "stale"}],
        },
    )
    assert [error["registrationId"] for error in guarded.json()["errors"]] == ["bulk-2"]
    assert guarded.json()["errors"][0]["errorCode"] == 412002
    assert (await service_api.get("/enrollments/bulk-1")).json()["deviceId"] == "d1"
    updated = await service_api.post(
        "/enrollments", {"mode": "update", "enrollments": [symmetric("bulk-0", deviceId="d0")]}
    )
    assert updated.json()["isSuccessful"] is True
    deleted = await service_api.post(
        "/enrollments",
        {
            "mode": "delete",
            "enrollments": [{"registrationId": "bulk-0"}, {"registrationId": "ghost"}],
        },
    )
    assert deleted.json()["errors"] == [
        {
            "registrationId": "ghost",
            "errorCode": 404201,
            "errorStatus": "Enrollment with registration id 'ghost' was not found",
        }
    ]
    too_many = {"mode": "create", "enrollments": [symmetric(f"many-{n}") for n in range(11)]}
    assert_dps_error(await service_api.post("/enrollments", too_many), 400, 400004, "at most 10")
    assert_dps_error(
        await service_api.post("/enrollments", {"mode": "merge", "enrollments": items}),
        400,
        400004,
        "merge",
    )
    bad_item = {
        "mode": "create",
        "enrollments": [symmetric("ok-1"), {"registrationId": "no-attestation"}],
    }
    assert_dps_error(
        await service_api.post("/enrollments", bad_item), 400, 400004, "enrollments[1]"
    )
    assert (await service_api.get("/enrollments/ok-1")).status_code == 404


async def test_query_extension_gives_keys_and_certificates_to_writers(
    service_api: ServiceApi,
) -> None:
    """``x-dpsd-include-secrets: true`` (what dpsd export sends): the records as enrolled."""
    device = issue("dev-x509")
    await service_api.put(
        "/enrollments/dev-x509",
        {
            "registrationId": "dev-x509",
            "attestation": {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": device.pem}}},
            },
        },
    )
    keys = {"primaryKey": KEY_16, "secondaryKey": KEY_64}
    await service_api.put(
        "/enrollments/dev-sym",
        {
            "registrationId": "dev-sym",
            "attestation": {"type": "symmetricKey", "symmetricKey": keys},
        },
    )
    query = {"query": "SELECT *"}
    wanted = {"x-dpsd-include-secrets": "true"}

    full = await service_api.post("/enrollments/query", query, **wanted)
    assert full.status_code == 200
    by_id = {item["registrationId"]: item["attestation"] for item in full.json()}
    assert by_id["dev-sym"]["symmetricKey"] == keys
    primary = by_id["dev-x509"]["x509"]["clientCertificates"]["primary"]
    assert primary["certificate"] == device.pem
    assert primary["info"]["subjectName"].startswith("CN=dev-x509")

    public = await service_api.post("/enrollments/query", query)
    for item in public.json():
        assert "symmetricKey" not in item["attestation"]
        assert "certificate" not in json.dumps(item["attestation"]).replace("Certificates", "")

    reader = service_api.auth("enrollmentread")
    denied = await service_api.client.post(
        "/enrollments/query" + API, json=query, headers={**reader, **wanted}
    )
    assert_dps_error(denied, 401, 401002, "EnrollmentWrite")
    allowed = await service_api.client.post("/enrollments/query" + API, json=query, headers=reader)
    assert allowed.status_code == 200


async def test_query_extension_on_groups(service_api: ServiceApi) -> None:
    keys = {"primaryKey": KEY_16, "secondaryKey": KEY_64}
    await service_api.put(
        "/enrollmentGroups/g-1",
        {"enrollmentGroupId": "g-1", "attestation": {"type": "symmetricKey", "symmetricKey": keys}},
    )
    full = await service_api.post(
        "/enrollmentGroups/query", {"query": "SELECT *"}, **{"x-dpsd-include-secrets": "TRUE"}
    )
    assert [item["attestation"]["symmetricKey"] for item in full.json()] == [keys]
    reader = service_api.auth("enrollmentread")
    denied = await service_api.client.post(
        "/enrollmentGroups/query" + API,
        json={"query": "SELECT *"},
        headers={**reader, "x-dpsd-include-secrets": "true"},
    )
    assert_dps_error(denied, 401, 401002, "EnrollmentWrite")
