"""Use cases for CA certificates: register, list, delete, and prove possession of the key.

Operators manage these with ``dpsd certificate``; X.509 enrollment groups reference them by
name in ``caReferences`` once they are verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dpsd.domain.ca_certificate import (
    CACertificate,
    check_certificate_name,
    check_proof_of_possession,
)
from dpsd.domain.errors import ValidationError
from dpsd.domain.etag import new_etag
from dpsd.domain.x509 import certificate_info, load_certificate, to_pem
from dpsd.service import records
from dpsd.service.errors import CertificateAlreadyExists, CertificateNotFound
from dpsd.service.ports import (
    CertificateRepository,
    Clock,
    EnrollmentGroupRepository,
    Entropy,
    NoTrust,
    TrustedCertificates,
)
from dpsd.service.references import Referrers, left_behind, referrers_of_ca

MAX_CA_CERTIFICATES = 25
VERIFICATION_CODE_BYTES = 24


@dataclass(frozen=True, slots=True)
class CertificateService:
    certificates: CertificateRepository
    groups: EnrollmentGroupRepository
    clock: Clock
    entropy: Entropy
    trust: TrustedCertificates = field(default_factory=NoTrust)

    async def add(self, name: str, certificate_text: str, *, verified: bool) -> CACertificate:
        """Register a CA certificate; ``verified`` skips proof of possession, as the
        real service allows when a certificate is uploaded as verified."""
        check_certificate_name(name)
        certificate = load_certificate(certificate_text)
        if len(await self.certificates.list()) >= MAX_CA_CERTIFICATES:
            raise ValidationError(
                f"the service holds {MAX_CA_CERTIFICATES} CA certificates, its limit"
            )
        now = self.clock.now()
        record = CACertificate(
            name=name,
            certificate=to_pem(certificate),
            info=certificate_info(certificate),
            is_verified=verified,
            etag=self._etag(),
            created=now,
            last_updated=now,
        )
        if not await self.certificates.add(record):
            raise CertificateAlreadyExists(name)
        if verified:
            self.trust.trust([record.certificate])
        return record

    async def list(self) -> list[CACertificate]:
        return await self.certificates.list()

    async def get(self, name: str) -> CACertificate:
        record = await self.certificates.get(name)
        if record is None:
            raise CertificateNotFound(name)
        return record

    async def delete(self, name: str, *, force: bool = False) -> tuple[Referrers, ...]:
        """Delete a CA certificate no enrollment group references. ``force`` deletes it
        anyway; what still references it is returned, for the caller to say."""
        await self.get(name)
        left = left_behind(
            await referrers_of_ca(self.groups, name),
            force,
            lambda referrers: (
                f"CA certificate {name!r} is still referenced by {referrers}: "
                "point their caReferences at another CA certificate, or delete them, first "
                f"(or dpsd certificate delete {name} --force)"
            ),
        )
        await records.delete(self.certificates, name, None, lambda: CertificateNotFound(name))
        return left

    async def generate_verification_code(self, name: str) -> CACertificate:
        """A fresh code: sign a certificate whose subject CN is this code with the CA's key."""
        current = await self.get(name)
        code = self.entropy.random_bytes(VERIFICATION_CODE_BYTES).hex().upper()
        updated = replace(
            current, verification_code=code, etag=self._etag(), last_updated=self.clock.now()
        )
        return await self._write(current, updated)

    async def verify(self, name: str, proof_text: str) -> CACertificate:
        current = await self.get(name)
        if current.verification_code is None:
            raise ValidationError(
                f"CA certificate {name!r} has no verification code: generate one first"
            )
        check_proof_of_possession(
            load_certificate(current.certificate),
            load_certificate(proof_text),
            current.verification_code,
        )
        verified = replace(
            current,
            is_verified=True,
            verification_code=None,
            etag=self._etag(),
            last_updated=self.clock.now(),
        )
        written = await self._write(current, verified)
        self.trust.trust([written.certificate])
        return written

    async def _write(self, current: CACertificate, updated: CACertificate) -> CACertificate:
        return await records.create_or_update(
            self.certificates,
            current.name,
            current.etag,
            lambda _stored: updated,
            lambda: CertificateAlreadyExists(current.name),
        )

    def _etag(self) -> str:
        return new_etag(self.entropy.random_bytes(16))
