"""``dpsd policy``: the shared access policies of the service API, their rights and, when
asked for, their keys and connection strings (for the service SDKs, or any client that signs
SAS tokens). Like ``dpsd hub`` and ``dpsd certificate``, these read the store directly."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import typer

from dpsd.cli.failures import fail
from dpsd.cli.options import Database, DataDir, command_group
from dpsd.cli.output import (
    Column,
    Output,
    OutputOption,
    ShowKeys,
    print_record,
    print_records,
)

if TYPE_CHECKING:
    from dpsd.administration import Administration

policy_app = command_group("Shared access policies of the service API.")

PolicyName = Annotated[
    str, typer.Argument(help="The policy's name, e.g. provisioningserviceowner.")
]

COLUMNS: tuple[Column, ...] = (("name", "keyName"), ("rights", "rights"))
KEY_FIELDS: tuple[Column, ...] = (
    ("primary key", "primaryKey"),
    ("secondary key", "secondaryKey"),
    ("connection string", "connectionString"),
    ("secondary connection string", "secondaryConnectionString"),
)


def _policies(data_dir: DataDir, database: Database, keys: bool) -> list[dict[str, Any]]:
    """Every policy as the ARM API names its fields (keyName, rights, primaryKey,
    secondaryKey), with connection strings to the endpoint the data dir's server listens
    on (or would); keys and connection strings only when asked for."""
    from dpsd.cli.store import run_on_store
    from dpsd.domain.sas import format_rights, service_connection_string
    from dpsd.endpoints import serving_endpoints

    async def read(store: Administration) -> list[dict[str, Any]]:
        https = urlsplit(serving_endpoints(store.settings).https)
        host, port = https.hostname or store.settings.hostname, https.port or 443
        records = []
        for policy in sorted(store.policies.values(), key=lambda p: p.name):
            record: dict[str, Any] = {
                "keyName": policy.name,
                "rights": format_rights(policy.rights),
            }
            if keys:
                secondary = replace(policy, primary_key=policy.secondary_key)
                record |= {
                    "primaryKey": policy.primary_key,
                    "secondaryKey": policy.secondary_key,
                    "connectionString": service_connection_string(host, port, policy),
                    "secondaryConnectionString": service_connection_string(host, port, secondary),
                }
            records.append(record)
        return records

    return run_on_store(data_dir, database, read)


@policy_app.command("list")
def list_command(
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List the shared access policies and their rights."""
    columns = (*COLUMNS, ("connection string", "connectionString")) if keys else COLUMNS
    print_records(_policies(data_dir, database, keys), output, columns)


@policy_app.command("show")
def show_command(
    name: PolicyName,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show a shared access policy.

    Its rights, and with --show-keys its keys and connection strings.
    """
    found = [
        record
        for record in _policies(data_dir, database, keys)
        if record["keyName"].lower() == name.lower()
    ]
    if not found:
        fail(f"there is no shared access policy {name!r} (dpsd policy list names them)")
    print_record(found[0], output, (*COLUMNS, *(KEY_FIELDS if keys else ())))
