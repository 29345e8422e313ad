"""CA certificates registered with the service, and proof that their owner holds the key."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from dpsd.domain.errors import InvalidCertificate, ValidationError
from dpsd.domain.x509 import CertificateInfo

MAX_NAME_LENGTH = 256
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9\-._]*")


@dataclass(frozen=True, slots=True)
class CACertificate:
    """``verification_code``: the subject a proof-of-possession certificate must carry."""

    name: str
    certificate: str
    info: CertificateInfo
    is_verified: bool
    etag: str
    created: datetime
    last_updated: datetime
    verification_code: str | None = None


def check_certificate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise ValidationError(
            f"certificate name {name!r} is invalid: use letters, digits, '-', '.' and '_', "
            f"at most {MAX_NAME_LENGTH} characters, starting with a letter or digit"
        )
    return name


def common_name(certificate: x509.Certificate) -> str | None:
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return None
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", errors="replace")


def check_proof_of_possession(
    ca: x509.Certificate, proof: x509.Certificate, verification_code: str
) -> None:
    """The proof's subject CN is the verification code, and the CA's private key signed it."""
    if common_name(proof) != verification_code:
        raise InvalidCertificate(
            "the verification certificate's subject CN must be the verification code"
        )
    try:
        proof.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as error:
        raise InvalidCertificate(
            "the verification certificate is not signed by this CA certificate's private key"
        ) from error
