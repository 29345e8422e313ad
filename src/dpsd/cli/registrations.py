"""``dpsd registration`` (device registration states) and ``dpsd device-key``."""

from __future__ import annotations

from itertools import islice
from typing import Annotated

import typer

from dpsd.cli.options import command_group
from dpsd.cli.output import Column, Output, OutputOption, print_json, print_record, print_records
from dpsd.cli.target import (
    CaFileOption,
    ConnectionStringOption,
    Database,
    DataDir,
    TargetOptions,
    fail,
    reported_failures,
)

FIELDS: tuple[Column, ...] = (
    ("registration id", "registrationId"),
    ("device id", "deviceId"),
    ("status", "status"),
    ("assigned hub", "assignedHub"),
    ("substatus", "substatus"),
    ("error code", "errorCode"),
    ("error message", "errorMessage"),
    ("etag", "etag"),
    ("created", "createdDateTimeUtc"),
    ("updated", "lastUpdatedDateTimeUtc"),
)
COLUMNS: tuple[Column, ...] = (
    ("registration id", "registrationId"),
    ("device id", "deviceId"),
    ("status", "status"),
    ("assigned hub", "assignedHub"),
    ("updated", "lastUpdatedDateTimeUtc"),
)

registration_app = command_group(
    "Device registration states: which hub each device was assigned to."
)
RegistrationId = Annotated[str, typer.Argument(help="The device's registration id.")]


@registration_app.command("show")
def registration_show(
    registration_id: RegistrationId,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show a device's registration state."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    with reported_failures(), target.resolve().client() as client:
        state = client.registrations.get(registration_id)
    print_record(state, output, FIELDS)


@registration_app.command("list")
def registration_list(
    group: Annotated[
        str, typer.Option("--group", "-g", help="The enrollment group whose devices to list.")
    ],
    top: Annotated[int | None, typer.Option("--top", min=1, help="List at most this many.")] = None,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List the registration states of a group's devices.

    The service API lists them by group; an individual enrollment's state is in
    dpsd enrollment show."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    with reported_failures(), target.resolve().client() as client:
        page_size = min(top, 1000) if top is not None else None
        states = client.registrations.query(group, page_size=page_size)
        print_records(islice(states, top), output, COLUMNS)


@registration_app.command("delete")
def registration_delete(
    registration_id: RegistrationId,
    etag: Annotated[
        str | None, typer.Option("--etag", help="Act only if the state is at this etag.")
    ] = None,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Delete a device's registration state.

    Its next registration allocates it afresh."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    with reported_failures(), target.resolve().client() as client:
        client.registrations.delete(registration_id, if_match=etag)
    typer.echo(f"deleted {registration_id}", err=True)


def device_key_command(
    registration_id: Annotated[
        str, typer.Option("--registration-id", "-r", help="The device's registration id.")
    ],
    group: Annotated[
        str | None,
        typer.Option("--group", "-g", help="The symmetric-key enrollment group to read."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--key", help="The group key itself, to derive without the service."),
    ] = None,
    secondary: Annotated[
        bool, typer.Option("--secondary", help="Derive from the group's secondary key.")
    ] = False,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Print the key a device of a symmetric-key enrollment group signs with: the
    HMAC-SHA256 of its registration id under the group key (as `az iot dps
    compute-device-key`)."""
    if (group is None) == (key is None):
        fail("give either --group (read the group's key from the service) or --key", code=2)
    if group is not None:
        target = TargetOptions(connection_string, ca_file, data_dir, database)
        with reported_failures(), target.resolve().client() as client:
            mechanism = client.enrollment_groups.attestation_mechanism(group)
        keys = mechanism.get("symmetricKey") or {}
        key = keys.get("secondaryKey" if secondary else "primaryKey")
        if mechanism.get("type") != "symmetricKey" or not isinstance(key, str):
            fail(f"enrollment group {group} does not attest with symmetric keys")
    assert key is not None
    from dpsd.domain.device_auth import derive_device_key

    try:
        device_key = derive_device_key(key, registration_id)
    except ValueError:  # binascii.Error
        fail("the group key is not base64", code=2)
    if output is Output.json:
        print_json({"registrationId": registration_id, "deviceKey": device_key})
    else:
        typer.echo(device_key)
