"""``dpsd hub``: the IoT hubs devices can be assigned to.

Like ``dpsd certificate``, these work on the store directly; running servers see changes
at the next registration. ``add --builtin`` also leaves the hub's TLS certificate in the
data dir, where a server on that data dir finds it at the next handshake.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dpsd.cli.failures import warn
from dpsd.cli.options import Database, DataDir, command_group
from dpsd.cli.output import (
    Column,
    JsonOption,
    Output,
    OutputOption,
    ShowKeys,
    chosen,
    print_record,
    print_records,
)
from dpsd.domain.hub import OWNER_HUB_POLICY, LinkedHub, hub_connection_string

if TYPE_CHECKING:
    from dpsd.administration import Administration
    from dpsd.service.references import Referrers
    from dpsd.tls import HubCertificateFiles

hub_app = command_group("Link IoT hubs that devices are assigned to.")

HostName = Annotated[
    str,
    typer.Argument(help="The IoT hub's host name, e.g. hub1.example.net (or host:port)."),
]
FIELDS: tuple[Column, ...] = (
    ("host name", "hostName"),
    ("devices", "devices"),
    ("weight", "allocationWeight"),
    ("applies policy", "applyAllocationPolicy"),
    ("location", "location"),
)
COLUMNS = FIELDS


def _devices(hub: LinkedHub) -> str:
    """What dpsd does with the devices assigned to the hub."""
    if hub.builtin:
        return "built-in"
    if hub.connection_string is not None:
        return "written (connection string)"
    return "recorded only"


def _as_dict(hub: LinkedHub) -> dict[str, Any]:
    """Connection strings and policy keys are left out, only whether there are any said."""
    return {
        "hostName": hub.host_name,
        "devices": _devices(hub),
        "allocationWeight": hub.allocation_weight,
        "applyAllocationPolicy": hub.apply_allocation_policy,
        "location": hub.location,
        "hasConnectionString": hub.connection_string is not None,
        "builtin": hub.builtin,
        "writesDevices": hub.writable,
    }


@hub_app.command("add")
def add_command(
    host_name: HostName,
    connection_string: Annotated[
        str | None,
        typer.Option(
            "--connection-string",
            help="The hub's owner connection string: dpsd writes assigned devices into it.",
        ),
    ] = None,
    builtin: Annotated[
        bool,
        typer.Option(
            "--builtin",
            help="A hub that dpsd serves itself on its HTTPS port (IoT Hub's registry API), "
            "with its own keys and a TLS certificate for its name.",
        ),
    ] = False,
    weight: Annotated[int, typer.Option("--weight", help="Allocation weight, 1 to 1000.")] = 1,
    apply_allocation_policy: Annotated[
        bool,
        typer.Option(
            "--apply-allocation-policy/--no-apply-allocation-policy",
            help="Whether the hub takes part in allocation when an enrollment names no hubs.",
        ),
    ] = True,
    location: Annotated[
        str | None, typer.Option("--location", help="Where the hub is, for geoLatency.")
    ] = None,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Link an IoT hub.

    With --builtin dpsd serves the hub itself; with --connection-string it writes assigned
    devices into the hub; with neither it only records the assignments.
    """

    from dpsd.cli.store import run_on_store
    from dpsd.tls import HubCertificateFiles, ensure_hub_certificate

    async def link(
        store: Administration,
    ) -> tuple[LinkedHub, HubCertificateFiles | str | None]:
        hub = await store.hubs.link(
            host_name,
            connection_string=connection_string,
            weight=weight,
            apply_allocation_policy=apply_allocation_policy,
            location=location,
            builtin=builtin,
        )
        if not hub.builtin:
            return hub, None
        try:
            return hub, ensure_hub_certificate(store.tls, hub.host_name, store.now())
        except (OSError, ValueError) as error:
            return hub, str(error)

    hub, certificate = run_on_store(data_dir, database, link)
    if isinstance(certificate, str):
        warn(
            f"the TLS certificate of {hub.host_name} could not be made ({certificate}); "
            "dpsd serve tries again when it starts"
        )
    record = _as_dict(hub)
    fields = FIELDS
    owner = hub.policy(OWNER_HUB_POLICY)
    if owner is not None:  # a built-in hub's keys, made now, are shown once
        record["connectionString"] = hub_connection_string(hub.host_name, owner)
        fields = (*fields, ("connection string", "connectionString"))
    if isinstance(certificate, HubCertificateFiles):
        record["tlsCertificate"] = str(certificate.certificate)
        fields = (*fields, ("TLS certificate", "tlsCertificate"))
    print_record(record, chosen(output, as_json), fields)
    if isinstance(certificate, HubCertificateFiles) and _is_address(certificate.host):
        warn(
            f"clients name no server when they connect to an address: serve with "
            f"--tls-name {certificate.host} so that dpsd's own certificate covers it"
        )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@hub_app.command("list")
def list_command(
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List the linked IoT hubs.

    "devices": built-in (dpsd serves the hub and keeps its devices), written (into the hub
    the connection string names) or recorded only (the assignment alone).
    """
    from dpsd.cli.store import run_on_store

    hubs = run_on_store(data_dir, database, lambda store: store.hubs.list())
    print_records([_as_dict(hub) for hub in hubs], chosen(output, as_json), COLUMNS)


@hub_app.command("show")
def show_command(
    host_name: HostName,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show a linked IoT hub.

    A built-in hub's policies and TLS certificate too; with --show-keys, the connection
    string dpsd writes devices with (a built-in hub's owner policy's).
    """
    from dpsd.cli.store import run_on_store
    from dpsd.tls import hub_certificate_files

    async def read(store: Administration) -> dict[str, Any]:
        hub = await store.hubs.get(host_name)
        record = _as_dict(hub)
        if hub.builtin:
            record["policies"] = [policy.name for policy in hub.builtin_policies]
            files = hub_certificate_files(store.tls, hub.host_name)
            record["tlsCertificate"] = str(files.certificate)
        if keys:
            record["connectionString"] = (
                await store.hubs.connection_string(hub.host_name)
                if hub.builtin
                else hub.connection_string
            )
        return record

    record = run_on_store(data_dir, database, read)
    fields = (
        *FIELDS,
        ("policies", "policies"),
        ("TLS certificate", "tlsCertificate"),
        ("connection string", "connectionString"),
    )
    print_record(record, output, [field for field in fields if field[1] in record])


@hub_app.command("connection-string")
def connection_string_command(
    host_name: HostName,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="The shared access policy: iothubowner, service, device, registryRead "
            "or registryReadWrite.",
        ),
    ] = OWNER_HUB_POLICY,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Print a built-in hub's connection string.

    It holds the policy's key: for the IoT Hub service SDKs.
    """
    from dpsd.cli.store import run_on_store

    text = run_on_store(
        data_dir,
        database,
        lambda store: store.hubs.connection_string(host_name, policy),
    )
    typer.echo(text)


@hub_app.command("remove")
def remove_command(
    host_name: HostName,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Unlink it even while enrollments or groups name it: their devices are then "
            "assigned only to the other hubs they name, and fail to register if they name none.",
        ),
    ] = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Unlink an IoT hub no enrollment or group names.

    Devices assigned to it stay recorded there; a built-in hub's devices, keys and
    certificate are gone.
    """

    from dpsd.cli.store import run_on_store
    from dpsd.service.references import describe
    from dpsd.tls import certificate_host, remove_hub_certificate

    async def unlink(store: Administration) -> tuple[Referrers, ...]:
        left = await store.hubs.unlink(host_name, force=force)
        host = certificate_host(host_name)
        hubs = await store.hubs.list()
        if not any(hub.builtin and certificate_host(hub.host_name) == host for hub in hubs):
            remove_hub_certificate(store.tls, host_name)
        return left

    left = run_on_store(data_dir, database, unlink)
    typer.echo(f"removed {host_name}")
    if left:
        warn(
            f"still naming it: {describe(left)}; their devices are assigned only to the other "
            "hubs they name, and fail to register if they name none"
        )
