"""``dpsd info``: what a data dir's server is (or would be) reached at, read from its store
without building the server."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

from dpsd.administration import Administration, build_administration
from dpsd.cli.options import (
    Database,
    DataDir,
    Host,
    Hostname,
    HttpPort,
    HttpsPort,
    TlsNames,
    make_settings,
)
from dpsd.cli.output import (
    JsonOption,
    Output,
    OutputOption,
    ShowKeys,
    chosen,
    print_fields,
    print_json,
)
from dpsd.cli.store import opening_store
from dpsd.endpoints import Endpoints, running_endpoints, serving_endpoints
from dpsd.settings import DEFAULT_HOST, DEFAULT_HTTPS_PORT
from dpsd.version import dpsd_version


def info_command(
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    as_json: JsonOption = False,
    data_dir: DataDir = None,
    database: Database = None,
    host: Host = DEFAULT_HOST,
    https_port: HttpsPort = DEFAULT_HTTPS_PORT,
    http_port: HttpPort = None,
    hostname: Hostname = None,
    tls_name: TlsNames = None,
) -> None:
    """Print the ID scope, connection string, CA certificate and endpoints.

    The endpoints are those of the server running on the data dir, if one is; the owner
    policy's connection string is shown with --show-keys (JSON always has it). Initialises
    the data dir when it is new, exactly as the first dpsd serve would.
    """
    settings = make_settings(data_dir, database, host, https_port, http_port, hostname, tls_name)

    async def read() -> tuple[Administration, Endpoints]:
        async with build_administration(settings) as store:
            return store, serving_endpoints(settings)

    with opening_store(settings, database is not None):
        store, endpoints = asyncio.run(read())
    https = urlsplit(endpoints.https)
    info = {
        "version": dpsd_version(),
        "idScope": store.id_scope,
        "serviceConnectionString": store.connection_string(https.port or 443, https.hostname),
        "caCertificatePath": str(store.tls.ca_certificate),
        "endpoints": endpoints.as_json(),
    }
    if chosen(output, as_json) is Output.json:
        print_json(info)
        return
    running = running_endpoints(settings.data_dir)
    print_fields(
        [
            ("version", info["version"]),
            ("ID scope", info["idScope"]),
            (
                "connection string",
                info["serviceConnectionString"] if keys else "hidden (it holds a key): --show-keys",
            ),
            ("CA certificate", info["caCertificatePath"]),
            ("HTTPS endpoint", endpoints.https),
            ("HTTP endpoint", endpoints.http or "off"),
            ("MQTT endpoint", endpoints.mqtt or "off"),
            ("AMQP endpoint", endpoints.amqp or "off"),
            ("metrics endpoint", endpoints.metrics or "off"),
            (
                "server",
                "running" if running is not None else "not running (the ports it would use)",
            ),
        ]
    )
