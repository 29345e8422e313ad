"""Attestation mechanisms: consistency, symmetric keys, TPM, certificates, secrets."""

from __future__ import annotations

import base64
from dataclasses import replace

import pytest

from dpsd.domain.attestation import (
    AttestationMechanism,
    AttestationType,
    SymmetricKeyAttestation,
    TpmAttestation,
    X509Attestation,
    X509CAReferences,
    X509Certificates,
    X509CertificateWithInfo,
    check_consistent,
    check_tpm,
    complete_certificates,
    complete_symmetric_key,
    completes_alone,
    decode_symmetric_key,
)
from dpsd.domain.errors import InvalidAttestation, InvalidCertificate
from dpsd.domain.x509 import certificate_info, to_pem
from tests.unit.support import Issued, issue, name


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


KEY_A = b64(b"a" * 32)
KEY_B = b64(b"b" * 32)
KEY_C = b64(b"c" * 32)
NEW_1 = b"1" * 64
NEW_2 = b"2" * 64
TPM = TpmAttestation(endorsement_key=b64(b"endorsement"), storage_root_key=b64(b"srk"))
SYMMETRIC = SymmetricKeyAttestation(primary_key=KEY_A, secondary_key=KEY_B)


@pytest.fixture(scope="module")
def device_certificate() -> Issued:
    return issue(name("device-1"), serial=7)


@pytest.fixture(scope="module")
def other_certificate() -> Issued:
    return issue(name("device-2"), serial=8)


# --- check_consistent ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "mechanism",
    [
        AttestationMechanism(AttestationType.NONE),
        AttestationMechanism(AttestationType.TPM, tpm=TPM),
        AttestationMechanism(AttestationType.X509, x509=X509Attestation()),
        AttestationMechanism(AttestationType.SYMMETRIC_KEY),  # keys are generated later
        AttestationMechanism(AttestationType.SYMMETRIC_KEY, symmetric_key=SYMMETRIC),
    ],
)
def test_consistent_mechanisms(mechanism: AttestationMechanism) -> None:
    check_consistent(mechanism)


@pytest.mark.parametrize(
    ("mechanism", "message"),
    [
        (
            AttestationMechanism(AttestationType.NONE, symmetric_key=SymmetricKeyAttestation()),
            "type is 'none' but the body also carries 'symmetricKey'",
        ),
        (
            AttestationMechanism(AttestationType.SYMMETRIC_KEY, tpm=TPM, x509=X509Attestation()),
            "also carries 'tpm', 'x509'",
        ),
        (AttestationMechanism(AttestationType.X509), "needs an 'x509' object"),
        (AttestationMechanism(AttestationType.TPM), "needs a 'tpm' object"),
        (
            AttestationMechanism(AttestationType.TPM, symmetric_key=SYMMETRIC),
            "also carries 'symmetricKey'",
        ),
    ],
)
def test_inconsistent_mechanisms_are_refused(mechanism: AttestationMechanism, message: str) -> None:
    with pytest.raises(InvalidAttestation, match=message):
        check_consistent(mechanism)


# --- symmetric keys ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [16, 32, 36, 64])
def test_key_lengths_accepted(length: int) -> None:
    raw = bytes(range(length))
    assert decode_symmetric_key(b64(raw), which="primaryKey") == raw


@pytest.mark.parametrize("length", [0, 1, 15, 65, 128])
def test_key_lengths_refused(length: int) -> None:
    with pytest.raises(InvalidAttestation, match=f"primaryKey is {length} bytes long"):
        decode_symmetric_key(b64(bytes(length)), which="primaryKey")


@pytest.mark.parametrize(
    "key", ["not base64!", "AAAA" * 4 + "A", "é" * 24, b64(bytes(32)) + "!", "QUJD RA=="]
)
def test_non_base64_key_refused(key: str) -> None:
    with pytest.raises(InvalidAttestation, match="secondaryKey is not valid base64"):
        decode_symmetric_key(key, which="secondaryKey")


def test_complete_generates_both_keys_when_none_given_or_stored() -> None:
    keys = complete_symmetric_key(None, None, NEW_1, NEW_2)
    assert keys == SymmetricKeyAttestation(primary_key=b64(NEW_1), secondary_key=b64(NEW_2))
    assert complete_symmetric_key(SymmetricKeyAttestation(), None, NEW_1, NEW_2) == keys


def test_complete_keeps_given_keys() -> None:
    assert complete_symmetric_key(SYMMETRIC, None, NEW_1, NEW_2) == SYMMETRIC
    stored = SymmetricKeyAttestation(primary_key=KEY_C, secondary_key=KEY_C)
    assert complete_symmetric_key(SYMMETRIC, stored, NEW_1, NEW_2) == SYMMETRIC


def test_complete_fills_missing_keys_from_stored_first() -> None:
    stored = SymmetricKeyAttestation(primary_key=KEY_C, secondary_key=KEY_B)
    assert complete_symmetric_key(None, stored, NEW_1, NEW_2) == stored
    given = SymmetricKeyAttestation(primary_key=KEY_A)
    assert complete_symmetric_key(given, stored, NEW_1, NEW_2) == SymmetricKeyAttestation(
        primary_key=KEY_A, secondary_key=KEY_B
    )
    given = SymmetricKeyAttestation(secondary_key=KEY_A)
    assert complete_symmetric_key(given, stored, NEW_1, NEW_2) == SymmetricKeyAttestation(
        primary_key=KEY_C, secondary_key=KEY_A
    )


def test_complete_fills_from_new_bytes_when_stored_lacks_a_key() -> None:
    stored = SymmetricKeyAttestation(primary_key=KEY_C)
    assert complete_symmetric_key(None, stored, NEW_1, NEW_2) == SymmetricKeyAttestation(
        primary_key=KEY_C, secondary_key=b64(NEW_2)
    )


@pytest.mark.parametrize(
    "given",
    [
        SymmetricKeyAttestation(primary_key=b64(bytes(15))),
        SymmetricKeyAttestation(secondary_key="nope!"),
        SymmetricKeyAttestation(primary_key=KEY_A, secondary_key=b64(bytes(65))),
    ],
)
def test_complete_validates_given_keys(given: SymmetricKeyAttestation) -> None:
    with pytest.raises(InvalidAttestation):
        complete_symmetric_key(given, None, NEW_1, NEW_2)


# --- TPM -----------------------------------------------------------------------------------


def test_tpm_keys_must_be_base64() -> None:
    check_tpm(TPM)
    check_tpm(TpmAttestation(endorsement_key=b64(b"ek")))
    with pytest.raises(InvalidAttestation, match=r"tpm\.endorsementKey is not valid base64"):
        check_tpm(TpmAttestation(endorsement_key="not base64!"))
    with pytest.raises(InvalidAttestation, match=r"tpm\.endorsementKey must not be empty"):
        check_tpm(TpmAttestation(endorsement_key=""))
    with pytest.raises(InvalidAttestation, match=r"tpm\.storageRootKey is not valid base64"):
        check_tpm(TpmAttestation(endorsement_key=b64(b"ek"), storage_root_key="%%"))


# --- certificates --------------------------------------------------------------------------


def test_complete_certificates_parses_and_computes_info(
    device_certificate: Issued, other_certificate: Issued
) -> None:
    given = X509Certificates(
        primary=X509CertificateWithInfo(certificate=b64(device_certificate.der)),
        secondary=X509CertificateWithInfo(certificate=other_certificate.pem),
    )
    completed = complete_certificates(given, None, field="clientCertificates")
    assert completed.primary == X509CertificateWithInfo(
        certificate=to_pem(device_certificate.certificate),
        info=certificate_info(device_certificate.certificate),
    )
    assert completed.secondary is not None
    assert completed.secondary.info == certificate_info(other_certificate.certificate)


def test_complete_certificates_needs_a_primary(device_certificate: Issued) -> None:
    given = X509Certificates(secondary=X509CertificateWithInfo(certificate=device_certificate.pem))
    with pytest.raises(InvalidAttestation, match=r"x509.signingCertificates.primary is required"):
        complete_certificates(given, None, field="signingCertificates")


def test_bad_certificate_names_where_it_is() -> None:
    given = X509Certificates(primary=X509CertificateWithInfo(certificate="garbage!"))
    with pytest.raises(InvalidCertificate, match=r"x509.clientCertificates.primary.certificate: "):
        complete_certificates(given, None, field="clientCertificates")


def test_info_only_entry_keeps_the_stored_certificate(
    device_certificate: Issued, other_certificate: Issued
) -> None:
    stored = complete_certificates(
        X509Certificates(primary=X509CertificateWithInfo(certificate=device_certificate.pem)),
        None,
        field="clientCertificates",
    )
    assert stored.primary is not None
    assert stored.primary.info is not None
    echoed = X509Certificates(primary=X509CertificateWithInfo(info=stored.primary.info))
    assert complete_certificates(echoed, stored, field="clientCertificates") == stored

    lower = replace(
        stored.primary.info, sha256_thumbprint=stored.primary.info.sha256_thumbprint.lower()
    )
    echoed_lower = X509Certificates(primary=X509CertificateWithInfo(info=lower))
    assert complete_certificates(echoed_lower, stored, field="clientCertificates") == stored

    other = certificate_info(other_certificate.certificate)
    wrong = X509Certificates(primary=X509CertificateWithInfo(info=other))
    with pytest.raises(InvalidAttestation, match="certificate is required"):
        complete_certificates(wrong, stored, field="clientCertificates")
    with pytest.raises(InvalidAttestation, match="certificate is required"):
        complete_certificates(echoed, None, field="clientCertificates")


# --- without_secrets -----------------------------------------------------------------------


def test_without_secrets_drops_symmetric_keys() -> None:
    mechanism = AttestationMechanism(AttestationType.SYMMETRIC_KEY, symmetric_key=SYMMETRIC)
    assert mechanism.without_secrets() == AttestationMechanism(AttestationType.SYMMETRIC_KEY)
    assert mechanism.symmetric_key == SYMMETRIC  # the original is untouched


def test_without_secrets_drops_certificates_but_keeps_info(device_certificate: Issued) -> None:
    info = certificate_info(device_certificate.certificate)
    entry = X509CertificateWithInfo(certificate=device_certificate.pem, info=info)
    stripped = X509CertificateWithInfo(info=info)
    full = X509Certificates(primary=entry, secondary=entry)
    bare = X509Certificates(primary=stripped, secondary=stripped)
    for x509, expected in (
        (X509Attestation(client_certificates=full), X509Attestation(client_certificates=bare)),
        (X509Attestation(signing_certificates=full), X509Attestation(signing_certificates=bare)),
        (
            X509Attestation(client_certificates=X509Certificates(primary=entry)),
            X509Attestation(client_certificates=X509Certificates(primary=stripped)),
        ),
    ):
        mechanism = AttestationMechanism(AttestationType.X509, x509=x509)
        assert mechanism.without_secrets() == AttestationMechanism(
            AttestationType.X509, x509=expected
        )


def test_without_secrets_keeps_what_is_not_secret() -> None:
    references = X509Attestation(ca_references=X509CAReferences(primary="root", secondary="alt"))
    for mechanism in (
        AttestationMechanism(AttestationType.X509, x509=references),
        AttestationMechanism(AttestationType.TPM, tpm=TPM),
        AttestationMechanism(AttestationType.NONE),
    ):
        assert mechanism.without_secrets() == mechanism


def test_what_completes_without_a_stored_record() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    certificate = X509CertificateWithInfo(certificate="PEM")
    info_only = X509CertificateWithInfo(info=None)

    def symmetric(primary: str | None, secondary: str | None) -> AttestationMechanism:
        return AttestationMechanism(
            AttestationType.SYMMETRIC_KEY, symmetric_key=SymmetricKeyAttestation(primary, secondary)
        )

    def x509(*entries: X509CertificateWithInfo | None) -> AttestationMechanism:
        return AttestationMechanism(
            AttestationType.X509,
            x509=X509Attestation(client_certificates=X509Certificates(*entries)),
        )

    assert completes_alone(symmetric(key, key))
    assert not completes_alone(symmetric(key, None))
    assert not completes_alone(symmetric(None, key))
    assert not completes_alone(AttestationMechanism(AttestationType.SYMMETRIC_KEY))
    assert completes_alone(x509(certificate, None))
    assert completes_alone(x509(certificate, certificate))
    assert not completes_alone(x509(certificate, info_only))
    assert not completes_alone(x509(info_only, None))
    assert completes_alone(
        AttestationMechanism(AttestationType.X509, x509=X509Attestation(ca_references=None))
    )
    assert completes_alone(AttestationMechanism(AttestationType.TPM, tpm=TpmAttestation("ek")))
    assert completes_alone(AttestationMechanism(AttestationType.NONE))
