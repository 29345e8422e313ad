"""Which enrollment an X.509 device's certificate chain proves.

The chain has been verified by the TLS layer (signatures and validity times); what remains
is to match it to enrollments: the leaf's subject CN is the registration id, an individual
enrollment names the leaf (client certificates) or a certificate of the chain (signing
certificates), and a group names a certificate of the chain, nearest the leaf first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes

from dpsd.domain.attestation import AttestationMechanism, X509Certificates
from dpsd.domain.ca_certificate import common_name
from dpsd.domain.errors import InvalidCertificate
from dpsd.domain.x509 import CertificateInfo, certificate_info, load_certificate


@dataclass(frozen=True, slots=True)
class PresentedChain:
    """Leaf first; SHA-256 thumbprints (upper-case hex) of every certificate."""

    common_name: str
    thumbprints: tuple[str, ...]
    leaf_info: CertificateInfo


def read_chain(pems: Sequence[str]) -> PresentedChain:
    if not pems:
        raise InvalidCertificate("the device presented no client certificate")
    certificates = [load_certificate(pem) for pem in pems]
    name = common_name(certificates[0])
    if not name:
        raise InvalidCertificate("the device certificate has no subject common name")
    thumbprints = tuple(c.fingerprint(hashes.SHA256()).hex().upper() for c in certificates)
    return PresentedChain(name, thumbprints, certificate_info(certificates[0]))


def _thumbprints(certificates: X509Certificates | None) -> set[str]:
    if certificates is None:
        return set()
    entries = (certificates.primary, certificates.secondary)
    return {entry.info.sha256_thumbprint.upper() for entry in entries if entry and entry.info}


def individual_matches(mechanism: AttestationMechanism, chain: PresentedChain) -> bool:
    x509 = mechanism.x509
    if x509 is None:
        return False
    if chain.thumbprints[0] in _thumbprints(x509.client_certificates):
        return True
    return bool(_thumbprints(x509.signing_certificates) & set(chain.thumbprints))


def group_position(
    mechanism: AttestationMechanism, chain: PresentedChain, verified_ca_thumbprints: dict[str, str]
) -> int | None:
    """How far up the chain (1 = the leaf's issuer) the group's certificate stands, if at all.

    ``verified_ca_thumbprints`` maps verified CA certificate names (lower case) to thumbprints.
    """
    x509 = mechanism.x509
    if x509 is None:
        return None
    named = _thumbprints(x509.signing_certificates)
    references = x509.ca_references
    if references is not None:
        for name in (references.primary, references.secondary):
            if name and name.lower() in verified_ca_thumbprints:
                named.add(verified_ca_thumbprints[name.lower()])
    for position, thumbprint in enumerate(chain.thumbprints[1:], start=1):
        if thumbprint in named:
            return position
    return None
