"""Where a data dir keeps its TLS files. Only the standard library: the client commands
find the local dpsd's CA certificate here on every start, and need no cryptography."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HUB_CERTIFICATES = "hubs"
KEY_SUFFIX = "-key"
"""What names a private key file: ``name-key.pem`` beside ``name.pem``."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_certificate: Path
    ca_key: Path
    server_certificate: Path
    server_key: Path

    @property
    def hub_certificates(self) -> Path:
        """The folder of the built-in hubs' certificates."""
        return self.ca_certificate.parent / HUB_CERTIFICATES


def tls_files(data_dir: Path) -> TlsFiles:
    folder = data_dir / "tls"
    return TlsFiles(
        ca_certificate=folder / "ca.pem",
        ca_key=folder / "ca-key.pem",
        server_certificate=folder / "server.pem",
        server_key=folder / "server-key.pem",
    )
