"""The ``dpsd`` command.

Each command's module is imported when the command runs (``dpsd.cli.lazy``), and imports
what only its work needs (the server, the store, httpx, Rich) inside its functions: a
command starts in a small fraction of a second (bench/cli_start.py, docs/performance.md),
and tests/unit/test_cli_imports.py keeps it so.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from dpsd.cli.lazy import LazyCommand, LazyGroup
from dpsd.cli.options import HELP_OPTIONS

COMMANDS = {
    "serve": LazyCommand(
        "dpsd.cli.serve",
        "serve_command",
        "Serve the DPS service API, and device registration over HTTPS, MQTT and AMQP.",
    ),
    "info": LazyCommand(
        "dpsd.cli.info",
        "info_command",
        "The ID scope, service connection string, CA certificate and endpoints.",
    ),
    "enrollment": LazyCommand(
        "dpsd.cli.enrollments",
        "enrollment_app",
        "Manage individual enrollments (like az iot dps enrollment).",
    ),
    "group": LazyCommand(
        "dpsd.cli.enrollments",
        "group_app",
        "Manage enrollment groups (like az iot dps enrollment-group).",
    ),
    "registration": LazyCommand(
        "dpsd.cli.registrations",
        "registration_app",
        "Device registration states: which hub each device was assigned to.",
    ),
    "device-key": LazyCommand(
        "dpsd.cli.registrations",
        "device_key_command",
        "The key a device of a symmetric-key enrollment group signs with.",
    ),
    "export": LazyCommand(
        "dpsd.cli.fleet",
        "export_command",
        "Write every enrollment and group, with their keys, as JSON Lines.",
    ),
    "import": LazyCommand(
        "dpsd.cli.fleet",
        "import_command",
        "Create the enrollments and groups of a dpsd export file.",
    ),
    "hub": LazyCommand(
        "dpsd.cli.hubs", "hub_app", "Link the IoT hubs that devices are assigned to."
    ),
    "policy": LazyCommand(
        "dpsd.cli.policies",
        "policy_app",
        "Shared access policies of the service API and their connection strings.",
    ),
    "certificate": LazyCommand(
        "dpsd.cli.certificates",
        "certificate_app",
        "Manage CA certificates for X.509 enrollment groups.",
    ),
}


class _Commands(LazyGroup):
    lazy_commands = COMMANDS
    context_settings_of_commands = HELP_OPTIONS


cli = typer.Typer(
    cls=_Commands,
    help="dpsd: a self-hostable Azure IoT Hub Device Provisioning Service.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    context_settings=HELP_OPTIONS,
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


def main() -> None:
    # httpx imports its own command line (click, pygments, Rich's progress and syntax
    # modules) whenever they are installed, some 40 ms that the dpsd command never uses: a
    # None entry makes that import fail, and httpx leaves its command line out.
    sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
    cli()
