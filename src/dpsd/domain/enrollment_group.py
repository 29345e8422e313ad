"""Enrollment groups: one record that lets a whole fleet of devices provision itself."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from dpsd.domain.attestation import AttestationMechanism, AttestationType
from dpsd.domain.enrollment import EnrollmentSettings
from dpsd.domain.errors import InvalidAttestation


@dataclass(frozen=True, slots=True)
class EnrollmentGroupDraft:
    """An enrollment group as a client sends it: no server-set fields."""

    enrollment_group_id: str
    settings: EnrollmentSettings


@dataclass(frozen=True, slots=True)
class EnrollmentGroup:
    enrollment_group_id: str
    settings: EnrollmentSettings
    etag: str
    created: datetime
    last_updated: datetime


def check_group_attestation(mechanism: AttestationMechanism) -> None:
    """Groups attest with a symmetric key, or with X.509 through signing certificates or
    references to CA certificates; never TPM."""
    if mechanism.type not in (AttestationType.SYMMETRIC_KEY, AttestationType.X509):
        raise InvalidAttestation(
            f"enrollment groups attest with 'symmetricKey' or 'x509', not {mechanism.type.value!r}"
        )
    x509 = mechanism.x509
    if x509 is None:
        return
    if x509.client_certificates is not None:
        raise InvalidAttestation(
            "enrollment groups take x509.signingCertificates or x509.caReferences; "
            "clientCertificates belong to individual enrollments"
        )
    if (x509.signing_certificates is None) == (x509.ca_references is None):
        raise InvalidAttestation("x509 takes exactly one of signingCertificates and caReferences")
    references = x509.ca_references
    if references is not None and not references.primary:
        raise InvalidAttestation("x509.caReferences.primary is required")
