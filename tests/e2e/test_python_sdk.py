"""The official Python service SDK (azure-iot-deviceprovisioning 1.0.0b1) against a real
dpsd over HTTPS, trusting the dpsd CA."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from azure.iot.deviceprovisioning import DeviceProvisioningClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.process import DpsdProcess, sdk_client

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def client(dpsd_info: dict[str, Any]) -> Iterator[DeviceProvisioningClient]:
    sdk = sdk_client(dpsd_info)
    with sdk:
        yield sdk


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def symmetric_key_enrollment(registration_id: str, **fields: Any) -> dict[str, Any]:
    return {"registrationId": registration_id, "attestation": {"type": "symmetricKey"}, **fields}


def assert_no_secrets(enrollment: Mapping[str, Any], *secrets: str) -> None:
    attestation = enrollment["attestation"]
    assert attestation["type"] == "symmetricKey"
    assert not attestation.get("symmetricKey"), attestation
    text = json.dumps(enrollment)
    for secret in secrets:
        assert secret not in text


def status_of(error: HttpResponseError) -> int | None:
    return error.status_code


# --- individual enrollments: create, read, update -------------------------------------------


def test_create_generates_symmetric_keys_and_get_hides_them(
    client: DeviceProvisioningClient,
) -> None:
    registration_id = new_id("sk")
    created = client.enrollment.create_or_update(
        registration_id, symmetric_key_enrollment(registration_id)
    )
    assert created["registrationId"] == registration_id
    assert created["etag"]
    assert created["createdDateTimeUtc"]
    keys = created["attestation"]["symmetricKey"]
    primary, secondary = keys["primaryKey"], keys["secondaryKey"]
    assert len(base64.b64decode(primary, validate=True)) >= 16
    assert len(base64.b64decode(secondary, validate=True)) >= 16
    assert primary != secondary

    fetched = client.enrollment.get(registration_id)
    assert fetched["registrationId"] == registration_id
    assert fetched["etag"] == created["etag"]
    assert_no_secrets(fetched, primary, secondary)

    mechanism = client.enrollment.get_attestation_mechanism(registration_id)
    assert mechanism["type"] == "symmetricKey"
    assert mechanism["symmetricKey"] == {"primaryKey": primary, "secondaryKey": secondary}


def test_create_accepts_the_explicit_nulls_the_sdk_sends(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("nulls")
    body = symmetric_key_enrollment(
        registration_id,
        capabilities=None,
        reprovisionPolicy=None,
        iotHubs=None,
        initialTwin=None,
        provisioningStatus=None,
    )
    body["attestation"]["symmetricKey"] = None
    created = client.enrollment.create_or_update(registration_id, body)
    assert created["attestation"]["symmetricKey"]["primaryKey"]


def test_given_symmetric_keys_are_kept(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("given")
    keys = {
        "primaryKey": base64.b64encode(b"p" * 32).decode(),
        "secondaryKey": base64.b64encode(b"s" * 32).decode(),
    }
    body = symmetric_key_enrollment(registration_id)
    body["attestation"]["symmetricKey"] = keys
    created = client.enrollment.create_or_update(registration_id, body)
    assert created["attestation"]["symmetricKey"] == keys
    assert client.enrollment.get_attestation_mechanism(registration_id)["symmetricKey"] == keys


def test_update_with_if_match_and_stale_etag(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("upd")
    created = client.enrollment.create_or_update(
        registration_id, symmetric_key_enrollment(registration_id)
    )
    updated = client.enrollment.create_or_update(
        registration_id,
        symmetric_key_enrollment(registration_id, provisioningStatus="disabled"),
        if_match=created["etag"],
    )
    assert updated["provisioningStatus"] == "disabled"
    assert updated["etag"]
    assert updated["etag"] != created["etag"]
    assert updated["createdDateTimeUtc"] == created["createdDateTimeUtc"]

    with pytest.raises(HttpResponseError) as stale:
        client.enrollment.create_or_update(
            registration_id,
            symmetric_key_enrollment(registration_id, provisioningStatus="enabled"),
            if_match=created["etag"],
        )
    assert status_of(stale.value) == 412
    assert not isinstance(stale.value, (ResourceExistsError, ResourceNotFoundError))

    current = client.enrollment.get(registration_id)
    assert current["etag"] == updated["etag"]
    assert current["provisioningStatus"] == "disabled"


def test_create_without_if_match_on_an_existing_id_is_409(
    client: DeviceProvisioningClient,
) -> None:
    registration_id = new_id("dup")
    created = client.enrollment.create_or_update(
        registration_id, symmetric_key_enrollment(registration_id)
    )
    with pytest.raises(ResourceExistsError) as exists:
        client.enrollment.create_or_update(
            registration_id, symmetric_key_enrollment(registration_id)
        )
    assert status_of(exists.value) == 409
    assert client.enrollment.get(registration_id)["etag"] == created["etag"]


def test_get_of_an_unknown_id_is_404(client: DeviceProvisioningClient) -> None:
    with pytest.raises(ResourceNotFoundError) as missing:
        client.enrollment.get(new_id("missing"))
    assert status_of(missing.value) == 404
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get_attestation_mechanism(new_id("missing"))


# --- delete ------------------------------------------------------------------------------------


def test_delete_then_get_is_404(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("del")
    client.enrollment.create_or_update(registration_id, symmetric_key_enrollment(registration_id))
    client.enrollment.delete(registration_id)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(registration_id)
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.delete(registration_id)


def test_delete_with_a_stale_if_match_is_412(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("delif")
    created = client.enrollment.create_or_update(
        registration_id, symmetric_key_enrollment(registration_id)
    )
    updated = client.enrollment.create_or_update(
        registration_id,
        symmetric_key_enrollment(registration_id, provisioningStatus="disabled"),
        if_match=created["etag"],
    )
    with pytest.raises(HttpResponseError) as stale:
        client.enrollment.delete(registration_id, if_match=created["etag"])
    assert status_of(stale.value) == 412
    assert client.enrollment.get(registration_id)["etag"] == updated["etag"]

    client.enrollment.delete(registration_id, if_match=updated["etag"])
    with pytest.raises(ResourceNotFoundError):
        client.enrollment.get(registration_id)


# --- query -------------------------------------------------------------------------------------


def test_query_pages_through_every_enrollment_once(
    tmp_path: Path, launch_dpsd: Callable[[Path], DpsdProcess]
) -> None:
    # A server of its own, so that the query sees exactly these enrollments.
    server = launch_dpsd(tmp_path / "data")
    disabled = {new_id(f"q{i}") for i in range(3)}
    enabled = {new_id(f"q{i}") for i in range(3, 7)}
    with sdk_client(server.info) as sdk:
        for registration_id in sorted(disabled | enabled):
            status = "disabled" if registration_id in disabled else "enabled"
            sdk.enrollment.create_or_update(
                registration_id,
                symmetric_key_enrollment(registration_id, provisioningStatus=status),
            )

        pages = [
            list(page)
            for page in sdk.enrollment.query(
                {"query": "SELECT * FROM enrollments"}, top=3
            ).by_page()
        ]
        assert all(0 < len(page) <= 3 for page in pages), [len(page) for page in pages]
        assert len(pages) >= 3
        seen = [item["registrationId"] for page in pages for item in page]
        assert len(seen) == len(set(seen)), seen
        assert set(seen) == disabled | enabled
        for page in pages:
            for item in page:
                assert_no_secrets(item)

        filtered = list(
            sdk.enrollment.query(
                {"query": "SELECT * FROM enrollments WHERE provisioningStatus = 'disabled'"},
                top=2,
            )
        )
        filtered_ids = [item["registrationId"] for item in filtered]
        assert sorted(filtered_ids) == sorted(disabled)
        assert all(item["provisioningStatus"] == "disabled" for item in filtered)


# --- bulk --------------------------------------------------------------------------------------


def test_bulk_create_then_delete_with_a_missing_id(client: DeviceProvisioningClient) -> None:
    ids = [new_id(f"bulk{i}") for i in range(3)]
    created = client.enrollment.run_bulk_operation(
        {"mode": "create", "enrollments": [symmetric_key_enrollment(i) for i in ids]}
    )
    assert created["isSuccessful"] is True, created
    assert not created.get("errors"), created
    for registration_id in ids:
        assert client.enrollment.get(registration_id)["registrationId"] == registration_id
        keys = client.enrollment.get_attestation_mechanism(registration_id)["symmetricKey"]
        assert keys["primaryKey"]

    missing = new_id("bulk-missing")
    deleted = client.enrollment.run_bulk_operation(
        {
            "mode": "delete",
            "enrollments": [{"registrationId": i} for i in [*ids, missing]],
        }
    )
    assert deleted["isSuccessful"] is False, deleted
    errors = deleted["errors"]
    assert [error["registrationId"] for error in errors] == [missing], errors
    assert type(errors[0]["errorCode"]) is int
    assert errors[0]["errorCode"] // 1000 == 404, errors
    for registration_id in ids:
        with pytest.raises(ResourceNotFoundError):
            client.enrollment.get(registration_id)


def test_bulk_create_of_an_existing_id_fails_that_item_only(
    client: DeviceProvisioningClient,
) -> None:
    existing, fresh = new_id("bulkdup"), new_id("bulknew")
    client.enrollment.create_or_update(existing, symmetric_key_enrollment(existing))
    result = client.enrollment.run_bulk_operation(
        {
            "mode": "create",
            "enrollments": [symmetric_key_enrollment(existing), symmetric_key_enrollment(fresh)],
        }
    )
    assert result["isSuccessful"] is False
    assert [error["registrationId"] for error in result["errors"]] == [existing]
    assert type(result["errors"][0]["errorCode"]) is int
    assert client.enrollment.get(fresh)["registrationId"] == fresh


# --- X.509 -------------------------------------------------------------------------------------


def self_signed_certificate(common_name: str) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def x509_enrollment(registration_id: str, certificate: str) -> dict[str, Any]:
    return {
        "registrationId": registration_id,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": certificate}}},
        },
    }


def pem_of(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def der_base64_of(certificate: x509.Certificate) -> str:
    return base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode()


def assert_certificate_info(
    enrollment: Mapping[str, Any], certificate: x509.Certificate, registration_id: str
) -> None:
    attestation = enrollment["attestation"]
    assert attestation["type"] == "x509"
    primary = attestation["x509"]["clientCertificates"]["primary"]
    assert not primary.get("certificate"), primary
    info = primary["info"]
    assert info["sha256Thumbprint"] == certificate.fingerprint(hashes.SHA256()).hex().upper()
    assert info["sha1Thumbprint"] == certificate.fingerprint(hashes.SHA1()).hex().upper()
    assert registration_id in info["subjectName"]
    text = json.dumps(enrollment)
    assert "BEGIN CERTIFICATE" not in text
    assert der_base64_of(certificate) not in text


def test_x509_enrollment_from_pem_then_base64_der(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("x509")
    certificate = self_signed_certificate(registration_id)

    created = client.enrollment.create_or_update(
        registration_id, x509_enrollment(registration_id, pem_of(certificate))
    )
    assert_certificate_info(created, certificate, registration_id)
    assert_certificate_info(client.enrollment.get(registration_id), certificate, registration_id)

    # The same certificate as base64 DER: the same thumbprints.
    updated = client.enrollment.create_or_update(
        registration_id,
        x509_enrollment(registration_id, der_base64_of(certificate)),
        if_match=created["etag"],
    )
    assert_certificate_info(updated, certificate, registration_id)


def test_x509_enrollment_from_base64_der(client: DeviceProvisioningClient) -> None:
    registration_id = new_id("x509der")
    certificate = self_signed_certificate(registration_id)
    created = client.enrollment.create_or_update(
        registration_id, x509_enrollment(registration_id, der_base64_of(certificate))
    )
    assert_certificate_info(created, certificate, registration_id)
