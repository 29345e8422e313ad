"""``dpsd enrollment`` and ``dpsd group``: individual enrollments and enrollment groups over
the service API, in the manner of ``az iot dps enrollment`` and ``enrollment-group``."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from dpsd.cli.options import command_group
from dpsd.cli.output import (
    Column,
    Output,
    OutputOption,
    Record,
    ShowKeys,
    print_record,
    print_records,
    value_at,
)
from dpsd.cli.records import (
    AllocationPolicy,
    AttestationFlags,
    AttestationType,
    ProvisioningStatus,
    ReprovisionPolicy,
    SettingsFlags,
    apply_settings,
    attestation_from,
    without_server_fields,
)
from dpsd.cli.target import (
    CaFileOption,
    ConnectionStringOption,
    Database,
    DataDir,
    TargetOptions,
    reported_failures,
)

if TYPE_CHECKING:
    from dpsd.client import DpsServiceClient, EnrollmentOperations


@dataclass(frozen=True, slots=True)
class RecordKind:
    """Individual enrollments or enrollment groups: the commands on both are the same."""

    id_field: str
    group: bool
    fields: tuple[Column, ...]
    columns: tuple[Column, ...]

    def operations(self, client: DpsServiceClient) -> EnrollmentOperations:
        return client.enrollment_groups if self.group else client.enrollments

    @property
    def certificate_field(self) -> str:
        return "signingCertificates" if self.group else "clientCertificates"


_COMMON_FIELDS: tuple[Column, ...] = (
    ("attestation", "attestation.type"),
    ("provisioning status", "provisioningStatus"),
    ("allocation policy", "allocationPolicy"),
    ("IoT hubs", "iotHubs"),
    ("IoT hub", "iotHubHostName"),
    ("IoT Edge", "capabilities.iotEdge"),
    ("reprovision: update hub", "reprovisionPolicy.updateHubAssignment"),
    ("reprovision: migrate data", "reprovisionPolicy.migrateDeviceData"),
    ("webhook", "customAllocationDefinition.webhookUrl"),
    ("initial twin", "initialTwin"),
    ("etag", "etag"),
    ("created", "createdDateTimeUtc"),
    ("updated", "lastUpdatedDateTimeUtc"),
)
ENROLLMENTS = RecordKind(
    id_field="registrationId",
    group=False,
    fields=(
        ("registration id", "registrationId"),
        ("device id", "deviceId"),
        *_COMMON_FIELDS,
        ("registration", "registrationState.status"),
        ("assigned hub", "registrationState.assignedHub"),
    ),
    columns=(
        ("registration id", "registrationId"),
        ("device id", "deviceId"),
        ("attestation", "attestation.type"),
        ("status", "provisioningStatus"),
        ("allocation", "allocationPolicy"),
        ("registration", "registrationState.status"),
        ("updated", "lastUpdatedDateTimeUtc"),
    ),
)
GROUPS = RecordKind(
    id_field="enrollmentGroupId",
    group=True,
    fields=(("group id", "enrollmentGroupId"), *_COMMON_FIELDS),
    columns=(
        ("group id", "enrollmentGroupId"),
        ("attestation", "attestation.type"),
        ("status", "provisioningStatus"),
        ("allocation", "allocationPolicy"),
        ("IoT hubs", "iotHubs"),
        ("updated", "lastUpdatedDateTimeUtc"),
    ),
)

# --- options --------------------------------------------------------------------------------

AttestationTypeOption = Annotated[
    AttestationType | None,
    typer.Option(
        "--attestation-type",
        case_sensitive=False,
        help="Default: x509 with certificate flags, tpm with --endorsement-key, else symmetricKey.",
        show_default=False,
    ),
]
PrimaryKey = Annotated[
    str | None,
    typer.Option("--primary-key", help="Base64 symmetric key (generated when omitted)."),
]
SecondaryKey = Annotated[
    str | None,
    typer.Option("--secondary-key", help="Base64 symmetric key (generated when omitted)."),
]
_File = {"exists": True, "dir_okay": False, "readable": True}
CertificatePath = Annotated[
    Path | None,
    typer.Option("--certificate-path", help="Primary X.509 certificate file (PEM).", **_File),
]
SecondaryCertificatePath = Annotated[
    Path | None,
    typer.Option(
        "--secondary-certificate-path", help="Secondary X.509 certificate file (PEM).", **_File
    ),
]
EndorsementKey = Annotated[
    str | None, typer.Option("--endorsement-key", help="TPM endorsement key (base64).")
]
CaName = Annotated[
    str | None,
    typer.Option("--ca-name", help="Primary CA certificate reference (see `dpsd certificate`)."),
]
SecondaryCaName = Annotated[
    str | None,
    typer.Option("--secondary-ca-name", help="Secondary CA certificate reference."),
]
DeviceId = Annotated[
    str | None,
    typer.Option("--device-id", help="Device id in the hub (default: the registration id)."),
]
Status = Annotated[
    ProvisioningStatus | None,
    typer.Option(
        "--provisioning-status",
        case_sensitive=False,
        show_default=False,
        help="Whether devices may register (default on create: enabled).",
    ),
]
Allocation = Annotated[
    AllocationPolicy | None,
    typer.Option(
        "--allocation-policy",
        case_sensitive=False,
        show_default=False,
        help="How a hub is chosen among --iot-hubs (default: the service's, hashed).",
    ),
]
IotHubs = Annotated[
    list[str] | None,
    typer.Option(
        "--iot-hubs",
        help="Linked hubs the device may be assigned to (repeat, or separate with commas).",
        show_default=False,
    ),
]
InitialTwin = Annotated[
    Path | None,
    typer.Option(
        "--initial-twin",
        help='JSON file: {"tags": {...}, "properties": {"desired": {...}}}.',
        **_File,
    ),
]
Reprovision = Annotated[
    ReprovisionPolicy | None,
    typer.Option(
        "--reprovision-policy",
        case_sensitive=False,
        show_default=False,
        help="What a device registering again gets: a new hub with its twin migrated or"
        " reset to the initial twin, or never a new hub (default: migrate).",
    ),
]
EdgeEnabled = Annotated[
    bool | None,
    typer.Option("--edge-enabled/--no-edge-enabled", help="The device is an IoT Edge device."),
]
WebhookUrl = Annotated[
    str | None, typer.Option("--webhook-url", help="Custom allocation webhook URL.")
]
WebhookApiVersion = Annotated[
    str | None,
    typer.Option("--webhook-api-version", help="API version sent to the custom webhook."),
]
Etag = Annotated[
    str | None,
    typer.Option("--etag", help="Act only if the record is at this etag ('*': any)."),
]
QueryOption = Annotated[
    str, typer.Option("--query", "-q", help='A query such as "SELECT * WHERE ...".')
]
Top = Annotated[
    int | None,
    typer.Option("--top", min=1, help="List at most this many.", show_default=False),
]


def key_fields(kind: RecordKind, prefix: str = "attestation.") -> tuple[Column, ...]:
    """What a device proves itself with, in a record (or, without prefix, a mechanism)."""
    certificates = f"{prefix}x509.{kind.certificate_field}"
    return (
        ("primary key", f"{prefix}symmetricKey.primaryKey"),
        ("secondary key", f"{prefix}symmetricKey.secondaryKey"),
        ("endorsement key", f"{prefix}tpm.endorsementKey"),
        ("primary certificate", f"{certificates}.primary.info.subjectName"),
        ("  thumbprint", f"{certificates}.primary.info.sha256Thumbprint"),
        ("secondary certificate", f"{certificates}.secondary.info.subjectName"),
        ("  thumbprint", f"{certificates}.secondary.info.sha256Thumbprint"),
        ("primary CA", f"{prefix}x509.caReferences.primary"),
        ("secondary CA", f"{prefix}x509.caReferences.secondary"),
    )


def print_enrollment(kind: RecordKind, record: Record, output: Output, *, keys: bool) -> None:
    """The record; in a table, its keys or certificates too when ``keys`` (those it has)."""
    fields = kind.fields
    if keys:
        held = [field for field in key_fields(kind) if value_at(record, field[1]) is not None]
        fields = (*fields, *held)
    print_record(record, output, fields)


def _hubs(values: list[str] | None) -> tuple[str, ...] | None:
    if values is None:
        return None
    return tuple(hub.strip() for value in values for hub in value.split(",") if hub.strip())


# --- what the commands do -------------------------------------------------------------------


def create_record(
    kind: RecordKind,
    identifier: str,
    attestation: AttestationFlags,
    settings: SettingsFlags,
    target: TargetOptions,
    output: Output,
) -> None:
    with reported_failures():
        record: Record = {
            kind.id_field: identifier,
            "attestation": attestation_from(attestation, group=kind.group, current=None),
        }
        record = apply_settings(record, settings)
        with target.resolve().client() as client:
            created = kind.operations(client).create_or_update(record)
    print_enrollment(kind, created, output, keys=True)


def update_record(
    kind: RecordKind,
    identifier: str,
    attestation: AttestationFlags,
    settings: SettingsFlags,
    etag: str | None,
    target: TargetOptions,
    output: Output,
    keys: bool = False,
) -> None:
    """Reads the record and its keys, lays the flags over them and writes it back at the
    etag read (or ``--etag``), so a change made meanwhile by someone else is not lost."""
    with reported_failures(), target.resolve().client() as client:
        operations = kind.operations(client)
        current = operations.get(identifier)
        mechanism = operations.attestation_mechanism(identifier)
        record = without_server_fields(current)
        record["attestation"] = (
            attestation_from(attestation, group=kind.group, current=mechanism)
            if attestation.given()
            else mechanism
        )
        record = apply_settings(record, settings)
        updated = operations.create_or_update(record, if_match=etag or current.get("etag"))
    print_enrollment(kind, updated, output, keys=keys)


def show_record(
    kind: RecordKind, identifier: str, show_keys: bool, target: TargetOptions, output: Output
) -> None:
    with reported_failures(), target.resolve().client() as client:
        operations = kind.operations(client)
        record = operations.get(identifier)
        if show_keys:
            record["attestation"] = operations.attestation_mechanism(identifier)
    print_enrollment(kind, record, output, keys=show_keys)


def list_records(
    kind: RecordKind, query: str, top: int | None, target: TargetOptions, output: Output
) -> None:
    with reported_failures(), target.resolve().client() as client:
        page_size = min(top, 1000) if top is not None else None
        records: Iterator[Record] = kind.operations(client).query(query, page_size=page_size)
        print_records(islice(records, top), output, kind.columns)


def delete_record(
    kind: RecordKind, identifier: str, etag: str | None, target: TargetOptions
) -> None:
    with reported_failures(), target.resolve().client() as client:
        kind.operations(client).delete(identifier, if_match=etag)
    typer.echo(f"deleted {identifier}", err=True)


def show_keys(kind: RecordKind, identifier: str, target: TargetOptions, output: Output) -> None:
    with reported_failures(), target.resolve().client() as client:
        mechanism = kind.operations(client).attestation_mechanism(identifier)
    fields = [field for field in key_fields(kind, "") if value_at(mechanism, field[1]) is not None]
    print_record(mechanism, output, (("type", "type"), *fields))


# --- dpsd enrollment ------------------------------------------------------------------------

enrollment_app = command_group("Manage individual enrollments (like `az iot dps enrollment`).")
RegistrationId = Annotated[str, typer.Argument(help="The enrollment's registration id.")]
NewRegistrationId = Annotated[
    str | None,
    typer.Argument(
        help="The enrollment's registration id (for a TPM device, by default the one its SDK "
        "derives from the endorsement key).",
        show_default=False,
    ),
]
TpmProvisionOutput = Annotated[
    Path | None,
    typer.Option(
        "--tpm-provision-output",
        help="A file with what the C SDK's tpm_device_provision printed (the device's "
        "registration id and endorsement key).",
        **_File,
    ),
]


@enrollment_app.command("create")
def enrollment_create(
    registration_id: NewRegistrationId = None,
    attestation_type: AttestationTypeOption = None,
    primary_key: PrimaryKey = None,
    secondary_key: SecondaryKey = None,
    certificate_path: CertificatePath = None,
    secondary_certificate_path: SecondaryCertificatePath = None,
    endorsement_key: EndorsementKey = None,
    tpm_provision_output: TpmProvisionOutput = None,
    device_id: DeviceId = None,
    provisioning_status: Status = None,
    allocation_policy: Allocation = None,
    iot_hubs: IotHubs = None,
    initial_twin: InitialTwin = None,
    reprovision_policy: Reprovision = None,
    edge_enabled: EdgeEnabled = None,
    webhook_url: WebhookUrl = None,
    webhook_api_version: WebhookApiVersion = None,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Create an individual enrollment."""
    from dpsd.cli.tpm import tpm_identity

    registration_id, endorsement_key = tpm_identity(
        registration_id, endorsement_key, tpm_provision_output
    )
    create_record(
        ENROLLMENTS,
        registration_id,
        AttestationFlags(
            attestation_type,
            primary_key,
            secondary_key,
            certificate_path,
            secondary_certificate_path,
            endorsement_key=endorsement_key,
        ),
        SettingsFlags(
            device_id,
            provisioning_status,
            allocation_policy,
            _hubs(iot_hubs),
            initial_twin,
            reprovision_policy,
            edge_enabled,
            webhook_url,
            webhook_api_version,
        ),
        TargetOptions(connection_string, ca_file, data_dir, database),
        output,
    )


@enrollment_app.command("update")
def enrollment_update(
    registration_id: RegistrationId,
    attestation_type: AttestationTypeOption = None,
    primary_key: PrimaryKey = None,
    secondary_key: SecondaryKey = None,
    certificate_path: CertificatePath = None,
    secondary_certificate_path: SecondaryCertificatePath = None,
    endorsement_key: EndorsementKey = None,
    device_id: DeviceId = None,
    provisioning_status: Status = None,
    allocation_policy: Allocation = None,
    iot_hubs: IotHubs = None,
    initial_twin: InitialTwin = None,
    reprovision_policy: Reprovision = None,
    edge_enabled: EdgeEnabled = None,
    webhook_url: WebhookUrl = None,
    webhook_api_version: WebhookApiVersion = None,
    etag: Etag = None,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Change an individual enrollment.

    What no flag names stays as it is."""
    update_record(
        ENROLLMENTS,
        registration_id,
        AttestationFlags(
            attestation_type,
            primary_key,
            secondary_key,
            certificate_path,
            secondary_certificate_path,
            endorsement_key=endorsement_key,
        ),
        SettingsFlags(
            device_id,
            provisioning_status,
            allocation_policy,
            _hubs(iot_hubs),
            initial_twin,
            reprovision_policy,
            edge_enabled,
            webhook_url,
            webhook_api_version,
        ),
        etag,
        TargetOptions(connection_string, ca_file, data_dir, database),
        output,
        keys,
    )


@enrollment_app.command("show")
def enrollment_show(
    registration_id: RegistrationId,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show an individual enrollment and its registration state."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    show_record(ENROLLMENTS, registration_id, keys, target, output)


@enrollment_app.command("list")
def enrollment_list(
    query: QueryOption = "SELECT * FROM enrollments",
    top: Top = None,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List individual enrollments, all or those a query selects."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    list_records(ENROLLMENTS, query, top, target, output)


@enrollment_app.command("delete")
def enrollment_delete(
    registration_id: RegistrationId,
    etag: Etag = None,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Delete an individual enrollment and its registration state."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    delete_record(ENROLLMENTS, registration_id, etag, target)


@enrollment_app.command("keys")
def enrollment_keys(
    registration_id: RegistrationId,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show the keys or certificates the device proves itself with."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    show_keys(ENROLLMENTS, registration_id, target, output)


# --- dpsd group -----------------------------------------------------------------------------

group_app = command_group("Manage enrollment groups (like `az iot dps enrollment-group`).")
GroupId = Annotated[str, typer.Argument(help="The enrollment group's id.")]


@group_app.command("create")
def group_create(
    group_id: GroupId,
    attestation_type: AttestationTypeOption = None,
    primary_key: PrimaryKey = None,
    secondary_key: SecondaryKey = None,
    certificate_path: CertificatePath = None,
    secondary_certificate_path: SecondaryCertificatePath = None,
    ca_name: CaName = None,
    secondary_ca_name: SecondaryCaName = None,
    provisioning_status: Status = None,
    allocation_policy: Allocation = None,
    iot_hubs: IotHubs = None,
    initial_twin: InitialTwin = None,
    reprovision_policy: Reprovision = None,
    edge_enabled: EdgeEnabled = None,
    webhook_url: WebhookUrl = None,
    webhook_api_version: WebhookApiVersion = None,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Create an enrollment group.

    Symmetric keys (generated unless given), or X.509 by signing certificate or CA.
    """
    create_record(
        GROUPS,
        group_id,
        AttestationFlags(
            attestation_type,
            primary_key,
            secondary_key,
            certificate_path,
            secondary_certificate_path,
            ca_name,
            secondary_ca_name,
        ),
        SettingsFlags(
            None,
            provisioning_status,
            allocation_policy,
            _hubs(iot_hubs),
            initial_twin,
            reprovision_policy,
            edge_enabled,
            webhook_url,
            webhook_api_version,
        ),
        TargetOptions(connection_string, ca_file, data_dir, database),
        output,
    )


@group_app.command("update")
def group_update(
    group_id: GroupId,
    attestation_type: AttestationTypeOption = None,
    primary_key: PrimaryKey = None,
    secondary_key: SecondaryKey = None,
    certificate_path: CertificatePath = None,
    secondary_certificate_path: SecondaryCertificatePath = None,
    ca_name: CaName = None,
    secondary_ca_name: SecondaryCaName = None,
    provisioning_status: Status = None,
    allocation_policy: Allocation = None,
    iot_hubs: IotHubs = None,
    initial_twin: InitialTwin = None,
    reprovision_policy: Reprovision = None,
    edge_enabled: EdgeEnabled = None,
    webhook_url: WebhookUrl = None,
    webhook_api_version: WebhookApiVersion = None,
    etag: Etag = None,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Change an enrollment group.

    What no flag names stays as it is."""
    update_record(
        GROUPS,
        group_id,
        AttestationFlags(
            attestation_type,
            primary_key,
            secondary_key,
            certificate_path,
            secondary_certificate_path,
            ca_name,
            secondary_ca_name,
        ),
        SettingsFlags(
            None,
            provisioning_status,
            allocation_policy,
            _hubs(iot_hubs),
            initial_twin,
            reprovision_policy,
            edge_enabled,
            webhook_url,
            webhook_api_version,
        ),
        etag,
        TargetOptions(connection_string, ca_file, data_dir, database),
        output,
        keys,
    )


@group_app.command("show")
def group_show(
    group_id: GroupId,
    keys: ShowKeys = False,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show an enrollment group."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    show_record(GROUPS, group_id, keys, target, output)


@group_app.command("list")
def group_list(
    query: QueryOption = "SELECT * FROM enrollmentGroups",
    top: Top = None,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """List enrollment groups, all or those a query selects."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    list_records(GROUPS, query, top, target, output)


@group_app.command("delete")
def group_delete(
    group_id: GroupId,
    etag: Etag = None,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Delete an enrollment group.

    Its devices' registration states stay."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    delete_record(GROUPS, group_id, etag, target)


@group_app.command("keys")
def group_keys(
    group_id: GroupId,
    output: OutputOption = Output.table,
    connection_string: ConnectionStringOption = None,
    ca_file: CaFileOption = None,
    data_dir: DataDir = None,
    database: Database = None,
) -> None:
    """Show the group's keys, certificates or CA references."""
    target = TargetOptions(connection_string, ca_file, data_dir, database)
    show_keys(GROUPS, group_id, target, output)
