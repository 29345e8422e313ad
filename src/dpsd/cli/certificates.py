"""``dpsd certificate``: CA certificates that X.509 enrollment groups reference.

These commands work on the store directly (as the Azure portal and ARM API do for the real
service): a running dpsd sees the changes at once.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from dpsd.cli.failures import warn
from dpsd.cli.options import Database, DataDir, command_group

if TYPE_CHECKING:
    from dpsd.domain.ca_certificate import CACertificate
    from dpsd.service.certificates import CertificateService

T = TypeVar("T")

certificate_app = command_group("Manage CA certificates for X.509 enrollment groups.")

Name = Annotated[str, typer.Argument(help="The certificate's name (caReferences use it).")]
CertificateFile = Annotated[
    Path,
    typer.Option(
        "--file", "-f", exists=True, dir_okay=False, readable=True, help="PEM or DER file."
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _run(
    data_dir: Path | None,
    database: str | None,
    action: Callable[[CertificateService], Awaitable[T]],
) -> T:
    from dpsd.cli.store import run_on_store

    return run_on_store(data_dir, database, lambda runtime: action(runtime.certificates))


def _as_dict(record: CACertificate) -> dict[str, object]:
    from dpsd.domain.timestamps import format_timestamp

    info = record.info
    return {
        "name": record.name,
        "isVerified": record.is_verified,
        "subject": info.subject_name,
        "thumbprint": info.sha256_thumbprint,
        "sha1Thumbprint": info.sha1_thumbprint,
        "notAfterUtc": info.not_after_utc,
        "created": format_timestamp(record.created),
        "updated": format_timestamp(record.last_updated),
        "verificationCode": record.verification_code,
    }


def _show(record: CACertificate, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(_as_dict(record), indent=2))
        return
    from rich.console import Console

    console = Console(highlight=False)
    for key, value in _as_dict(record).items():
        console.print(f"{key:18} {value if value is not None else '-'}")


@certificate_app.command("add")
def add_command(
    name: Name,
    file: CertificateFile,
    verified: Annotated[
        bool, typer.Option("--verified", help="Trust it without proof of possession.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Register a CA certificate (verify it next).

    With --verified it is trusted at once, without proof of possession.
    """
    text = _read_certificate(file)
    record = _run(data_dir, database, lambda service: service.add(name, text, verified=verified))
    _show(record, as_json)


@certificate_app.command("list")
def list_command(
    as_json: AsJson = False, data_dir: DataDir = None, database: Database = None
) -> None:
    """List the registered CA certificates."""
    from rich.console import Console
    from rich.table import Table

    records = _run(data_dir, database, lambda service: service.list())
    if as_json:
        typer.echo(json.dumps([_as_dict(record) for record in records], indent=2))
        return
    table = Table("name", "verified", "subject", "SHA-256 thumbprint", "expires")
    for record in records:
        info = record.info
        table.add_row(
            record.name,
            "yes" if record.is_verified else "no",
            info.subject_name,
            info.sha256_thumbprint,
            info.not_after_utc,
        )
    Console().print(table)


@certificate_app.command("show")
def show_command(
    name: Name, as_json: AsJson = False, data_dir: DataDir = None, database: Database = None
) -> None:
    """Show one CA certificate."""
    _show(_run(data_dir, database, lambda service: service.get(name)), as_json)


@certificate_app.command("delete")
def delete_command(
    name: Name,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Delete it even while enrollment groups reference it: their devices then "
            "fail attestation until the groups reference another CA certificate.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Delete a CA certificate no group references."""
    from dpsd.service.references import describe

    left = _run(data_dir, database, lambda service: service.delete(name, force=force))
    typer.echo(f"deleted {name}")
    if left:
        warn(
            f"still referencing it: {describe(left)}; their devices fail attestation until "
            "they reference another CA certificate"
        )


@certificate_app.command("verification-code")
def verification_code_command(
    name: Name, as_json: AsJson = False, data_dir: DataDir = None, database: Database = None
) -> None:
    """Make a code to prove possession of the CA's key.

    Sign a certificate whose subject is CN=CODE with the CA's key, then pass it to
    dpsd certificate verify.
    """
    record = _run(data_dir, database, lambda service: service.generate_verification_code(name))
    if as_json:
        typer.echo(json.dumps({"name": record.name, "verificationCode": record.verification_code}))
        return
    typer.echo(record.verification_code)


@certificate_app.command("verify")
def verify_command(
    name: Name,
    file: CertificateFile,
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Verify a CA certificate with a signed verification code."""
    text = _read_certificate(file)
    _show(_run(data_dir, database, lambda service: service.verify(name, text)), as_json)


def _read_certificate(path: Path) -> str:
    """PEM text as it is; DER bytes as base64 (the service accepts both)."""
    import base64

    raw = path.read_bytes()
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii", errors="replace")
    return base64.b64encode(raw).decode("ascii")
