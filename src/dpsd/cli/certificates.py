"""``dpsd certificate``: CA certificates that X.509 enrollment groups reference.

These commands work on the store directly (as the Azure portal and ARM API do for the real
service): a running dpsd sees the changes at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from dpsd.cli.failures import warn
from dpsd.cli.options import Database, DataDir, command_group
from dpsd.cli.output import (
    Column,
    JsonOption,
    Output,
    OutputOption,
    chosen,
    print_json,
    print_record,
    print_records,
)

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
FIELDS: tuple[Column, ...] = (
    ("name", "name"),
    ("verified", "isVerified"),
    ("subject", "subject"),
    ("SHA-256 thumbprint", "thumbprint"),
    ("SHA-1 thumbprint", "sha1Thumbprint"),
    ("expires", "notAfterUtc"),
    ("created", "created"),
    ("updated", "updated"),
    ("verification code", "verificationCode"),
)
COLUMNS: tuple[Column, ...] = (
    ("name", "name"),
    ("verified", "isVerified"),
    ("subject", "subject"),
    ("SHA-256 thumbprint", "thumbprint"),
    ("expires", "notAfterUtc"),
)


def _run(
    data_dir: Path | None,
    database: str | None,
    action: Callable[[CertificateService], Awaitable[T]],
) -> T:
    from dpsd.cli.store import run_on_store

    return run_on_store(data_dir, database, lambda store: action(store.certificates))


def _as_dict(record: CACertificate) -> dict[str, Any]:
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


def _show(record: CACertificate, output: Output) -> None:
    print_record(_as_dict(record), output, FIELDS)


@certificate_app.command("add")
def add_command(
    name: Name,
    file: CertificateFile,
    verified: Annotated[
        bool, typer.Option("--verified", help="Trust it without proof of possession.")
    ] = False,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Register a CA certificate (verify it next).

    With --verified it is trusted at once, without proof of possession.
    """
    text = _read_certificate(file)
    record = _run(data_dir, database, lambda service: service.add(name, text, verified=verified))
    _show(record, chosen(output, as_json))


@certificate_app.command("list")
def list_command(
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List the registered CA certificates."""
    records = _run(data_dir, database, lambda service: service.list())
    print_records([_as_dict(record) for record in records], chosen(output, as_json), COLUMNS)


@certificate_app.command("show")
def show_command(
    name: Name,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show one CA certificate."""
    _show(_run(data_dir, database, lambda service: service.get(name)), chosen(output, as_json))


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
    name: Name,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Make a code to prove possession of the CA's key.

    Sign a certificate whose subject is CN=CODE with the CA's key, then pass it to
    dpsd certificate verify.
    """
    record = _run(data_dir, database, lambda service: service.generate_verification_code(name))
    if chosen(output, as_json) is Output.json:
        print_json({"name": record.name, "verificationCode": record.verification_code})
        return
    typer.echo(record.verification_code)


@certificate_app.command("verify")
def verify_command(
    name: Name,
    file: CertificateFile,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Verify a CA certificate with a signed verification code."""
    text = _read_certificate(file)
    _show(
        _run(data_dir, database, lambda service: service.verify(name, text)),
        chosen(output, as_json),
    )


def _read_certificate(path: Path) -> str:
    """PEM text as it is; DER bytes as base64 (the service accepts both)."""
    import base64

    raw = path.read_bytes()
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw.decode("ascii", errors="replace")
    return base64.b64encode(raw).decode("ascii")
