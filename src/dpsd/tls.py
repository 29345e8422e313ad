"""The data dir's TLS material: a local CA and a server certificate it signs.

Made on first start; the server certificate is made again when it no longer covers the
configured names or is about to expire. Private keys are written owner-readable only.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=397)
RENEW_BEFORE = timedelta(days=30)


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path


def tls_files(data_dir: Path) -> TlsFiles:
    folder = data_dir / "tls"
    return TlsFiles(
        ca_certificate=folder / "ca.pem",
        ca_key=folder / "ca-key.pem",
        server_certificate=folder / "server.pem",
        server_key=folder / "server-key.pem",
    )


def ensure_tls(data_dir: Path, names: tuple[str, ...], now: datetime) -> TlsFiles:
    files = tls_files(data_dir)
    files.ca_certificate.parent.mkdir(parents=True, exist_ok=True)
    if not files.ca_certificate.exists() or not files.ca_key.exists():
        _write_ca(files, now)
    if _server_certificate_stale(files, names, now):
        _write_server_certificate(files, names, now)
    return files


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def _write_ca(files: TlsFiles, now: datetime) -> None:
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "dpsd"),
            x509.NameAttribute(NameOID.COMMON_NAME, "dpsd local CA"),
        ]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(files.ca_key, key)
    files.ca_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _server_certificate_stale(files: TlsFiles, names: tuple[str, ...], now: datetime) -> bool:
    if not files.server_certificate.exists() or not files.server_key.exists():
        return True
    certificate = x509.load_pem_x509_certificate(files.server_certificate.read_bytes())
    if certificate.not_valid_after_utc - RENEW_BEFORE < now:
        return True
    covered = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    if certificate.issuer != ca.subject:
        return True
    return not all(_general_name(name) in covered for name in names)


def _write_server_certificate(files: TlsFiles, names: tuple[str, ...], now: datetime) -> None:
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} does not hold an EC private key")
    key = _new_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + SERVER_LIFETIME)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(files.server_key, key)
    files.server_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
