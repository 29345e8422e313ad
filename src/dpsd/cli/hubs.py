"""``dpsd hub``: the IoT hubs devices can be assigned to.

Like ``dpsd certificate``, these work on the store directly; running servers see changes
at the next registration.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from dpsd.app import build_runtime
from dpsd.cli.options import Database, DataDir, make_settings
from dpsd.domain.errors import DomainError
from dpsd.domain.hub import LinkedHub
from dpsd.service.errors import ServiceError
from dpsd.service.hubs import HubService

T = TypeVar("T")

hub_app = typer.Typer(help="Link IoT hubs that devices are assigned to.", no_args_is_help=True)

HostName = Annotated[str, typer.Argument(help="The IoT hub's host name, e.g. hub1.example.net.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]


def _run(
    data_dir: Path | None, database: str | None, action: Callable[[HubService], Awaitable[T]]
) -> T:
    settings = make_settings(data_dir, database)

    async def go() -> T:
        async with build_runtime(settings) as runtime:
            return await action(runtime.hubs)

    try:
        return asyncio.run(go())
    except (DomainError, ServiceError) as error:
        Console(stderr=True, highlight=False).print(f"[red]error:[/red] {error.message}")
        raise typer.Exit(code=1) from None


def _as_dict(hub: LinkedHub) -> dict[str, object]:
    """The connection string holds a key: it is never printed, only whether there is one."""
    return {
        "hostName": hub.host_name,
        "allocationWeight": hub.allocation_weight,
        "applyAllocationPolicy": hub.apply_allocation_policy,
        "location": hub.location,
        "hasConnectionString": hub.connection_string is not None,
    }


@hub_app.command("add")
def add_command(
    host_name: HostName,
    connection_string: Annotated[
        str | None, typer.Option("--connection-string", help="The hub's owner connection string.")
    ] = None,
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
    as_json: AsJson = False,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Link an IoT hub."""
    hub = _run(
        data_dir,
        database,
        lambda service: service.link(
            host_name,
            connection_string=connection_string,
            weight=weight,
            apply_allocation_policy=apply_allocation_policy,
            location=location,
        ),
    )
    if as_json:
        typer.echo(json.dumps(_as_dict(hub)))
    else:
        typer.echo(f"linked {hub.host_name}")


@hub_app.command("list")
def list_command(
    as_json: AsJson = False, data_dir: DataDir = None, database: Database = None
) -> None:
    """List the linked IoT hubs."""
    hubs = _run(data_dir, database, lambda service: service.list())
    if as_json:
        typer.echo(json.dumps([_as_dict(hub) for hub in hubs], indent=2))
        return
    table = Table("host name", "weight", "applies policy", "location", "connection string")
    for hub in hubs:
        table.add_row(
            hub.host_name,
            str(hub.allocation_weight),
            "yes" if hub.apply_allocation_policy else "no",
            hub.location or "-",
            "set" if hub.connection_string else "-",
        )
    Console().print(table)


@hub_app.command("remove")
def remove_command(
    host_name: HostName, data_dir: DataDir = None, database: Database = None
) -> None:
    """Unlink an IoT hub (devices assigned to it stay recorded there)."""
    _run(data_dir, database, lambda service: service.unlink(host_name))
    typer.echo(f"removed {host_name}")
