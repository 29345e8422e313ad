"""The data dir's TLS material: a local CA, a server certificate it signs, and one
certificate per built-in IoT hub name (``tls/hubs/``), which the listeners serve to clients
that ask for that name (SNI).

Made on first start; the server certificate is made again when it no longer covers the
configured names or is about to expire. Private keys are written owner-readable only, in
owner-only folders (dpsd.data_dir says what is done about ones opened since).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from dpsd.domain.hub import LinkedHub
from dpsd.tls_paths import KEY_SUFFIX, TlsFiles, tls_files

CA_LIFETIME = timedelta(days=3650)
SERVER_LIFETIME = timedelta(days=397)
RENEW_BEFORE = timedelta(days=30)
logger = logging.getLogger("dpsd.tls")


class TlsFilesError(Exception):
    """The data dir's TLS files are there but cannot be read."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def ensure_tls(data_dir: Path, names: tuple[str, ...], now: datetime) -> TlsFiles:
    files = tls_files(data_dir)
    folder = files.ca_certificate.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        if not files.ca_certificate.exists() or not files.ca_key.exists():
            _write_ca(files, now)
        if _server_certificate_stale(files, names, now):
            _write_server_certificate(files, names, now)
    except ValueError as error:  # what cryptography says of a file it cannot load
        reason = str(error).split(".", 1)[0]
        raise TlsFilesError(
            f"the TLS files in {folder} cannot be read ({reason}): restore them, or move "
            f"{folder} aside to make a new CA (which clients must then trust)"
        ) from error
    return files


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = _key_bytes(key)
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
    key, certificate = _sign_server_certificate(files, names, now)
    _write_key(files.server_key, key)
    files.server_certificate.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{files.ca_key} does not hold an EC private key")
    return ca, ca_key


def _sign_server_certificate(
    files: TlsFiles, names: tuple[str, ...], now: datetime
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a server certificate for ``names`` that the data dir's CA signs."""
    ca, ca_key = _load_ca(files)
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
    return key, certificate


# Built-in IoT hubs: one certificate per host name, kept as tls/hubs/<name>.pem and
# <name>-key.pem. The listeners find them by the name a client asks for (client_tls.py).

_UNSAFE_IN_FILE_NAMES = re.compile(r"[^a-z0-9.-]")
_MAX_FILE_STEM = 200


@dataclass(frozen=True, slots=True)
class HubCertificateFiles:
    """``host``: the name the certificate covers (a hub's host name without its port)."""

    host: str
    certificate: Path
    key: Path


def certificate_host(host_name: str) -> str:
    """The part of a host name a certificate covers: without a port, in lower case."""
    host = host_name.strip()
    if host.startswith("["):  # [IPv6 address]:port
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:  # host:port (more colons: an IPv6 address alone)
        host = host.partition(":")[0]
    return host.lower().rstrip(".")


def _file_stem(host: str) -> str:
    """A file name for ``host`` that is safe anywhere (it may come from a client's
    handshake), and distinct for distinct names: a name ending in ``-key`` gets a ``_``,
    so no certificate file can be taken for another name's key file."""
    stem = _UNSAFE_IN_FILE_NAMES.sub("_", host)
    if len(stem) > _MAX_FILE_STEM:
        digest = hashes.Hash(hashes.SHA256())
        digest.update(host.encode("utf-8", "surrogatepass"))
        stem = f"{stem[: _MAX_FILE_STEM - 17]}~{digest.finalize().hex()[:16]}"
    if not stem or stem.startswith("."):
        stem = f"_{stem}"
    if stem.endswith(KEY_SUFFIX):
        stem = f"{stem}_"
    return stem


def hub_certificate_files(files: TlsFiles, host_name: str) -> HubCertificateFiles:
    host = certificate_host(host_name)
    stem = _file_stem(host)
    folder = files.hub_certificates
    return HubCertificateFiles(host, folder / f"{stem}.pem", folder / f"{stem}{KEY_SUFFIX}.pem")


def ensure_hub_certificate(files: TlsFiles, host_name: str, now: datetime) -> HubCertificateFiles:
    """The certificate for a built-in hub's host name, issued by the data dir's CA unless
    one is there that this CA signed, that covers the name, matches its key and is not
    about to expire."""
    hub = hub_certificate_files(files, host_name)
    ca = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    if _hub_certificate_current(hub, ca, now):
        return hub  # a key opened to others since is left so (dpsd serve says so)
    key, certificate = _sign_server_certificate(files, (hub.host,), now)
    hub.certificate.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Key first, each file replaced whole: a reader sees old or new files, never half of
    # one; a pair that does not match (two writers at once) is replaced at the next call.
    _replace(hub.key, _key_bytes(key), 0o600)
    _replace(hub.certificate, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    return hub


def _hub_certificate_current(hub: HubCertificateFiles, ca: x509.Certificate, now: datetime) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(hub.certificate.read_bytes())
        key = serialization.load_pem_private_key(hub.key.read_bytes(), password=None)
        certificate.verify_directly_issued_by(ca)
        covered = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return (
        certificate.not_valid_after_utc - RENEW_BEFORE >= now
        and _general_name(hub.host) in covered.value
        and _public_der(key.public_key()) == _public_der(certificate.public_key())
    )


def _public_der(key: object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_bytes(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _replace(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole: a draft beside it (owner-only from the start) renamed over it."""
    descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=".draft-")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.chmod(draft, mode)
        os.replace(draft, path)
    except BaseException:
        Path(draft).unlink(missing_ok=True)
        raise


def remove_hub_certificate(files: TlsFiles, host_name: str) -> None:
    hub = hub_certificate_files(files, host_name)
    hub.certificate.unlink(missing_ok=True)
    hub.key.unlink(missing_ok=True)


async def ensure_hub_certificates(
    files: TlsFiles, hubs: Iterable[LinkedHub], now: datetime
) -> None:
    """Certificates for every built-in hub among ``hubs`` (issued in a worker thread). A
    hub whose certificate cannot be made is logged and skipped."""
    names = [hub.host_name for hub in hubs if hub.builtin]
    if names:
        await asyncio.to_thread(_ensure_each, files, names, now)


def _ensure_each(files: TlsFiles, names: list[str], now: datetime) -> None:
    for name in names:
        try:
            ensure_hub_certificate(files, name, now)
        except (OSError, ValueError) as error:
            logger.warning("cannot issue the certificate of IoT hub %r: %s", name, error)
