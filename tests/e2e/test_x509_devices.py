"""X.509 devices provision over HTTPS with a TLS client certificate: individual client
certificates, groups with a signing certificate, and groups referencing a verified CA."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from tests.certs import Issued, issue
from tests.e2e.process import DpsdProcess, run_dpsd, sdk_client

pytestmark = pytest.mark.e2e
DEVICE_API = "?api-version=2019-03-31"


def write_identity(folder: Path, name: str, chain: list[Issued]) -> tuple[str, str]:
    """The device's certificate file (leaf first, then the chain it sends) and key file."""
    cert = folder / f"{name}.pem"
    key = folder / f"{name}.key"
    cert.write_text("".join(item.pem for item in chain))
    key.write_bytes(
        chain[0].key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert), str(key)


def device_client(info: dict[str, Any], identity: tuple[str, str]) -> httpx.Client:
    context = ssl.create_default_context(cafile=info["caCertificatePath"])
    context.load_cert_chain(*identity)
    return httpx.Client(base_url=info["endpoints"]["https"], verify=context, timeout=10)


def provision(
    info: dict[str, Any], identity: tuple[str, str], registration_id: str
) -> httpx.Response:
    scope = info["idScope"]
    with device_client(info, identity) as client:
        started = client.put(
            f"/{scope}/registrations/{registration_id}/register{DEVICE_API}",
            json={"registrationId": registration_id},
        )
        if started.status_code != 202:
            return started
        operation = started.json()["operationId"]
        return client.get(
            f"/{scope}/registrations/{registration_id}/operations/{operation}{DEVICE_API}"
        )


@pytest.fixture(scope="module")
def info(dpsd_server: DpsdProcess) -> dict[str, Any]:
    data_dir = str(dpsd_server.data_dir)
    assert run_dpsd("hub", "add", "hub-x.example", "--data-dir", data_dir).returncode == 0
    return dpsd_server.info


def x509_enrollment(registration_id: str, certificate: Issued) -> dict[str, Any]:
    return {
        "registrationId": registration_id,
        "attestation": {
            "type": "x509",
            "x509": {"clientCertificates": {"primary": {"certificate": certificate.pem}}},
        },
    }


def test_an_individual_client_certificate(info: dict[str, Any], tmp_path: Path) -> None:
    device = issue("cam-1")
    sdk_client(info).enrollment.create_or_update(
        id="cam-1", enrollment=x509_enrollment("cam-1", device)
    )
    result = provision(info, write_identity(tmp_path, "cam-1", [device]), "cam-1")
    assert result.status_code == 200, result.text
    assert result.json()["status"] == "assigned"
    assert result.json()["registrationState"]["assignedHub"] == "hub-x.example"
    impostor = issue("cam-1")  # same name, another key: no enrollment vouches for it
    with pytest.raises(httpx.TransportError):
        provision(info, write_identity(tmp_path, "impostor", [impostor]), "cam-1")


def test_a_group_with_a_signing_certificate_and_an_intermediate(
    info: dict[str, Any], tmp_path: Path
) -> None:
    root = issue("fleet-root", ca=True)
    intermediate = issue("fleet-intermediate", root, ca=True)
    group = {
        "enrollmentGroupId": "fleet",
        "attestation": {
            "type": "x509",
            "x509": {"signingCertificates": {"primary": {"certificate": root.pem}}},
        },
    }
    sdk_client(info).enrollment_group.create_or_update(id="fleet", enrollment_group=group)
    device = issue("sensor-1", intermediate)
    result = provision(
        info, write_identity(tmp_path, "sensor-1", [device, intermediate]), "sensor-1"
    )
    assert result.status_code == 200, result.text
    assert result.json()["registrationState"]["x509"] == {"enrollmentGroupId": "fleet"}
    mismatch = provision(
        info,
        write_identity(tmp_path, "sensor-2", [issue("sensor-2", intermediate), intermediate]),
        "sensor-3",
    )
    assert mismatch.status_code == 401
    assert "is not the registration id" in mismatch.json()["message"]


def test_a_group_referencing_a_verified_ca(
    info: dict[str, Any], dpsd_server: DpsdProcess, tmp_path: Path
) -> None:
    ca = issue("factory-ca", ca=True)
    (tmp_path / "ca.pem").write_text(ca.pem)
    data = ["--data-dir", str(dpsd_server.data_dir)]
    assert (
        run_dpsd(
            "certificate", "add", "factory", "--file", str(tmp_path / "ca.pem"), *data
        ).returncode
        == 0
    )
    code = run_dpsd("certificate", "verification-code", "factory", *data).stdout.strip()
    (tmp_path / "proof.pem").write_text(issue(code, ca).pem)
    assert (
        run_dpsd(
            "certificate", "verify", "factory", "--file", str(tmp_path / "proof.pem"), *data
        ).returncode
        == 0
    )
    group = {
        "enrollmentGroupId": "factory-line",
        "attestation": {"type": "x509", "x509": {"caReferences": {"primary": "factory"}}},
    }
    sdk_client(info).enrollment_group.create_or_update(id="factory-line", enrollment_group=group)
    device = issue("robot-9", ca)
    result = provision(info, write_identity(tmp_path, "robot-9", [device]), "robot-9")
    assert result.status_code == 200, result.text
    assert result.json()["registrationState"]["x509"] == {"enrollmentGroupId": "factory-line"}


def test_untrusted_and_expired_chains_are_refused(info: dict[str, Any], tmp_path: Path) -> None:
    """Refused in the TLS handshake (with TLS 1.3 the client sees it at its first read)."""
    stranger = issue("stranger-1", issue("unknown-ca", ca=True))
    with pytest.raises(httpx.TransportError):
        provision(info, write_identity(tmp_path, "stranger-1", [stranger]), "stranger-1")
    expired = issue("old-1", days=-1)
    sdk_client(info).enrollment.create_or_update(
        id="old-1", enrollment=x509_enrollment("old-1", expired)
    )
    with pytest.raises(httpx.TransportError):
        provision(info, write_identity(tmp_path, "old-1", [expired]), "old-1")
