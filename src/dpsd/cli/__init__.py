"""The ``dpsd`` command."""

from __future__ import annotations

import typer

from dpsd.cli.certificates import certificate_app
from dpsd.cli.hubs import hub_app
from dpsd.cli.serve import info_command, serve_command

cli = typer.Typer(
    help="dpsd: a self-hostable Azure IoT Hub Device Provisioning Service.",
    no_args_is_help=True,
    add_completion=False,
)
cli.command("serve")(serve_command)
cli.command("info")(info_command)
cli.add_typer(certificate_app, name="certificate")
cli.add_typer(hub_app, name="hub")


def main() -> None:
    cli()
