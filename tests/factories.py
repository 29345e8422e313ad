"""Builders of domain records for tests."""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from datetime import UTC, datetime

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    SymmetricKeyAttestation,
    X509Attestation,
    X509Certificates,
    X509CertificateWithInfo,
)
from dpsd.domain.enrollment import (
    AllocationPolicy,
    DeviceCapabilities,
    EnrollmentSettings,
    IndividualEnrollment,
    ProvisioningStatus,
)
from dpsd.domain.etag import new_etag
from dpsd.domain.x509 import CertificateInfo

MOMENT = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
KEY = base64.b64encode(bytes(range(32))).decode()


def enrollment(registration_id: str = "device-1", **changes: object) -> IndividualEnrollment:
    record = IndividualEnrollment(
        registration_id=registration_id,
        settings=EnrollmentSettings(
            attestation=AttestationMechanism(
                type=AttestationType.SYMMETRIC_KEY,
                symmetric_key=SymmetricKeyAttestation(primary_key=KEY, secondary_key=KEY),
            ),
            initial_twin={"tags": {"site": "north"}, "properties": {"desired": {"rate": 5}}},
        ),
        etag=new_etag(uuid.uuid4().bytes),
        created=MOMENT,
        last_updated=MOMENT,
    )
    return replace(record, **changes)  # type: ignore[arg-type]


def with_settings(record: IndividualEnrollment, **changes: object) -> IndividualEnrollment:
    return replace(record, settings=replace(record.settings, **changes))  # type: ignore[arg-type]


def x509_enrollment(registration_id: str) -> IndividualEnrollment:
    info = CertificateInfo(
        subject_name=f"CN={registration_id}",
        sha1_thumbprint="AB" * 20,
        sha256_thumbprint="CD" * 32,
        issuer_name=f"CN={registration_id}",
        not_before_utc="2026-01-01T00:00:00Z",
        not_after_utc="2027-01-01T00:00:00Z",
        serial_number="1A2B",
        version=3,
    )
    attestation = AttestationMechanism(
        type=AttestationType.X509,
        x509=X509Attestation(
            client_certificates=X509Certificates(
                primary=X509CertificateWithInfo(certificate="-----PEM-----", info=info)
            )
        ),
    )
    return with_settings(
        enrollment(registration_id),
        attestation=attestation,
        capabilities=DeviceCapabilities(iot_edge=True),
        provisioning_status=ProvisioningStatus.DISABLED,
        allocation_policy=AllocationPolicy.STATIC,
        iot_hubs=("hub-a.example",),
        iot_hub_host_name="hub-a.example",
    )
