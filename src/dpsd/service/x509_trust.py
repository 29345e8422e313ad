"""Which certificates can vouch for devices: gathered for the TLS layer's trust."""

from __future__ import annotations

from collections.abc import Iterator

from dpsd.domain.attestation import AttestationMechanism, X509Certificates
from dpsd.domain.query import ENROLLMENT_GROUP_QUERY_FIELDS, ENROLLMENT_QUERY_FIELDS, parse_query
from dpsd.service.ports import (
    CertificateRepository,
    EnrollmentGroupRepository,
    EnrollmentRepository,
)

_PAGE = 500


def attestation_certificates(mechanism: AttestationMechanism) -> list[str]:
    x509 = mechanism.x509
    if x509 is None:
        return []
    return [*_pems(x509.client_certificates), *_pems(x509.signing_certificates)]


def _pems(certificates: X509Certificates | None) -> Iterator[str]:
    if certificates is None:
        return
    for entry in (certificates.primary, certificates.secondary):
        if entry is not None and entry.certificate:
            yield entry.certificate


async def certificates_to_trust(
    enrollments: EnrollmentRepository,
    groups: EnrollmentGroupRepository,
    certificates: CertificateRepository,
) -> list[str]:
    found: list[str] = []
    x509 = parse_query("SELECT * WHERE attestation.type = 'x509'", ENROLLMENT_QUERY_FIELDS).where
    after: str | None = None
    while True:
        page = await enrollments.query(x509, after=after, limit=_PAGE)
        for enrollment in page:
            found += attestation_certificates(enrollment.settings.attestation)
        if len(page) < _PAGE:
            break
        after = page[-1].registration_id.lower()
    group_x509 = parse_query(
        "SELECT * WHERE attestation.type = 'x509'", ENROLLMENT_GROUP_QUERY_FIELDS
    ).where
    for group in await groups.query(group_x509, after=None, limit=10_000):
        found += attestation_certificates(group.settings.attestation)
    found += [record.certificate for record in await certificates.list() if record.is_verified]
    return found
