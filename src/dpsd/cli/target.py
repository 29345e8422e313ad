"""Which DPS service API the client commands talk to, and how their failures are reported.

A connection string (``--connection-string`` or ``DPSD_CONNECTION_STRING``) names any
endpoint that speaks the service API: a dpsd anywhere, or an Azure DPS. Without one, the
commands talk to the dpsd serving the local data dir, with its owner policy and its CA.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated
from urllib.parse import urlsplit

import typer

from dpsd.cli.failures import USAGE, fail
from dpsd.cli.options import Database, DataDir, make_settings
from dpsd.domain.sas import OWNER_POLICY, SharedAccessPolicy, service_connection_string
from dpsd.endpoints import running_endpoints
from dpsd.settings import Settings
from dpsd.tls_paths import tls_files

if TYPE_CHECKING:
    import ssl

    import httpx

    from dpsd.client import AsyncDpsServiceClient, DpsServiceClient

ConnectionStringOption = Annotated[
    str | None,
    typer.Option(
        "--connection-string",
        envvar="DPSD_CONNECTION_STRING",
        help="The service API to manage: HostName=...;SharedAccessKeyName=...;SharedAccessKey=..."
        " (default: the dpsd serving the data dir).",
        show_default=False,
    ),
]
CaFileOption = Annotated[
    Path | None,
    typer.Option(
        "--ca-file",
        envvar="DPSD_CA_FILE",
        exists=True,
        dir_okay=False,
        help="CA certificate (PEM) to trust for the endpoint (default: the system's CAs, or the"
        " data dir's CA for a local dpsd).",
        show_default=False,
    ),
]


@dataclass(frozen=True, slots=True)
class Target:
    """Where requests go: a connection string and what to trust for its TLS."""

    connection_string: str
    verify: bool | str

    def client(self) -> DpsServiceClient:
        from dpsd.client import DpsServiceClient

        return DpsServiceClient.from_connection_string(self.connection_string, verify=self.verify)

    def async_client(self) -> AsyncDpsServiceClient:
        from dpsd.client import AsyncDpsServiceClient

        return AsyncDpsServiceClient.from_connection_string(
            self.connection_string, verify=self.verify
        )


def resolve_target(
    connection_string: str | None,
    ca_file: Path | None,
    data_dir: Path | None,
    database: str | None,
) -> Target:
    if ca_file is not None:
        _check_ca_file(ca_file)
    if connection_string is not None:
        return Target(connection_string, True if ca_file is None else str(ca_file))
    settings = make_settings(data_dir, database)
    running = running_endpoints(settings.data_dir)
    if running is None:
        fail(
            f"no dpsd is serving {settings.data_dir}: start `dpsd serve` there, or pass"
            " --connection-string (or set DPSD_CONNECTION_STRING)"
        )
    https = urlsplit(running.https)
    owner = _local_policies(settings, database is not None)[OWNER_POLICY]
    hostname = https.hostname or settings.hostname
    local = service_connection_string(hostname, https.port or 443, owner)
    return Target(local, str(ca_file or tls_files(settings.data_dir).ca_certificate))


def _local_policies(settings: Settings, database_given: bool) -> dict[str, SharedAccessPolicy]:
    """The policies of the store the local dpsd serves: a SQLite file read with ``sqlite3``
    alone (in milliseconds), any other store, or a file that cannot be read so, through
    SQLAlchemy, which says in one line what is wrong with it."""
    from dpsd.storage.sqlite_instance import NotReadHere, plain_sqlite_file, read_sqlite_instance

    file = plain_sqlite_file(settings.database_url)
    if file is not None:
        try:
            _, policies = read_sqlite_instance(file)
        except NotReadHere:
            pass
        else:
            return {policy.name: policy for policy in policies}
    import asyncio

    from dpsd.administration import read_policies
    from dpsd.cli.store import opening_store

    with opening_store(settings, database_given):
        return asyncio.run(read_policies(settings))


def _check_ca_file(path: Path) -> None:
    """A CA file TLS can load: read here, so that a bad one is one line, not a traceback."""
    import ssl

    try:
        ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as error:
        reason = getattr(error, "reason", None) or error.strerror or str(error)
        fail(f"--ca-file {path} holds no PEM certificate TLS can load ({reason})", USAGE)


@contextmanager
def reported_failures() -> Iterator[None]:
    """Service errors and unreachable endpoints end the command with one line on stderr."""
    import httpx

    from dpsd.client import DpsError

    try:
        yield
    except DpsError as error:
        fail(str(error))
    except httpx.TransportError as error:
        fail(_transport_failure(error))
    except ValueError as error:  # a connection string or a record the client refuses
        fail(str(error), USAGE)


_NAME_MISMATCHES = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def _transport_failure(error: httpx.TransportError) -> str:
    refused = _certificate_refusal(error)
    if refused is not None and refused.verify_code in _NAME_MISMATCHES:
        return (
            f"the service's TLS certificate is not for the HostName asked for "
            f"({refused.verify_message}): use a name it covers (a dpsd adds names with "
            "dpsd serve --tls-name)"
        )
    if refused is not None:
        return (
            f"the service's TLS certificate is not trusted ({refused.verify_message}): pass "
            "--ca-file with the CA certificate that signed it (a dpsd's is tls/ca.pem in its "
            "data dir)"
        )
    return f"cannot reach the service: {str(error) or type(error).__name__}"


def _certificate_refusal(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure behind a connection error, if it is one."""
    import ssl

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


@dataclass(frozen=True, slots=True)
class TargetOptions:
    """The options every client command takes, gathered."""

    connection_string: str | None
    ca_file: Path | None
    data_dir: Path | None
    database: str | None

    def resolve(self) -> Target:
        with reported_failures():
            return resolve_target(
                self.connection_string, self.ca_file, self.data_dir, self.database
            )


__all__ = [
    "CaFileOption",
    "ConnectionStringOption",
    "DataDir",
    "Database",
    "Target",
    "TargetOptions",
    "fail",
    "reported_failures",
]
