"""The enrollment group API over HTTP, in-process against a real SQLite store."""

from __future__ import annotations

import base64
from typing import Any

from tests.certs import issue
from tests.conftest import ServiceApi
from tests.integration.test_enrollments_api import assert_dps_error


def group(group_id: str, **extra: Any) -> dict[str, Any]:
    return {"enrollmentGroupId": group_id, "attestation": {"type": "symmetricKey"}, **extra}


async def test_group_lifecycle(service_api: ServiceApi) -> None:
    created = await service_api.put("/enrollmentGroups/fleet-a", group("fleet-a"))
    assert created.status_code == 200, created.text
    body = created.json()
    assert len(base64.b64decode(body["attestation"]["symmetricKey"]["primaryKey"])) == 64
    assert body["provisioningStatus"] == "enabled"
    assert_dps_error(
        await service_api.put("/enrollmentGroups/fleet-a", group("fleet-a")), 409, 409204
    )
    fetched = (await service_api.get("/enrollmentgroups/fleet-a")).json()
    assert fetched["attestation"] == {"type": "symmetricKey"}
    updated = await service_api.put(
        "/enrollmentGroups/fleet-a",
        {**fetched, "provisioningStatus": "disabled"},
        **{"If-Match": fetched["etag"]},
    )
    assert updated.status_code == 200
    assert updated.json()["attestation"]["symmetricKey"] == body["attestation"]["symmetricKey"]
    stale = await service_api.put(
        "/enrollmentGroups/fleet-a", fetched, **{"If-Match": fetched["etag"]}
    )
    assert_dps_error(stale, 412, 412002)
    mechanism = await service_api.post("/enrollmentgroups/fleet-a/attestationmechanism")
    assert mechanism.json()["symmetricKey"] == body["attestation"]["symmetricKey"]
    assert (await service_api.delete("/enrollmentGroups/fleet-a")).status_code == 204
    assert_dps_error(await service_api.get("/enrollmentGroups/fleet-a"), 404, 404204, "fleet-a")


async def test_group_attestation_rules(service_api: ServiceApi) -> None:
    device = issue("device-1")
    cases = [
        ({"type": "tpm", "tpm": {"endorsementKey": "AAAA"}}, "not 'tpm'"),
        ({"type": "none"}, "not 'none'"),
        (
            {
                "type": "x509",
                "x509": {"clientCertificates": {"primary": {"certificate": device.pem}}},
            },
            "clientCertificates",
        ),
        ({"type": "x509", "x509": {}}, "exactly one"),
        (
            {"type": "x509", "x509": {"caReferences": {"primary": "nobody"}}},
            "not a CA certificate registered",
        ),
        ({"type": "x509", "x509": {"caReferences": {}}}, "caReferences.primary"),
    ]
    for attestation, words in cases:
        response = await service_api.put(
            "/enrollmentGroups/g1", {"enrollmentGroupId": "g1", "attestation": attestation}
        )
        assert_dps_error(response, 400, 400004, words)
    mismatch = await service_api.put("/enrollmentGroups/g1", group("g2"))
    assert_dps_error(mismatch, 400, 400004, "'g2'", "'g1'")
    assert (await service_api.get("/enrollmentGroups/g1")).status_code == 404


async def test_x509_groups_with_signing_certificates_and_ca_references(
    service_api: ServiceApi,
) -> None:
    root = issue("root-ca", ca=True)
    signing = {
        "type": "x509",
        "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}},
    }
    response = await service_api.put(
        "/enrollmentGroups/signed", group("signed", attestation=signing)
    )
    assert response.status_code == 200, response.text
    info = response.json()["attestation"]["x509"]["signingCertificates"]["primary"]["info"]
    assert info["subjectName"] == "CN=root-ca, O=Contoso, C=US"
    assert (
        "certificate"
        not in response.json()["attestation"]["x509"]["signingCertificates"]["primary"]
    )

    certificates = service_api.runtime.certificates
    await certificates.add("contoso-root", root.pem, verified=False)
    referenced = {"type": "x509", "x509": {"caReferences": {"primary": "contoso-root"}}}
    unverified = await service_api.put(
        "/enrollmentGroups/by-ca", group("by-ca", attestation=referenced)
    )
    assert_dps_error(unverified, 400, 400004, "not verified")
    code = (await certificates.generate_verification_code("contoso-root")).verification_code
    assert code is not None
    await certificates.verify("contoso-root", issue(code, root).pem)
    verified = await service_api.put(
        "/enrollmentGroups/by-ca", group("by-ca", attestation=referenced)
    )
    assert verified.status_code == 200, verified.text
    assert verified.json()["attestation"]["x509"] == {"caReferences": {"primary": "contoso-root"}}


async def test_group_query_and_bulk(service_api: ServiceApi) -> None:
    items = [group(f"bulk-{n}") for n in range(5)]
    created = await service_api.post(
        "/enrollmentGroups", {"mode": "create", "enrollmentGroups": items}
    )
    assert created.json() == {"isSuccessful": True, "errors": []}
    page = await service_api.post(
        "/enrollmentGroups/query",
        {"query": "SELECT * FROM enrollmentGroups"},
        **{"x-ms-max-item-count": "2"},
    )
    assert page.headers["x-ms-item-type"] == "EnrollmentGroup"
    assert [item["enrollmentGroupId"] for item in page.json()] == ["bulk-0", "bulk-1"]
    rest = await service_api.post(
        "/enrollmentGroups/query",
        {"query": "SELECT *"},
        **{"x-ms-max-item-count": "10", "x-ms-continuation": page.headers["x-ms-continuation"]},
    )
    assert [item["enrollmentGroupId"] for item in rest.json()] == ["bulk-2", "bulk-3", "bulk-4"]
    assert "x-ms-continuation" not in rest.headers
    wrong = await service_api.post(
        "/enrollmentGroups/query", {"query": "SELECT * FROM enrollments"}
    )
    assert_dps_error(wrong, 400, 400004, "enrollmentGroups")
    deleted = await service_api.post(
        "/enrollmentGroups",
        {
            "mode": "delete",
            "enrollmentGroups": [{"enrollmentGroupId": "bulk-0"}, {"enrollmentGroupId": "ghost"}],
        },
    )
    assert deleted.json()["errors"] == [
        {
            "enrollmentGroupId": "ghost",
            "errorCode": 404204,
            "errorStatus": "Enrollment group 'ghost' was not found",
        }
    ]


async def test_group_limit_per_attestation_kind(service_api: ServiceApi) -> None:
    for start in range(0, 100, 10):
        batch = [group(f"g-{n:03}") for n in range(start, start + 10)]
        result = await service_api.post(
            "/enrollmentGroups", {"mode": "create", "enrollmentGroups": batch}
        )
        assert result.json()["isSuccessful"], result.text
    over = await service_api.put("/enrollmentGroups/one-more", group("one-more"))
    assert_dps_error(over, 400, 400004, "100 symmetric-key enrollment groups")
    again = await service_api.put("/enrollmentGroups/g-000", group("g-000"), **{"If-Match": "*"})
    assert again.status_code == 200
    root = issue("root-ca", ca=True)
    x509 = {"type": "x509", "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}}}
    assert (
        await service_api.put("/enrollmentGroups/x-1", group("x-1", attestation=x509))
    ).status_code == 200
