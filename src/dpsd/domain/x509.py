"""X.509 certificates as DPS receives them, and the ``info`` the service computes for them."""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from dpsd.domain.errors import InvalidCertificate
from dpsd.domain.timestamps import format_certificate_time

MAX_CERTIFICATE_TEXT = 32 * 1024
_PEM_MARKER = b"-----BEGIN CERTIFICATE-----"
_BASE64 = re.compile(rb"[A-Za-z0-9+/=\s]+")

_SHORT_NAMES = {
    NameOID.COMMON_NAME: "CN",
    NameOID.ORGANIZATIONAL_UNIT_NAME: "OU",
    NameOID.ORGANIZATION_NAME: "O",
    NameOID.COUNTRY_NAME: "C",
    NameOID.LOCALITY_NAME: "L",
    NameOID.STATE_OR_PROVINCE_NAME: "S",
    NameOID.EMAIL_ADDRESS: "E",
    NameOID.STREET_ADDRESS: "STREET",
    NameOID.DOMAIN_COMPONENT: "DC",
    NameOID.SERIAL_NUMBER: "SERIALNUMBER",
}


@dataclass(frozen=True, slots=True)
class CertificateInfo:
    """X509CertificateInfo: what the service tells about a certificate instead of returning it."""

    subject_name: str
    sha1_thumbprint: str
    sha256_thumbprint: str
    issuer_name: str
    not_before_utc: str
    not_after_utc: str
    serial_number: str
    version: int


def load_certificate(text: str) -> x509.Certificate:
    """Parse a certificate sent as PEM text, base64 of DER, or base64 of PEM text."""
    raw = text.strip().encode("utf-8", errors="replace")
    if not raw:
        raise InvalidCertificate("the certificate is empty")
    if len(raw) > MAX_CERTIFICATE_TEXT:
        raise InvalidCertificate(f"the certificate is larger than {MAX_CERTIFICATE_TEXT} bytes")
    if _PEM_MARKER not in raw:
        if not _BASE64.fullmatch(raw):
            raise InvalidCertificate("the certificate is neither PEM nor base64")
        try:
            raw = base64.b64decode(b"".join(raw.split()), validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidCertificate("the certificate is not valid base64") from error
    try:
        if _PEM_MARKER in raw:
            return x509.load_pem_x509_certificate(raw)
        return x509.load_der_x509_certificate(raw)
    except ValueError as error:
        raise InvalidCertificate("the certificate is not a valid X.509 certificate") from error


def to_pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def distinguished_name(name: x509.Name) -> str:
    """A name written the .NET way (``CN=device, O=Contoso, C=US``), most specific first."""
    parts: list[str] = []
    for rdn in reversed(list(name.rdns)):
        for attribute in rdn:
            label = _SHORT_NAMES.get(attribute.oid, attribute.oid.dotted_string)
            value = attribute.value
            text = value if isinstance(value, str) else value.hex()
            parts.append(f"{label}={text}")
    return ", ".join(parts)


def certificate_info(certificate: x509.Certificate) -> CertificateInfo:
    return CertificateInfo(
        subject_name=distinguished_name(certificate.subject),
        sha1_thumbprint=certificate.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303
        sha256_thumbprint=certificate.fingerprint(hashes.SHA256()).hex().upper(),
        issuer_name=distinguished_name(certificate.issuer),
        not_before_utc=format_certificate_time(certificate.not_valid_before_utc),
        not_after_utc=format_certificate_time(certificate.not_valid_after_utc),
        serial_number=format(certificate.serial_number, "X"),
        version=certificate.version.value + 1,
    )
