"""TLS client certificates on the HTTPS listener, for X.509 device attestation.

uvicorn neither asks for client certificates nor shows them to the application, and
Python's ``ssl`` can only ask for one if it also verifies it. So the listener's context
trusts, as partial-chain anchors, every certificate that could vouch for a device (X.509
enrollments' client and signing certificates, verified CA certificates): a chain that ends
anywhere else is refused in the handshake. The protocol below then hands the verified chain
to the application as the ASGI TLS extension (``scope["extensions"]["tls"]``), where the
use cases decide which enrollment, if any, it proves (device connections, WebSockets
included, read it from their transport: ``verified_chain``).

A client that asks for the name of a built-in IoT hub (SNI) is served that hub's
certificate instead (``HubCertificates``), from the data dir as ``dpsd hub add --builtin``
or the server left it there, without client certificates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from dpsd.tls import HubCertificateFiles, hub_certificate_files
from dpsd.tls_paths import TlsFiles

MISS_SECONDS = 2.0
MAX_MISSES = 1024
logger = logging.getLogger("dpsd.tls")


class ClientCertificateTrust:
    def __init__(self, tls: TlsFiles) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(tls.server_certificate), str(tls.server_key))
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        self.hub_certificates = HubCertificates(tls)
        self._default_names = _dns_names(tls.server_certificate)
        context.sni_callback = self._on_server_name
        self.context = context
        self._known: set[str] = set()

    def _on_server_name(
        self, connection: ssl.SSLObject, server_name: str | None, _context: ssl.SSLContext
    ) -> None:
        """Switch the handshake to a built-in hub's certificate when the client asks for
        that hub's name; otherwise (and on any failure) keep the default context. A name
        the default certificate covers keeps it even when a built-in hub has that name
        (``localhost:8443``): its handshakes check devices' certificates."""
        if server_name is None or server_name.lower().rstrip(".") in self._default_names:
            return
        try:
            hub_context = self.hub_certificates.context_for(server_name)
            if hub_context is not None:
                connection.context = hub_context
        except Exception as error:  # noqa: BLE001  a handshake must not fail for this
            self.hub_certificates.report(server_name, error)

    def trust(self, certificates: Iterable[str]) -> None:
        """Accept chains ending at these PEM certificates from the next handshake on."""
        self.add(certificates)

    def add(self, certificates: Iterable[str]) -> list[str]:
        """``trust``, answering the certificates that were not trusted before."""
        added = []
        for pem in certificates:
            if pem not in self._known:
                self.context.load_verify_locations(cadata=pem)
                self._known.add(pem)
                added.append(pem)
        return added


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[int, ...]
    context: ssl.SSLContext


class HubCertificates:
    """Server contexts for the built-in hubs' certificates in the data dir, looked up by the
    name a client asks for: loaded on first use and again when the files change; a name
    without files is looked up again after MISS_SECONDS. Nothing here raises."""

    def __init__(self, tls: TlsFiles, clock: Callable[[], float] = time.monotonic) -> None:
        self._tls = tls
        self._clock = clock
        self._loaded: dict[str, _Loaded] = {}
        self._missed: dict[str, float] = {}
        self._reported: set[str] = set()

    def context_for(self, server_name: str) -> ssl.SSLContext | None:
        name = server_name.lower().rstrip(".")
        now = self._clock()
        missed = self._missed.get(name)
        if missed is not None and now - missed < MISS_SECONDS:
            return None
        files = hub_certificate_files(self._tls, name)
        try:
            stamp = _stamp(files)
        except OSError:
            self._miss(name, now)
            return None
        loaded = self._loaded.get(name)
        if loaded is not None and loaded.stamp == stamp:
            return loaded.context
        try:
            context = _hub_context(files)
        except (OSError, ssl.SSLError, ValueError) as error:
            self.report(name, error)
            self._miss(name, now)
            return None
        self._loaded[name] = _Loaded(stamp, context)
        self._missed.pop(name, None)
        self._reported.discard(name)
        return context

    def report(self, server_name: str, error: Exception) -> None:
        """Log a name's failure once (until it works again): files and error, no key."""
        if server_name in self._reported or len(self._reported) >= MAX_MISSES:
            return
        self._reported.add(server_name)
        logger.warning(
            "cannot serve the certificate of %r, serving the default one: %s: %s",
            server_name,
            type(error).__name__,
            error,
        )

    def _miss(self, name: str, now: float) -> None:
        if len(self._missed) >= MAX_MISSES:
            self._missed.clear()  # names clients made up: forget them rather than grow
        self._missed[name] = now
        self._loaded.pop(name, None)


def _dns_names(certificate: Path) -> frozenset[str]:
    loaded = x509.load_pem_x509_certificate(certificate.read_bytes())
    try:
        names = loaded.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(name.lower() for name in names.get_values_for_type(x509.DNSName))


def _stamp(files: HubCertificateFiles) -> tuple[int, ...]:
    """Changes whenever either file is written or replaced."""
    stats = [os.stat(files.certificate), os.stat(files.key)]
    return tuple(value for stat in stats for value in (stat.st_ino, stat.st_mtime_ns))


def _hub_context(files: HubCertificateFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_NONE
    context.load_cert_chain(str(files.certificate), str(files.key))
    return context


def verified_chain(ssl_object: ssl.SSLObject | None) -> tuple[str, ...]:
    """The client's certificate chain as the handshake verified it (PEM, leaf first), or
    nothing when the client sent no certificate."""
    if ssl_object is None or not ssl_object.getpeercert(binary_form=True):
        return ()
    # SSLObject.get_verified_chain() is public from Python 3.13; 3.11 and 3.12 have it on
    # the underlying _ssl object.
    native: Any = getattr(ssl_object, "_sslobj", ssl_object)
    return tuple(str(certificate.public_bytes()) for certificate in native.get_verified_chain())


def _tls_extension(transport: asyncio.BaseTransport) -> dict[str, Any] | None:
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return None
    return {
        "client_cert_chain": list(verified_chain(ssl_object)),
        "client_cert_error": None,
        "tls_version": None,
        "cipher_suite": None,
    }


class CoalescingTransport:
    """A transport whose writes of one turn of the event loop leave together.

    uvicorn writes a response's status line and headers, then its body, each at once: over
    TLS that is two records and two sends, and the client is woken twice. Held until the
    callbacks already due have run (``call_soon``), they leave as one record and one send.
    The bytes of the stream are the same, in the same order; closing sends what is held
    first, aborting drops it. Everything else is the wrapped transport's.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.wrapped = transport
        self._held: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(bytes(data))

    def writelines(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def flush(self) -> None:
        """Send what is held now."""
        if not self._held:
            return
        held, self._held = self._held, []
        if not self.wrapped.is_closing():
            self.wrapped.write(held[0] if len(held) == 1 else b"".join(held))

    def close(self) -> None:
        self.flush()
        self.wrapped.close()

    def write_eof(self) -> None:
        self.flush()
        self.wrapped.write_eof()

    def abort(self) -> None:
        self._held = []
        self.wrapped.abort()

    def get_write_buffer_size(self) -> int:
        return self.wrapped.get_write_buffer_size() + sum(len(chunk) for chunk in self._held)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class ClientCertificateProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, with the client's verified certificate chain in scope
    and each response's writes coalesced (CoalescingTransport)."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(CoalescingTransport(transport))  # type: ignore[arg-type]
        self._tls = _tls_extension(transport)

    def handle_websocket_upgrade(self) -> None:
        """The WebSocket protocol takes the connection's own transport."""
        coalescing = self.transport
        if isinstance(coalescing, CoalescingTransport):
            coalescing.flush()
            self.transport = coalescing.wrapped
        super().handle_websocket_upgrade()

    def shutdown(self) -> None:
        """At server shutdown an idle keep-alive connection is dropped at once: closing TLS
        politely would wait for the client's close_notify, which idle clients never send."""
        if self.cycle is None or self.cycle.response_complete:
            self.transport.abort()
        else:
            super().shutdown()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            self.scope["extensions"] = {"tls": self._tls}  # type: ignore[dict-item]
