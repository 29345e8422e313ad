"""Certificates for the built-in hubs' names: issued by the data dir's CA, kept, renewed,
and served by the listeners' TLS context to clients that ask for a hub's name (SNI), in
real TLS handshakes on a loopback socket."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from dpsd.client_tls import MISS_SECONDS, ClientCertificateTrust, HubCertificates
from dpsd.domain.hub import DEFAULT_HUB_POLICIES, HubPolicy, LinkedHub
from dpsd.tls import (
    RENEW_BEFORE,
    SERVER_LIFETIME,
    certificate_host,
    ensure_hub_certificate,
    ensure_hub_certificates,
    ensure_tls,
    hub_certificate_files,
    remove_hub_certificate,
)
from dpsd.tls_paths import TlsFiles
from tests.certs import Issued, issue
from tests.tls_streams import start_tls_server

NOW = datetime.now(UTC)
HUB = "hub1.example.net"


@pytest.fixture
def tls(tmp_path: Path) -> TlsFiles:
    return ensure_tls(tmp_path / "data", ("localhost", "127.0.0.1", "::1"), NOW)


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names_of(certificate: x509.Certificate) -> list[x509.GeneralName]:
    return list(certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def builtin_hub(host_name: str) -> LinkedHub:
    policies = tuple(
        HubPolicy(name, "a2V5", "a2V5", rights) for name, rights in DEFAULT_HUB_POLICIES.items()
    )
    return LinkedHub(host_name=host_name, etag="e", builtin_policies=policies)


# Issuing


def test_a_hub_certificate_names_the_hub_and_the_ca_signs_it(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    assert files.certificate == tls.ca_certificate.parent / "hubs" / f"{HUB}.pem"
    assert files.key == tls.ca_certificate.parent / "hubs" / f"{HUB}-key.pem"
    certificate = load(files.certificate)
    assert names_of(certificate) == [x509.DNSName(HUB)]
    assert certificate.subject.rfc4514_string() == f"CN={HUB}"
    certificate.verify_directly_issued_by(load(tls.ca_certificate))
    assert certificate.not_valid_after_utc > NOW + SERVER_LIFETIME - timedelta(days=1)


def test_the_port_is_not_part_of_the_name(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, "Hub1.Example.NET:8443", NOW)
    assert files == hub_certificate_files(tls, HUB)
    assert names_of(load(files.certificate)) == [x509.DNSName(HUB)]


def test_an_address_gets_an_ip_name(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, "10.0.0.5:9443", NOW)
    assert files.certificate.name == "10.0.0.5.pem"
    assert names_of(load(files.certificate)) == [x509.IPAddress(ipaddress.ip_address("10.0.0.5"))]


@pytest.mark.parametrize(
    ("host_name", "host"),
    [
        ("hub1.example.net", "hub1.example.net"),
        ("HUB1.example.net:443", "hub1.example.net"),
        ("hub1.example.net.", "hub1.example.net"),
        ("[::1]:8443", "::1"),
        ("fe80::1", "fe80::1"),
    ],
)
def test_certificate_host(host_name: str, host: str) -> None:
    assert certificate_host(host_name) == host


def test_the_key_is_owner_readable_only(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.certificate.parent.stat().st_mode) == 0o700
    files.key.chmod(0o640)
    ensure_hub_certificate(tls, HUB, NOW)
    # Opened since by the operator: left so, and said at start (dpsd.data_dir).
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o640


def test_a_current_certificate_is_kept(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    before = files.certificate.read_bytes(), files.key.read_bytes()
    ensure_hub_certificate(tls, f"{HUB}:8443", NOW + timedelta(days=300))
    assert (files.certificate.read_bytes(), files.key.read_bytes()) == before


def test_a_certificate_about_to_expire_is_renewed(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    first = load(files.certificate)
    later = NOW + SERVER_LIFETIME - RENEW_BEFORE + timedelta(days=1)
    ensure_hub_certificate(tls, HUB, later)
    renewed = load(files.certificate)
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > later + SERVER_LIFETIME - timedelta(days=1)


def test_a_new_ca_issues_again(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    first = load(files.certificate)
    tls.ca_certificate.unlink()
    ensure_tls(tls.ca_certificate.parent.parent, ("localhost",), NOW)  # a new CA, same name
    ensure_hub_certificate(tls, HUB, NOW)
    reissued = load(files.certificate)
    assert reissued.serial_number != first.serial_number
    reissued.verify_directly_issued_by(load(tls.ca_certificate))


@pytest.mark.parametrize("damage", ["key of another", "garbage", "no key"])
def test_a_broken_pair_is_issued_again(tls: TlsFiles, damage: str) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    other = ensure_hub_certificate(tls, "hub2.example.net", NOW)
    if damage == "key of another":
        files.key.write_bytes(other.key.read_bytes())
    elif damage == "garbage":
        files.certificate.write_text("not a certificate")
    else:
        files.key.unlink()
    ensure_hub_certificate(tls, HUB, NOW)
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == load(files.certificate).public_key()


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("hub-key", "hub-key_"),  # its certificate must not be the key file of "hub"
        ("../../etc/passwd", "_.._.._etc_passwd"),
        (".hidden", "_.hidden"),
        ("a" * 300, None),
    ],
)
def test_file_names_are_safe_and_distinct(tls: TlsFiles, name: str, stem: str | None) -> None:
    files = hub_certificate_files(tls, name)
    assert files.certificate.parent == files.key.parent == tls.hub_certificates
    assert files.key.name == files.certificate.name.removesuffix(".pem") + "-key.pem"
    assert len(files.key.name) < 255
    if stem is not None:
        assert files.certificate.name == f"{stem}.pem"
    assert files.key != hub_certificate_files(tls, "hub").certificate


def test_removing_a_hub_certificate(tls: TlsFiles) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    remove_hub_certificate(tls, f"{HUB}:8443")
    assert not files.certificate.exists()
    assert not files.key.exists()
    remove_hub_certificate(tls, HUB)  # nothing left: no error


async def test_ensure_hub_certificates_covers_the_built_in_hubs_only(tls: TlsFiles) -> None:
    hubs = [
        builtin_hub(HUB),
        builtin_hub("localhost:9443"),
        LinkedHub(host_name="recorded.example.net", etag="e"),
    ]
    await ensure_hub_certificates(tls, hubs, NOW)
    assert sorted(path.name for path in tls.hub_certificates.iterdir()) == [
        f"{HUB}-key.pem",
        f"{HUB}.pem",
        "localhost-key.pem",
        "localhost.pem",
    ]


async def test_ensure_hub_certificates_skips_a_hub_it_cannot_serve(
    tls: TlsFiles, caplog: pytest.LogCaptureFixture
) -> None:
    tls.hub_certificates.mkdir()
    hub_certificate_files(tls, "bad.example.net").certificate.mkdir()  # a folder in the way
    with caplog.at_level(logging.WARNING, logger="dpsd.tls"):
        await ensure_hub_certificates(tls, [builtin_hub("bad.example.net"), builtin_hub(HUB)], NOW)
    assert hub_certificate_files(tls, HUB).certificate.is_file()
    assert "cannot issue the certificate of IoT hub 'bad.example.net'" in caplog.text


# Serving: real handshakes


@dataclass
class Listener:
    port: int
    trust: ClientCertificateTrust


@dataclass
class Seen:
    """What one handshake showed each side."""

    server_certificate: x509.Certificate
    client_certificate_seen: bool


@pytest.fixture
async def listener(tls: TlsFiles) -> AsyncIterator[Listener]:
    trust = ClientCertificateTrust(tls)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        writer.write(b"1" if ssl_object.getpeercert(binary_form=True) else b"0")
        await writer.drain()
        writer.close()

    server = await start_tls_server(
        answer, trust.context, handshake_timeout=10.0, host="127.0.0.1", port=0
    )
    async with server:
        yield Listener(server.sockets[0].getsockname()[1], trust)


def client_context(tls: TlsFiles, identity: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.ca_certificate))
    if identity is not None:
        context.load_cert_chain(*map(str, identity))
    return context


async def handshake(listener: Listener, context: ssl.SSLContext, server_name: str) -> Seen:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", listener.port, ssl=context, server_hostname=server_name
    )
    try:
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        answer = await reader.read(1)
    finally:
        writer.close()
    return Seen(x509.load_der_x509_certificate(der), answer == b"1")


async def refused(listener: Listener, context: ssl.SSLContext, server_name: str) -> bool:
    """Whether the server ends the handshake. In TLS 1.3 the client finishes its part
    before the server has checked the client's certificate: the refusal shows on reading."""
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", listener.port, ssl=context, server_hostname=server_name
        )
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        return await reader.read(1) == b""
    except (ssl.SSLError, ConnectionError):
        return True
    finally:
        writer.close()


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_a_client_asking_for_a_hub_gets_its_certificate(
    tls: TlsFiles, listener: Listener, version: ssl.TLSVersion
) -> None:
    files = ensure_hub_certificate(tls, f"{HUB}:8443", NOW)
    context = client_context(tls)
    context.minimum_version = context.maximum_version = version
    seen = await handshake(listener, context, HUB)
    assert seen.server_certificate == load(files.certificate)
    assert not seen.client_certificate_seen
    upper = await handshake(listener, client_context(tls), HUB.upper())
    assert upper.server_certificate == load(files.certificate)


async def test_a_client_asking_for_localhost_gets_the_default_certificate(
    tls: TlsFiles, listener: Listener
) -> None:
    ensure_hub_certificate(tls, HUB, NOW)
    seen = await handshake(listener, client_context(tls), "localhost")
    assert seen.server_certificate == load(tls.server_certificate)


async def test_an_unknown_name_gets_the_default_certificate(
    tls: TlsFiles, listener: Listener
) -> None:
    context = client_context(tls)
    context.check_hostname = False
    seen = await handshake(listener, context, "other.example.net")
    assert seen.server_certificate == load(tls.server_certificate)


def write_identity(issued: Issued, folder: Path) -> tuple[Path, Path]:
    certificate, key = folder / "device.pem", folder / "device-key.pem"
    certificate.write_text(issued.pem)
    key.write_bytes(
        issued.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return certificate, key


@pytest.mark.parametrize("hub", [HUB, "localhost:9443"])
async def test_devices_still_present_client_certificates(
    tls: TlsFiles, listener: Listener, tmp_path: Path, hub: str
) -> None:
    """Also when a built-in hub has a name of the default certificate (``localhost``):
    that name keeps the default context, which checks devices' certificates."""
    ensure_hub_certificate(tls, hub, NOW)
    device = issue("device-1")
    listener.trust.trust([device.pem])
    identity = write_identity(device, tmp_path)
    seen = await handshake(listener, client_context(tls, identity), "localhost")
    assert seen.client_certificate_seen
    assert seen.server_certificate == load(tls.server_certificate)
    stranger = write_identity(issue("stranger"), tmp_path)
    assert await refused(listener, client_context(tls, stranger), "localhost")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_a_hub_added_later_is_served_once_the_miss_is_stale(
    tls: TlsFiles, listener: Listener
) -> None:
    clock = FakeClock()
    listener.trust.hub_certificates = HubCertificates(tls, clock)
    context = client_context(tls)
    context.check_hostname = False
    before = await handshake(listener, context, HUB)
    assert before.server_certificate == load(tls.server_certificate)
    files = ensure_hub_certificate(tls, HUB, NOW)
    cached = await handshake(listener, context, HUB)
    assert cached.server_certificate == load(tls.server_certificate)
    clock.now += MISS_SECONDS
    seen = await handshake(listener, client_context(tls), HUB)
    assert seen.server_certificate == load(files.certificate)


async def test_a_renewed_hub_certificate_is_served_at_the_next_handshake(
    tls: TlsFiles, listener: Listener
) -> None:
    files = ensure_hub_certificate(tls, HUB, NOW)
    first = await handshake(listener, client_context(tls), HUB)
    remove_hub_certificate(tls, HUB)
    ensure_hub_certificate(tls, HUB, NOW)
    renewed = await handshake(listener, client_context(tls), HUB)
    assert renewed.server_certificate == load(files.certificate)
    assert renewed.server_certificate != first.server_certificate


async def test_a_broken_hub_certificate_falls_back_and_is_logged_once(
    tls: TlsFiles, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock()
    listener.trust.hub_certificates = HubCertificates(tls, clock)
    files = ensure_hub_certificate(tls, HUB, NOW)
    files.key.write_bytes(ensure_hub_certificate(tls, "hub2.example.net", NOW).key.read_bytes())
    context = client_context(tls)
    context.check_hostname = False
    with caplog.at_level(logging.WARNING, logger="dpsd.tls"):
        for _ in range(3):
            seen = await handshake(listener, context, HUB)
            assert seen.server_certificate == load(tls.server_certificate)
            clock.now += MISS_SECONDS
    warnings = [record for record in caplog.records if record.name == "dpsd.tls"]
    assert len(warnings) == 1, caplog.text
    assert "cannot serve the certificate of 'hub1.example.net'" in warnings[0].getMessage()
    assert "PRIVATE KEY" not in caplog.text
    ensure_hub_certificate(tls, HUB, NOW)  # mends the pair
    seen = await handshake(listener, client_context(tls), HUB)
    assert seen.server_certificate == load(files.certificate)


async def test_the_name_callback_never_fails_a_handshake(
    tls: TlsFiles, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing(HubCertificates):
        def context_for(self, server_name: str) -> ssl.SSLContext | None:
            raise RuntimeError("boom")

    listener.trust.hub_certificates = Failing(tls)
    ensure_hub_certificate(tls, HUB, NOW)
    context = client_context(tls)
    context.check_hostname = False
    with caplog.at_level(logging.WARNING, logger="dpsd.tls"):
        seen = await handshake(listener, context, HUB)
    assert seen.server_certificate == load(tls.server_certificate)
    assert "RuntimeError: boom" in caplog.text
