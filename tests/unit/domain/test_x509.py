"""Certificates as clients send them, and the info the service computes for them."""

from __future__ import annotations

import base64
import re
import textwrap

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID, ObjectIdentifier

from dpsd.domain.errors import InvalidAttestation, InvalidCertificate
from dpsd.domain.x509 import (
    MAX_CERTIFICATE_TEXT,
    certificate_info,
    distinguished_name,
    load_certificate,
    to_pem,
)
from tests.unit.support import Issued, issue, name

SERIAL = 0xABCDEF0123456789


@pytest.fixture(scope="module")
def root() -> Issued:
    return issue(name("Contoso Root CA"), serial=1, ca=True)


@pytest.fixture(scope="module")
def leaf(root: Issued) -> Issued:
    return issue(name("device-1", "Fabrikam", "DE"), serial=SERIAL, issuer=root)


@pytest.fixture(scope="module")
def self_signed() -> Issued:
    return issue(name("device-2"), serial=0x0F)


def forms(issued: Issued) -> dict[str, str]:
    der64 = base64.b64encode(issued.der).decode()
    return {
        "pem": issued.pem,
        "pem with blanks around": f"\n  {issued.pem}\n\n",
        "pem with CRLF": issued.pem.replace("\n", "\r\n"),
        "base64 of der": der64,
        "base64 of der in lines": "\n".join(textwrap.wrap(der64, 64)),
        "base64 of pem": base64.b64encode(issued.pem.encode()).decode(),
    }


FORMS = [
    "pem",
    "pem with blanks around",
    "pem with CRLF",
    "base64 of der",
    "base64 of der in lines",
    "base64 of pem",
]


@pytest.mark.parametrize("form", FORMS)
def test_load_accepts_every_form_clients_send(form: str, leaf: Issued, self_signed: Issued) -> None:
    for issued in (leaf, self_signed):
        assert load_certificate(forms(issued)[form]) == issued.certificate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("hello world!", "neither PEM nor base64"),
        ("@@@@", "neither PEM nor base64"),
        ("ceci n'est pas une pipe", "neither PEM nor base64"),
        ("é", "neither PEM nor base64"),
        ("AAA", "not valid base64"),
        ("A=AA", "not valid base64"),
        ("aGVsbG8gd29ybGQ=", "not a valid X.509"),  # base64 of 'hello world'
        ("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "not a valid X.509"),
        ("-----BEGIN CERTIFICATE-----\ngarbage", "not a valid X.509"),
    ],
)
def test_load_refuses_garbage(text: str, message: str) -> None:
    with pytest.raises(InvalidCertificate, match=message):
        load_certificate(text)


def test_load_refuses_over_size(leaf: Issued) -> None:
    padded = leaf.pem + "\n" * MAX_CERTIFICATE_TEXT
    assert load_certificate(padded) == leaf.certificate  # surrounding blanks do not count
    with pytest.raises(InvalidCertificate, match="larger than"):
        load_certificate("A" * (MAX_CERTIFICATE_TEXT + 1))
    with pytest.raises(InvalidCertificate, match="larger than"):
        load_certificate(leaf.pem + "x" * MAX_CERTIFICATE_TEXT)


def test_invalid_certificate_is_an_invalid_attestation() -> None:
    assert issubclass(InvalidCertificate, InvalidAttestation)


def test_to_pem_round_trips(leaf: Issued) -> None:
    pem = to_pem(leaf.certificate)
    assert pem.startswith("-----BEGIN CERTIFICATE-----\n")
    assert load_certificate(pem) == leaf.certificate


def test_info_of_a_ca_signed_certificate(leaf: Issued, root: Issued) -> None:
    info = certificate_info(leaf.certificate)
    assert info.subject_name == "CN=device-1, O=Fabrikam, C=DE"
    assert info.issuer_name == "CN=Contoso Root CA, O=Contoso, C=US"
    assert info.version == 3
    assert info.serial_number == "ABCDEF0123456789"
    assert info.not_before_utc == "2020-01-01T00:00:00Z"
    assert info.not_after_utc == "2030-01-01T00:00:00Z"
    assert info.issuer_name == certificate_info(root.certificate).subject_name


def test_info_of_a_self_signed_certificate(self_signed: Issued) -> None:
    info = certificate_info(self_signed.certificate)
    assert info.subject_name == info.issuer_name == "CN=device-2, O=Contoso, C=US"
    assert info.serial_number == "F"


@pytest.mark.parametrize("which", ["leaf", "self_signed", "root"])
def test_thumbprints_are_uppercase_hex_of_the_der(
    which: str, request: pytest.FixtureRequest
) -> None:
    issued: Issued = request.getfixturevalue(which)
    info = certificate_info(issued.certificate)
    sha1 = issued.certificate.fingerprint(hashes.SHA1()).hex().upper()
    sha256 = issued.certificate.fingerprint(hashes.SHA256()).hex().upper()
    assert info.sha1_thumbprint == sha1
    assert info.sha256_thumbprint == sha256
    assert re.fullmatch("[0-9A-F]{40}", info.sha1_thumbprint)
    assert re.fullmatch("[0-9A-F]{64}", info.sha256_thumbprint)


def test_info_is_the_same_whatever_the_form(leaf: Issued) -> None:
    infos = {certificate_info(load_certificate(text)) for text in forms(leaf).values()}
    assert len(infos) == 1


def test_distinguished_name_short_labels_and_unknown_oids() -> None:
    unknown = ObjectIdentifier("1.2.3.4.5")
    dn = x509.Name(
        [
            x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "com"),
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "WA"),
            x509.NameAttribute(NameOID.LOCALITY_NAME, "Redmond"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "MSFT"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "Azure IoT"),
            x509.NameAttribute(NameOID.EMAIL_ADDRESS, "iot@example.com"),
            x509.NameAttribute(unknown, "x"),
            x509.NameAttribute(NameOID.COMMON_NAME, "ROOT"),
        ]
    )
    assert distinguished_name(dn) == (
        "CN=ROOT, 1.2.3.4.5=x, E=iot@example.com, OU=Azure IoT, O=MSFT, L=Redmond, S=WA, "
        "C=US, DC=com"
    )


def test_distinguished_name_of_an_empty_name() -> None:
    assert distinguished_name(x509.Name([])) == ""
