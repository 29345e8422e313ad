"""Attestation mechanisms: how a device proves who it is, and the rules each must follow."""

from __future__ import annotations

import base64
import binascii
import enum
from dataclasses import dataclass, replace

from dpsd.domain.errors import InvalidAttestation
from dpsd.domain.x509 import CertificateInfo, certificate_info, load_certificate, to_pem

MIN_SYMMETRIC_KEY_BYTES = 16
MAX_SYMMETRIC_KEY_BYTES = 64
GENERATED_SYMMETRIC_KEY_BYTES = 64


class AttestationType(enum.StrEnum):
    NONE = "none"
    TPM = "tpm"
    X509 = "x509"
    SYMMETRIC_KEY = "symmetricKey"


@dataclass(frozen=True, slots=True)
class TpmAttestation:
    endorsement_key: str
    storage_root_key: str | None = None


@dataclass(frozen=True, slots=True)
class SymmetricKeyAttestation:
    primary_key: str | None = None
    secondary_key: str | None = None


@dataclass(frozen=True, slots=True)
class X509CertificateWithInfo:
    """A certificate (write-only: never returned) and the info computed from it."""

    certificate: str | None = None
    info: CertificateInfo | None = None


@dataclass(frozen=True, slots=True)
class X509Certificates:
    primary: X509CertificateWithInfo | None = None
    secondary: X509CertificateWithInfo | None = None


@dataclass(frozen=True, slots=True)
class X509CAReferences:
    primary: str | None = None
    secondary: str | None = None


@dataclass(frozen=True, slots=True)
class X509Attestation:
    client_certificates: X509Certificates | None = None
    signing_certificates: X509Certificates | None = None
    ca_references: X509CAReferences | None = None


@dataclass(frozen=True, slots=True)
class AttestationMechanism:
    type: AttestationType
    tpm: TpmAttestation | None = None
    x509: X509Attestation | None = None
    symmetric_key: SymmetricKeyAttestation | None = None

    def without_secrets(self) -> AttestationMechanism:
        """What GET and query show: no symmetric keys and no certificates, only their info."""
        x509 = self.x509
        if x509 is not None:
            x509 = replace(
                x509,
                client_certificates=_strip_certificates(x509.client_certificates),
                signing_certificates=_strip_certificates(x509.signing_certificates),
            )
        return replace(self, symmetric_key=None, x509=x509)


def _strip_certificates(certificates: X509Certificates | None) -> X509Certificates | None:
    if certificates is None:
        return None

    def strip(entry: X509CertificateWithInfo | None) -> X509CertificateWithInfo | None:
        return None if entry is None else X509CertificateWithInfo(info=entry.info)

    return X509Certificates(
        primary=strip(certificates.primary), secondary=strip(certificates.secondary)
    )


def completes_alone(mechanism: AttestationMechanism) -> bool:
    """Whether completing ``mechanism`` for storage takes nothing from a stored record: both
    symmetric keys sent, every certificate entry sent whole (not only its info), or a
    mechanism that keeps nothing (TPM, CA references, none)."""
    match mechanism.type:
        case AttestationType.SYMMETRIC_KEY:
            keys = mechanism.symmetric_key
            return keys is not None and bool(keys.primary_key) and bool(keys.secondary_key)
        case AttestationType.X509:
            x509 = mechanism.x509
            if x509 is None:
                return True
            return _sent_whole(x509.client_certificates) and _sent_whole(x509.signing_certificates)
        case _:
            return True


def _sent_whole(certificates: X509Certificates | None) -> bool:
    if certificates is None:
        return True
    entries = (certificates.primary, certificates.secondary)
    return all(entry is None or bool(entry.certificate) for entry in entries)


def check_consistent(mechanism: AttestationMechanism) -> None:
    """The mechanism's ``type`` names the one sub-object it carries, and nothing else."""
    given = {
        AttestationType.TPM: mechanism.tpm is not None,
        AttestationType.X509: mechanism.x509 is not None,
        AttestationType.SYMMETRIC_KEY: mechanism.symmetric_key is not None,
    }
    extra = [kind.value for kind, present in given.items() if present and kind != mechanism.type]
    if extra:
        raise InvalidAttestation(
            f"attestation type is {mechanism.type.value!r} but the body also carries "
            f"{', '.join(repr(name) for name in extra)}; send only the mechanism the type names"
        )
    if mechanism.type == AttestationType.TPM and mechanism.tpm is None:
        raise InvalidAttestation(
            "attestation type 'tpm' needs a 'tpm' object with an endorsementKey"
        )
    if mechanism.type == AttestationType.X509 and mechanism.x509 is None:
        raise InvalidAttestation("attestation type 'x509' needs an 'x509' object")


def decode_symmetric_key(key: str, *, which: str) -> bytes:
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidAttestation(f"symmetricKey.{which} is not valid base64") from error
    if not MIN_SYMMETRIC_KEY_BYTES <= len(raw) <= MAX_SYMMETRIC_KEY_BYTES:
        raise InvalidAttestation(
            f"symmetricKey.{which} is {len(raw)} bytes long; keys must be "
            f"{MIN_SYMMETRIC_KEY_BYTES} to {MAX_SYMMETRIC_KEY_BYTES} bytes"
        )
    return raw


def complete_symmetric_key(
    given: SymmetricKeyAttestation | None,
    stored: SymmetricKeyAttestation | None,
    new_key: bytes,
    new_secondary_key: bytes,
) -> SymmetricKeyAttestation:
    """Validate the keys sent; fill omitted ones from the stored record, else from new keys."""
    given = given or SymmetricKeyAttestation()
    stored = stored or SymmetricKeyAttestation()
    primary = given.primary_key or stored.primary_key or base64.b64encode(new_key).decode()
    secondary = (
        given.secondary_key or stored.secondary_key or base64.b64encode(new_secondary_key).decode()
    )
    decode_symmetric_key(primary, which="primaryKey")
    decode_symmetric_key(secondary, which="secondaryKey")
    return SymmetricKeyAttestation(primary_key=primary, secondary_key=secondary)


def check_tpm(tpm: TpmAttestation) -> None:
    for name, value in (
        ("endorsementKey", tpm.endorsement_key),
        ("storageRootKey", tpm.storage_root_key),
    ):
        if value is None:
            continue
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise InvalidAttestation(f"tpm.{name} is not valid base64") from error
        if not raw:
            raise InvalidAttestation(f"tpm.{name} must not be empty")


def complete_certificates(
    given: X509Certificates, stored: X509Certificates | None, *, field: str
) -> X509Certificates:
    """Parse every certificate sent and compute its info.

    An entry that carries only ``info`` (clients echo what GET returned) keeps the stored
    certificate when the info names it; anything else is refused rather than guessed.
    """
    if given.primary is None:
        raise InvalidAttestation(f"x509.{field}.primary is required")
    return X509Certificates(
        primary=_complete_certificate(
            given.primary, stored.primary if stored else None, where=f"x509.{field}.primary"
        ),
        secondary=None
        if given.secondary is None
        else _complete_certificate(
            given.secondary, stored.secondary if stored else None, where=f"x509.{field}.secondary"
        ),
    )


def _complete_certificate(
    given: X509CertificateWithInfo, stored: X509CertificateWithInfo | None, *, where: str
) -> X509CertificateWithInfo:
    if given.certificate:
        try:
            certificate = load_certificate(given.certificate)
        except InvalidAttestation as error:
            raise type(error)(f"{where}.certificate: {error.message}") from error
        return X509CertificateWithInfo(
            certificate=to_pem(certificate), info=certificate_info(certificate)
        )
    if (
        stored is not None
        and given.info is not None
        and stored.info is not None
        and given.info.sha256_thumbprint.upper() == stored.info.sha256_thumbprint
    ):
        return stored
    raise InvalidAttestation(f"{where}.certificate is required")
