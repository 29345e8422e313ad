"""Completing an attestation mechanism as the service stores it: keys generated,
certificates parsed and described, references checked."""

from __future__ import annotations

from dataclasses import replace

from dpsd.domain.attestation import (
    GENERATED_SYMMETRIC_KEY_BYTES,
    AttestationMechanism,
    AttestationType,
    SymmetricKeyAttestation,
    X509Attestation,
    check_tpm,
    complete_certificates,
    complete_symmetric_key,
)
from dpsd.domain.errors import InvalidAttestation
from dpsd.service.ports import Entropy


def complete_attestation(
    given: AttestationMechanism, stored: AttestationMechanism | None, entropy: Entropy
) -> AttestationMechanism:
    """``given`` has passed the consistency checks of its record kind."""
    same_kind = stored if stored is not None and stored.type == given.type else None
    match given.type:
        case AttestationType.SYMMETRIC_KEY:
            sent = given.symmetric_key or SymmetricKeyAttestation()
            kept = (same_kind.symmetric_key if same_kind else None) or SymmetricKeyAttestation()

            def fresh(*keys: str | None) -> bytes:
                """New key material, only for a key neither sent nor kept."""
                return b"" if any(keys) else entropy.random_bytes(GENERATED_SYMMETRIC_KEY_BYTES)

            keys = complete_symmetric_key(
                sent,
                kept,
                fresh(sent.primary_key, kept.primary_key),
                fresh(sent.secondary_key, kept.secondary_key),
            )
            if keys == given.symmetric_key:
                return given  # both keys sent: nothing to fill in
            return replace(given, symmetric_key=keys)
        case AttestationType.X509:
            if given.x509 is None:
                raise InvalidAttestation("attestation type 'x509' needs an 'x509' object")
            stored_x509 = same_kind.x509 if same_kind else None
            return replace(given, x509=_complete_x509(given.x509, stored_x509))
        case AttestationType.TPM:
            if given.tpm is None:
                raise InvalidAttestation("attestation type 'tpm' needs a 'tpm' object")
            check_tpm(given.tpm)
            return given
        case AttestationType.NONE:
            return given


def _complete_x509(given: X509Attestation, stored: X509Attestation | None) -> X509Attestation:
    if given.client_certificates is not None:
        return X509Attestation(
            client_certificates=complete_certificates(
                given.client_certificates,
                stored.client_certificates if stored else None,
                field="clientCertificates",
            )
        )
    if given.signing_certificates is not None:
        return X509Attestation(
            signing_certificates=complete_certificates(
                given.signing_certificates,
                stored.signing_certificates if stored else None,
                field="signingCertificates",
            )
        )
    return X509Attestation(ca_references=given.ca_references)
