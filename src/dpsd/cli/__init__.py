"""The ``dpsd`` command."""

from __future__ import annotations

from typing import Annotated

import typer

from dpsd.cli.certificates import certificate_app
from dpsd.cli.enrollments import enrollment_app, group_app
from dpsd.cli.fleet import export_command, import_command
from dpsd.cli.hubs import hub_app
from dpsd.cli.registrations import device_key_command, registration_app
from dpsd.cli.serve import info_command, serve_command

cli = typer.Typer(
    help="dpsd: a self-hostable Azure IoT Hub Device Provisioning Service.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        from dpsd.version import dpsd_version

        typer.echo(f"dpsd {dpsd_version()}")
        raise typer.Exit


@cli.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """dpsd: a self-hostable Azure IoT Hub Device Provisioning Service."""


cli.command("serve")(serve_command)
cli.command("info")(info_command)
cli.add_typer(enrollment_app, name="enrollment")
cli.add_typer(group_app, name="group")
cli.add_typer(registration_app, name="registration")
cli.command("device-key")(device_key_command)
cli.command("export")(export_command)
cli.command("import")(import_command)
cli.add_typer(hub_app, name="hub")
cli.add_typer(certificate_app, name="certificate")


def main() -> None:
    cli()
